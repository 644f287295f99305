from __future__ import annotations

import orjson

from discofilter.core.ledger import ResumeLedger
from discofilter.core.membership import Membership
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, SelectorSet, parse_selector
from tests import fixtures


def ns(name: str, rv: int, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "resourceVersion": str(rv), "labels": labels}}


def test_real_namespace_list_gives_the_manifest_mesh() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS)
    doc = orjson.loads(fixtures.body("list-namespaces.json"))
    assert Membership(DEFAULT_MESH_SELECTORS).synced is False
    m.replace(doc["items"], doc["metadata"]["resourceVersion"])
    assert m.synced
    assert m.members == frozenset(fixtures.manifest()["mesh_namespaces"])
    assert m.generation == 0  # the first sync is not a change
    assert m.synced_rv == int(doc["metadata"]["resourceVersion"])


def _replay_namespace_watch(m: Membership) -> list[tuple[str, bool]]:
    doc = orjson.loads(fixtures.body("list-namespaces-before-ns-watch.json"))
    m.replace(doc["items"], doc["metadata"]["resourceVersion"])
    seen: list[tuple[str, bool]] = []
    for line in fixtures.body("watch-namespaces.json").splitlines():
        ev = orjson.loads(line)
        if ev["type"] == "BOOKMARK":
            continue
        for name in m.apply(ev["type"], ev["object"]):
            seen.append((name, name in m))
    return seen


def test_real_namespace_watch_late_joiner_joins_then_leaves() -> None:
    # The capture: late-joiner is created, labelled istio-injection=enabled, unlabelled, then deleted;
    # mesh-rev's istio.io/rev goes stable -> canary, which keeps it in the mesh under the default rule.
    m = Membership(DEFAULT_MESH_SELECTORS)
    assert _replay_namespace_watch(m) == [("late-joiner", True), ("late-joiner", False)]
    assert m.generation == 2
    assert "mesh-rev" in m


def test_real_namespace_watch_revision_selector_flips_mesh_rev() -> None:
    m = Membership(SelectorSet((parse_selector("istio.io/rev=canary"),)))
    assert _replay_namespace_watch(m) == [("mesh-rev", False), ("mesh-rev", True)]


def test_label_flip_flips_but_delete_and_create_do_not() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS)
    m.replace([ns("a", 1, **{"istio-injection": "enabled"}), ns("b", 2)], "10")
    assert m.members == {"a"}
    assert m.apply("MODIFIED", ns("b", 11, **{"istio.io/rev": "canary"})) == {"b"}
    assert m.generation == 1
    terminating = ns("a", 12, **{"istio-injection": "enabled"})
    terminating["status"] = {"phase": "Terminating"}
    assert m.apply("MODIFIED", terminating) == frozenset()  # still a member while its objects go
    # Deletion is no flip (core.lifecycle): a tombstone decides the late events by resourceVersion.
    assert m.apply("DELETED", ns("a", 13, **{"istio-injection": "enabled"})) == frozenset()
    assert m.members == {"b"}
    assert m.decide_at("a", 12) is True and m.decide_at("a", 14) is None
    assert m.apply("ADDED", ns("c", 14)) == frozenset()
    assert m.apply("ADDED", ns("d", 15, **{"istio-injection": "enabled"})) == frozenset()
    assert m.members == {"b", "d"}
    assert m.generation == 1


def test_changed_since_and_resume_rules() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS)
    m.replace([ns("a", 1, **{"istio-injection": "enabled"}), ns("b", 2)], "100")
    g0 = m.generation
    assert not m.changed_since(g0, None)
    # Before the first sync this process knows nothing older: RVs below it must relist.
    assert not m.resume_is_current("99", None)
    assert m.resume_is_current("100", None)
    assert m.resume_is_current("150", "a")
    m.apply("MODIFIED", ns("b", 120, **{"istio-injection": "enabled"}))
    assert m.changed_since(g0, None)
    assert m.changed_since(g0, "b")
    assert not m.changed_since(g0, "a")
    assert not m.resume_is_current("119", None)
    assert not m.resume_is_current("119", "b")
    assert m.resume_is_current("119", "a")
    assert m.resume_is_current("120", None)
    assert not m.resume_is_current("not-a-number", None)


def test_selector_swap_reports_changes() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS)
    m.replace([ns("a", 1, team="x"), ns("b", 2, **{"istio-injection": "enabled"})], "5")
    assert m.set_selectors(SelectorSet((parse_selector("team=x"),))) == {"a", "b"}
    assert m.members == {"a"}


def test_ledger_latest_complete_answer_wins_and_is_bounded() -> None:
    led = ResumeLedger(max_entries=3)
    led.record("pods", "10", 1)
    led.record("pods", "10", 2)
    assert led.generation("pods", "10") == 2
    assert led.generation("services", "10") is None
    for rv in ("11", "12", "13"):
        led.record("pods", rv, 5)
    assert len(led) == 3
    assert led.generation("pods", "10") is None


def test_ledger_paginated_list_is_as_old_as_its_oldest_page() -> None:
    led = ResumeLedger()
    led.record_page("pods", "50", 1, continue_in=None, continue_out="t1")
    assert led.generation("pods", "50") is None  # not complete yet
    led.record_page("pods", "50", 2, continue_in="t1", continue_out="t2")
    led.record_page("pods", "50", 3, continue_in="t2", continue_out=None)
    assert led.generation("pods", "50") == 1
    # A page continuing a token this process never issued: unknown, so older than anything.
    led.record_page("pods", "60", 3, continue_in="from-elsewhere", continue_out=None)
    assert led.generation("pods", "60") == -1
    led.record_page("pods", "70", 4, continue_in=None, continue_out=None)
    assert led.generation("pods", "70") == 4

"""Membership with an always-kept namespace (istiod's own): a member by name, whatever its labels,
whether or not it exists, under any selectors; it never flips, so it never ends a watch."""

from __future__ import annotations

from discofilter.core.membership import Membership
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, SelectorSet, parse_selector
from discofilter.core.watchfilter import NamespaceDecisions, WatchFilter


def ns(name: str, rv: int, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "resourceVersion": str(rv), "labels": labels}}


MESH = {"istio-injection": "enabled"}


def test_kept_without_a_mesh_label_and_counted_as_a_mesh_namespace() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS, always_kept="istio-system")
    assert "istio-system" in m  # before the first sync too: it is kept by name
    assert m.replace([ns("istio-system", 1), ns("a", 2, **MESH), ns("b", 3)], "10") == frozenset()
    assert "istio-system" in m and "a" in m and "b" not in m
    assert m.members == {"istio-system", "a"}
    assert len(m) == 2 and m.known == 3
    # istiod's view of the same namespaces makes no exception for its own namespace.
    assert m.matching(DEFAULT_MESH_SELECTORS) == {"a"}


def test_without_it_the_same_namespace_is_filtered() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS)
    m.replace([ns("istio-system", 1), ns("a", 2, **MESH)], "10")
    assert "istio-system" not in m and len(m) == 1


def test_label_changes_on_it_flip_nothing() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS, always_kept="istio-system")
    m.replace([ns("istio-system", 1)], "10")
    version, gen = m.version, m.generation
    assert m.apply("MODIFIED", ns("istio-system", 11, **MESH)) == frozenset()
    assert m.apply("MODIFIED", ns("istio-system", 12)) == frozenset()
    assert m.generation == gen  # no flip; version (the decisions cache's key) may move
    assert version <= m.version
    assert not m.changed_since(gen, "istio-system") and not m.changed_since(gen, None)
    assert m.resume_is_current("11", "istio-system") and m.resume_is_current("11", None)


def test_appearing_and_disappearing_flip_nothing_and_only_the_count_follows() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS, always_kept="istio-system")
    m.replace([ns("a", 1, **MESH)], "10")  # istiod's namespace does not exist yet
    assert "istio-system" in m and not m.exists("istio-system")
    assert len(m) == 1 and m.known == 1
    version, gen = m.version, m.generation
    assert m.apply("ADDED", ns("istio-system", 11)) == frozenset()
    assert m.exists("istio-system") and len(m) == 2 and m.known == 2
    terminating = ns("istio-system", 12)
    terminating["status"] = {"phase": "Terminating"}
    assert m.apply("MODIFIED", terminating) == frozenset()
    assert m.apply("DELETED", ns("istio-system", 13)) == frozenset()
    assert "istio-system" in m  # its objects' DELETED events and a re-created namespace still pass
    assert not m.exists("istio-system") and len(m) == 1 and m.known == 1
    # A relist that no longer has it changes nothing either.
    assert m.replace([ns("a", 1, **MESH)], "20") == frozenset()
    assert m.generation == gen  # no flip; version (the decisions cache's key) may move
    assert version <= m.version
    assert m.resume_is_current("12", None)


def test_selectors_that_change_keep_it() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS, always_kept="istio-system")
    m.replace([ns("istio-system", 1, team="x"), ns("a", 2, **MESH), ns("b", 3, team="x")], "10")
    # discoverySelectors edited to team=x: b joins, a leaves, istio-system was and stays a member.
    assert m.set_selectors(SelectorSet((parse_selector("team=y"),))) == {"a"}
    assert m.members == {"istio-system"}
    assert m.set_selectors(SelectorSet((parse_selector("team=x"),))) == {"b"}
    assert m.members == {"istio-system", "b"}
    gen = m.generation
    assert m.set_selectors(SelectorSet((parse_selector("team=z"),))) == {"b"}
    assert not m.changed_since(gen, "istio-system") and m.changed_since(gen, "b")
    assert "istio-system" in m and len(m) == 1


def test_the_shared_watch_decisions_keep_its_objects() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS, always_kept="istio-system")
    m.replace([ns("istio-system", 1), ns("b", 2)], "10")
    decisions = NamespaceDecisions()
    wf = WatchFilter(m, decisions=decisions)
    lines = [
        b'{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"gw","namespace":"istio-system"}}}\n',
        b'{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"x","namespace":"b"}}}\n',
    ]
    assert wf.feed(b"".join(lines)) == [lines[0]]
    # b joins through a label: the member set moved on (version), istio-system's decision holds.
    assert m.apply("MODIFIED", ns("b", 11, **MESH)) == {"b"}
    assert WatchFilter(m, decisions=decisions).feed(b"".join(lines)) == lines

"""core.lifecycle: namespace creation and deletion decide events without flips, and without guesses."""

from __future__ import annotations

import orjson
import pytest

from discofilter.core.lifecycle import Tombstones, Undecided
from discofilter.core.liststream import ListStream
from discofilter.core.membership import Membership
from discofilter.core.protolist import filter_proto_list
from discofilter.core.protowatch import ProtoWatchFilter
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS
from discofilter.core.watchfilter import NamespaceDecisions, WatchFilter
from tests.core.test_protobuf import ref_field
from tests.core.test_protowatch import frame

MESH = {"istio-injection": "enabled"}


def ns(name: str, rv: int, labels: dict[str, str] | None = None) -> dict[str, object]:
    return {"metadata": {"name": name, "resourceVersion": str(rv), "labels": labels or {}}}


def synced(*namespaces: dict[str, object], rv: int = 10) -> Membership:
    m = Membership(DEFAULT_MESH_SELECTORS)
    m.replace(list(namespaces), str(rv))
    return m


def pod_line(namespace: str, rv: int, etype: str = "ADDED", name: str = "p") -> bytes:
    obj = {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": namespace}}
    obj["metadata"]["resourceVersion"] = str(rv)  # type: ignore[index]
    return orjson.dumps({"type": etype, "object": obj}) + b"\n"


def pod_frame(namespace: str, rv: int, etype: str = "ADDED") -> bytes:
    meta = ref_field(1, "p") + ref_field(3, namespace) + ref_field(6, str(rv))
    unknown = ref_field(1, ref_field(1, "v1") + ref_field(2, "Pod")) + ref_field(2, ref_field(1, meta))
    unknown += ref_field(3, "") + ref_field(4, "")
    return frame(ref_field(1, etype) + ref_field(2, ref_field(1, b"k8s\x00" + unknown)))


# -- Membership --------------------------------------------------------------------------------------


def test_creation_and_deletion_flip_nothing_and_a_tombstone_decides_late_events() -> None:
    m = synced(ns("a", 1, MESH), ns("b", 2))
    gen = m.generation
    assert m.undecided("new") and m.decide_at("new", 20) is None
    assert m.apply("ADDED", ns("new", 11, MESH)) == frozenset()
    assert "new" in m and not m.undecided("new")
    assert m.apply("DELETED", ns("a", 12, MESH)) == frozenset()
    assert m.apply("DELETED", ns("b", 13)) == frozenset()
    assert m.generation == gen and m.resume_is_current("11", None)
    # Late events of the departed namespaces: before the deletion, decided by what they were.
    assert m.decide_at("a", 11) is True and m.decide_at("b", 12) is False
    # After it: a namespace of the same name not known yet.
    assert m.decide_at("a", 14) is None and m.undecided("a")
    assert (m.created, m.deleted) == (1, 2)


def test_a_lookup_makes_a_namespace_known_and_older_namespace_events_are_history() -> None:
    m = synced(ns("a", 1, MESH))
    version = m.version
    assert m.learn("new", ns("new", 15, MESH), "20")
    assert "new" in m and m.version > version and m.decide_at("new", 18) is True
    # The namespace watch catches up: its ADDED (created without the label) and the MODIFIED that
    # labelled it are older than what the lookup told, so they are no flip.
    assert m.apply("ADDED", ns("new", 12)) == frozenset()
    assert "new" in m
    assert m.apply("MODIFIED", ns("new", 15, MESH)) == frozenset()
    # Newer than the lookup: a label flip of an existing namespace, today's 410.
    assert m.apply("MODIFIED", ns("new", 21)) == {"new"}
    assert not m.learn("gone", None, "22")  # not found: nothing to learn
    assert not m.learn("a", ns("a", 1), "22")  # the namespace watch knows it: it decides


def test_recreated_with_the_other_membership_is_a_flip_and_with_the_same_is_not() -> None:
    m = synced(ns("a", 1, MESH), ns("b", 2, MESH))
    m.apply("DELETED", ns("a", 11, MESH))
    m.apply("DELETED", ns("b", 12, MESH))
    # Until the namespace watch showed the deletions, events of the new ones were decided by the old
    # labels: right for b (still in the mesh), not for a (now out of it).
    assert not m.learn("a", ns("a", 13), "15")
    assert m.apply("ADDED", ns("a", 13)) == {"a"}
    assert m.apply("ADDED", ns("b", 14, MESH)) == frozenset()
    assert m.members == {"b"} and m.generation == 1


def test_a_relist_is_deletions_and_creations_for_what_came_and_went() -> None:
    m = synced(ns("a", 1, MESH), ns("b", 2))
    assert m.replace([ns("b", 2, MESH), ns("c", 5, MESH)], "30") == {"b"}
    assert m.members == {"b", "c"}
    assert m.decide_at("a", 25) is True and m.decide_at("a", 31) is None


def test_forgotten_tombstones_make_older_resumes_relist() -> None:
    m = synced(ns("a", 1, MESH), ns("b", 2))
    m.tombstones.limit = 1
    m.apply("DELETED", ns("a", 11, MESH))
    m.apply("DELETED", ns("b", 12))
    assert m.tombstones.get("a") is None and m.tombstones.forgotten_rv == 11
    assert not m.resume_is_current("10", None) and m.resume_is_current("11", None)
    assert m.decide_at("a", 10) is None  # never guessed: the stream waits, or relists


def test_tombstones_are_bounded() -> None:
    t = Tombstones(limit=2)
    for i in range(5):
        t.put(f"n{i}", i, True)
    assert len(t) == 2 and t.forgotten_rv == 2 and t.get("n4") is not None


# -- the watch filters --------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("split", [0, 1, 7, 40])
def test_json_watch_waits_at_an_unknown_namespace_and_resumes_in_order(fast: bool, split: int) -> None:
    m = synced(ns("a", 1, MESH), ns("b", 2))
    body = pod_line("a", 11) + pod_line("new", 12) + pod_line("b", 13) + pod_line("a", 14)
    wf = WatchFilter(m, use_fast_path=fast, decisions=NamespaceDecisions())
    cut = len(pod_line("a", 11)) + split
    out = wf.feed_joined(body[:cut]) + wf.feed_joined(body[cut:])
    assert out == pod_line("a", 11)
    assert isinstance(wf.blocked, Undecided) and (wf.blocked.namespace, wf.blocked.rv) == ("new", 12)
    assert wf.resume() == b""  # still unknown: it waits on
    assert wf.blocked is not None
    m.learn("new", ns("new", 5, MESH), "12")
    assert wf.resume() == pod_line("new", 12) + pod_line("a", 14)
    assert not wf._stopped()
    assert (wf.events_in, wf.events_kept, wf.events_dropped) == (4, 3, 1)
    assert wf.bytes_in == len(body)


def test_json_watch_decides_a_departed_namespaces_late_deletes_by_its_tombstone() -> None:
    m = synced(ns("a", 1, MESH))
    wf = WatchFilter(m, decisions=NamespaceDecisions())
    assert wf.feed_joined(pod_line("a", 11)) == pod_line("a", 11)  # cached by name
    m.apply("DELETED", ns("a", 20, MESH))
    late = pod_line("a", 19, "DELETED")
    assert wf.feed_joined(late) == late  # the cached decision did not short-circuit the RV check
    m.apply("ADDED", ns("a", 21))  # created again outside the mesh: a flip, but not for old events
    assert wf.feed_joined(pod_line("a", 18, "DELETED")) == pod_line("a", 18, "DELETED")
    assert wf.feed_joined(pod_line("a", 22)) == b""


def test_table_rows_of_an_unknown_namespace_wait_too() -> None:
    m = synced(ns("a", 1, MESH))
    row = {"cells": ["p"], "object": {"kind": "PartialObjectMetadata", "metadata": {"name": "p"}}}
    row["object"]["metadata"].update({"namespace": "new", "resourceVersion": "12"})  # type: ignore[index]
    table = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "rows": [row]}
    line = orjson.dumps({"type": "ADDED", "object": table}) + b"\n"
    wf = WatchFilter(m)
    assert wf.feed_joined(line) == b"" and wf.blocked is not None
    m.learn("new", ns("new", 5, MESH), "12")
    assert wf.resume() == line


@pytest.mark.parametrize("split", [0, 3, 20])
def test_protobuf_watch_waits_at_an_unknown_namespace_and_resumes_in_order(split: int) -> None:
    m = synced(ns("a", 1, MESH), ns("b", 2))
    frames = [pod_frame("a", 11), pod_frame("new", 12), pod_frame("b", 13), pod_frame("a", 14)]
    body = b"".join(frames)
    wf = ProtoWatchFilter(m)
    cut = len(frames[0]) + split
    out = wf.feed_joined(body[:cut]) + wf.feed_joined(body[cut:])
    assert out == frames[0] and wf.blocked is not None and wf.blocked.rv == 12
    m.learn("new", ns("new", 5), "12")  # found, outside the mesh
    assert wf.resume() == frames[3]
    assert (wf.events_in, wf.events_kept, wf.events_dropped) == (4, 2, 2)
    m.apply("DELETED", ns("a", 30, MESH))
    assert wf.feed_joined(pod_frame("a", 29, "DELETED")) == pod_frame("a", 29, "DELETED")


# -- LISTs -----------------------------------------------------------------------------------------------


def test_a_json_list_stops_at_an_item_of_an_unknown_namespace_and_goes_on() -> None:
    m = synced(ns("a", 1, MESH))
    items = [
        {"metadata": {"name": "p1", "namespace": "a", "resourceVersion": "3"}},
        {"metadata": {"name": "p2", "namespace": "new", "resourceVersion": "12"}},
        {"metadata": {"name": "p3", "namespace": "a", "resourceVersion": "4"}},
    ]
    body = orjson.dumps({"kind": "PodList", "metadata": {"resourceVersion": "20"}, "items": items})
    stream = ListStream(m)
    out = stream.feed(body)
    assert stream.blocked is not None and stream.blocked.namespace == "new"
    with pytest.raises(Undecided):
        stream.finish()
    m.learn("new", ns("new", 5, MESH), "20")
    out += stream.feed(b"")
    last, result = stream.finish()
    assert [i["metadata"]["name"] for i in orjson.loads(out + last)["items"]] == ["p1", "p2", "p3"]
    assert (result.items_in, result.items_kept) == (3, 3)


def test_a_protobuf_list_with_an_unknown_namespace_raises_until_it_is_known() -> None:
    m = synced(ns("a", 1, MESH))

    def item(namespace: str) -> bytes:
        return ref_field(2, ref_field(1, ref_field(1, "p") + ref_field(3, namespace) + ref_field(6, "7")))

    raw = ref_field(1, ref_field(2, "20")) + item("a") + item("new")
    unknown = ref_field(1, ref_field(1, "v1") + ref_field(2, "PodList")) + ref_field(2, raw)
    body = b"k8s\x00" + unknown + ref_field(3, "") + ref_field(4, "")
    with pytest.raises(Undecided):
        filter_proto_list(body, m)
    m.learn("new", ns("new", 5), "20")
    assert filter_proto_list(body, m).items_kept == 1

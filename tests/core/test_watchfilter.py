from __future__ import annotations

from collections import Counter

import orjson
import pytest

from discofilter.core.http1 import ResponseReader
from discofilter.core.membership import Membership
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, SelectorSet, parse_selector
from discofilter.core.watchfilter import (
    NamespaceDecisions,
    WatchFilter,
    classify_fast,
    classify_slow,
    event_resource_version,
)
from discofilter.errors import ObjectTooLargeError, StreamFramingError
from tests import fixtures
from tests.core.test_http1 import chunked
from tests.helpers import feed_every_split, fixture_names, manifest_entry, reads, splits

FILTERED_PATHS = (
    "/api/v1/pods",
    "/api/v1/services",
    "/api/v1/endpoints",
    "/apis/discovery.k8s.io/v1/endpointslices",
)
WATCHES = [
    n
    for n in fixture_names(kind=("watch", "watchlist"))
    if manifest_entry(n)["request"]["path"] in FILTERED_PATHS  # type: ignore[index]
]
MESH = frozenset(fixtures.manifest()["mesh_namespaces"])


def run(data: bytes, members: frozenset[str], fast: bool = True) -> list[bytes]:
    return feed_every_split(data, lambda: WatchFilter(members, use_fast_path=fast).feed)


def test_filtered_watch_captures_exist() -> None:
    assert len(WATCHES) >= 10


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "slow"])
@pytest.mark.parametrize("name", WATCHES)
def test_keeps_exactly_the_mesh_events_and_every_bookmark(name: str, fast: bool) -> None:
    data = fixtures.body(name)
    kept = run(data, MESH, fast)
    # Expected counts come from the capture's manifest, not from the code under test.
    by_ns: dict[str, dict[str, int]] = manifest_entry(name)["watch"]["by_namespace"]  # type: ignore[index]
    expected: Counter[tuple[str, str]] = Counter()
    for ns, types in by_ns.items():
        if ns == "" or ns in MESH:
            for t, n in types.items():
                expected[(ns, t)] += n
    got: Counter[tuple[str, str]] = Counter()
    for line in kept:
        ev = orjson.loads(line)
        got[(ev["object"]["metadata"].get("namespace", ""), ev["type"])] += 1
    assert got == expected
    # Kept lines are the original bytes, in the original order: a sub-sequence of the input lines.
    lines = data.splitlines(keepends=True)
    it = iter(lines)
    assert all(any(k == line for line in it) for k in kept)


@pytest.mark.parametrize("name", WATCHES)
def test_fast_path_agrees_with_slow_path_on_every_real_event(name: str) -> None:
    decided_fast = 0
    for line in fixtures.body(name).splitlines(keepends=True):
        fast = classify_fast(line)
        slow = classify_slow(line)
        if fast is not None:
            decided_fast += 1
            assert fast == slow
    assert decided_fast == len(fixtures.body(name).splitlines())  # real events all take the fast path


def test_empty_membership_keeps_only_bookmarks_and_errors() -> None:
    kept = run(fixtures.body("watch-pods.json"), frozenset())
    assert [orjson.loads(k)["type"] for k in kept] == ["BOOKMARK"] * 3
    kept = run(fixtures.body("watch-pods-410.json"), frozenset())
    assert [orjson.loads(k)["object"]["code"] for k in kept] == [410]


def test_initial_events_end_bookmark_passes() -> None:
    kept = run(fixtures.body("watchlist-pods.json"), frozenset({"mesh-a"}))
    last = orjson.loads(kept[-1])
    assert last["type"] == "BOOKMARK"
    assert last["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def _event(meta: bytes, etype: bytes = b"ADDED") -> bytes:
    return (
        b'{"type":"'
        + etype
        + b'","object":{"kind":"Pod","apiVersion":"v1","metadata":'
        + meta
        + b',"spec":{}}}\n'
    )


TRICKY = [
    # a "namespace" key inside labels must never be taken for the object's namespace
    (_event(b'{"name":"a","labels":{"namespace":"mesh-a"},"namespace":"plain"}'), "plain"),
    (_event(b'{"labels":{"namespace":"mesh-a"},"name":"a","namespace":"plain"}'), "plain"),
    (_event(b'{"name":"a\\"namespace\\":\\"mesh-a","namespace":"plain"}'), "plain"),
    (
        _event(b'{"name":"' + b"n" * 253 + b'","generateName":"' + b"g" * 253 + b'","namespace":"mesh-a"}'),
        "mesh-a",
    ),
    (_event(b'{"namespace":"mesh-a","name":"x"}'), "mesh-a"),
    (_event(b'{"name":"x","namespace":"mesh\\u002da"}'), "mesh-a"),
    (_event(b'{"name":"x"}'), ""),
    (b'{"object":{"metadata":{"namespace":"mesh-a"}},"type":"MODIFIED"}\n', "mesh-a"),
    (b'{ "type" : "DELETED" , "object" : { "metadata" : { "namespace" : "plain" } } }\n', "plain"),
]


@pytest.mark.parametrize(("line", "ns"), TRICKY)
def test_tricky_layouts(line: bytes, ns: str) -> None:
    assert classify_slow(line)[1] == ns
    fast = classify_fast(line)
    assert fast is None or fast[1] == ns
    for use_fast in (True, False):
        kept = WatchFilter({"mesh-a"}, use_fast_path=use_fast).feed(line)
        assert kept == ([line] if ns == "mesh-a" else [])


def test_table_events_are_filtered_by_row() -> None:
    def row(ns: str) -> dict[str, object]:
        return {
            "cells": [ns],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"name": "p", "namespace": ns},
            },
        }

    def table(*nss: str) -> bytes:
        obj = {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "9"},
            "rows": [row(n) for n in nss],
        }
        return orjson.dumps({"type": "ADDED", "object": obj}) + b"\n"

    wf = WatchFilter({"mesh-a"})
    assert wf.feed(table("mesh-a")) == [table("mesh-a")]
    assert wf.feed(table("plain")) == []
    assert wf.feed(table("mesh-a", "plain")) == [table("mesh-a")]


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[1,2]\n",
        b'{"type":"WHAT","object":{}}\n',
        b'{"type":"ADDED"}\n',
        b'{"type":"ADDED","object":{"kind":"Pod"}}\n',
    ],
)
def test_malformed_lines_raise_framing_errors(line: bytes) -> None:
    with pytest.raises(StreamFramingError):
        WatchFilter({"mesh-a"}).feed(line)


def test_oversized_event_is_refused() -> None:
    wf = WatchFilter({"mesh-a"}, max_line_bytes=1000)
    with pytest.raises(ObjectTooLargeError):
        wf.feed(_event(b'{"name":"' + b"x" * 2000 + b'","namespace":"mesh-a"}'))


def test_counters_and_resume_point() -> None:
    data = fixtures.body("watch-pods.json")
    wf = WatchFilter(MESH)
    wf.feed(data)
    assert wf.events_in == 29
    assert wf.events_kept + wf.events_dropped == 29
    assert wf.bytes_in == len(data)
    assert wf.last_kept is not None
    assert event_resource_version(wf.last_kept) == "549"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "slow"])
def test_joined_output_and_resume_point_whatever_the_reads(fast: bool) -> None:
    """What the relay writes per read (``feed_joined``), concatenated, is exactly the kept events of the
    capture (decided here from each decoded event, not by the filter), and the resume point is the last
    kept event's resourceVersion however the stream was cut."""
    data = fixtures.body("watch-pods.json")
    lines = data.splitlines(keepends=True)
    expected = b"".join(  # BOOKMARK events carry no namespace and are always forwarded
        line for line in lines if orjson.loads(line)["object"]["metadata"].get("namespace", "") in MESH | {""}
    )
    last_rv = orjson.loads(expected.splitlines()[-1])["object"]["metadata"]["resourceVersion"]
    for name, pieces in splits(data):
        wf = WatchFilter(MESH, use_fast_path=fast)
        out = [wf.feed_joined(p) for p in pieces]
        wf.feed_eof()
        assert b"".join(out) == expected, name
        assert all(isinstance(o, bytes) for o in out)
        assert wf.last_kept is not None
        assert event_resource_version(wf.last_kept) == last_rv, name
        assert wf.bytes_out == len(expected)


@pytest.mark.parametrize("name", ["watch-pods.json", "watchlist-pods.json", "watch-endpointslices.json"])
def test_spans_of_the_real_chunked_wire_give_what_the_body_gives(name: str) -> None:
    """The relay filters the body in place between the HTTP chunk framing (``feed_spans`` over
    ``ResponseReader.feed_spans``): whatever the reads, it writes exactly what filtering the de-chunked
    body gives, with the same counts and resume point."""
    data = fixtures.body(name)
    wire = chunked(reads(name)["chunk_sizes"], data)
    reference = WatchFilter(MESH, use_fast_path=False)
    expected = b"".join(reference.feed(data))
    assert expected
    for split, pieces in splits(wire):
        if split == "bytewise" and len(wire) > 200_000:
            continue
        reader, wf = ResponseReader(), WatchFilter(MESH)
        reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        out = b"".join(wf.feed_spans(*reader.feed_spans(p)) for p in pieces)
        wf.feed_eof()
        assert out == expected, split
        assert wf.last_kept == reference.last_kept, split
        counts = (wf.events_in, wf.events_kept, wf.bytes_in, wf.bytes_out)
        assert counts == (reference.events_in, reference.events_kept, len(data), len(expected)), split


def test_a_read_kept_whole_is_passed_on_uncopied_and_runs_skip_dropped_events() -> None:
    kept_a = _event(b'{"name":"a","namespace":"mesh-a"}')
    kept_b = _event(b'{"name":"b","namespace":"mesh-a"}')
    dropped = _event(b'{"name":"c","namespace":"plain"}')
    wf = WatchFilter({"mesh-a"})
    read = kept_a + kept_b
    assert wf.feed_joined(read) is read
    assert wf.feed_joined(kept_a + dropped + kept_b + kept_a + dropped) == kept_a + kept_b + kept_a
    assert wf.feed_joined(dropped + kept_b[:10]) == b""
    assert wf.feed_joined(kept_b[10:] + dropped) == kept_b  # the event straddling two reads
    assert wf.last_kept == kept_b
    assert (wf.events_in, wf.events_kept, wf.events_dropped) == (10, 6, 4)


def test_namespace_decisions_follow_membership_changes_between_reads() -> None:
    """Decisions shared between watches (NamespaceDecisions) hold only while the member set stands still:
    a namespace that joins or leaves between two reads, by an event, a relist or a selector change, is
    decided afresh on the next read of every watch sharing them."""
    ns = {"metadata": {"name": "shop", "labels": {"team": "a"}}}
    joined = {"metadata": {"name": "shop", "labels": {"team": "a", "istio-injection": "enabled"}}}
    membership = Membership(DEFAULT_MESH_SELECTORS)
    membership.replace([ns], "10")
    ev = _event(b'{"name":"a","namespace":"shop"}')
    decisions = NamespaceDecisions()
    first, second = (WatchFilter(membership, decisions=decisions) for _ in range(2))
    assert first.feed_joined(ev + ev) == b""
    assert decisions.kept == {b"shop": False}
    membership.apply("MODIFIED", joined)
    assert second.feed_joined(ev) == ev
    assert first.feed_joined(ev) == ev
    membership.apply("MODIFIED", ns)
    assert first.feed_joined(ev) == b""
    assert second.feed_joined(ev) == b""
    # A selector change (Istio's discoverySelectors) changes membership without a namespace event.
    membership.set_selectors(SelectorSet((parse_selector("team=a"),)))
    assert first.feed_joined(ev) == ev
    # A relist in which the namespace is gone: an event of it without a resourceVersion cannot be
    # told from one of a namespace of the same name created later, so its stream waits (core.lifecycle).
    membership.replace([], "20")
    assert second.feed_joined(ev) == b"" and second.blocked is not None
    assert second.blocked.namespace == "shop"
    assert b"shop" not in decisions.kept
    # Namespace events that change no membership leave the decisions standing.
    membership.apply("ADDED", {"metadata": {"name": "kept", "labels": {}}})
    assert first.feed_joined(_event(b'{"name":"a","namespace":"kept"}')) == b""
    assert decisions.kept == {b"kept": False}
    membership.apply("MODIFIED", {"metadata": {"name": "kept", "labels": {"x": "y"}}})
    assert decisions.kept == {b"kept": False}
    plain: set[str] = set()  # a container that cannot say when it changes: decided on every read
    wf = WatchFilter(plain, decisions=decisions)
    assert wf.feed_joined(ev) == b""
    plain.add("shop")
    assert wf.feed_joined(ev) == ev

"""ProtoWatchFilter on the real protobuf watch captures, against the manifest, the JSON filter and an
independent decoder (``tests.core.test_protobuf.ref_*``); plus fuzzing of framing and corruption."""

from __future__ import annotations

import random
import struct
import time
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discofilter.core.framing import DEFAULT_MAX_LINE_BYTES
from discofilter.core.protowatch import ProtoWatchFilter, classify_fast, classify_slow, frame_resource_version
from discofilter.core.watchfilter import WatchFilter
from discofilter.errors import ObjectTooLargeError, StreamFramingError
from tests import fixtures
from tests.core.test_protobuf import (
    ref_bytes,
    ref_decode,
    ref_enc_varint,
    ref_event,
    ref_field,
    ref_frames,
    ref_meta,
    ref_str,
    ref_unknown,
)
from tests.helpers import feed_every_split, manifest_entry, reads

STREAMS = [
    "watch-pods.pb",
    "watch-endpointslices.pb",
    "watch-pods-fieldselector.pb",
    "watch-pods-410.pb",
    "watchlist-pods.pb",
]
MESH = frozenset(fixtures.manifest()["mesh_namespaces"])
ALL_NAMESPACES = frozenset(fixtures.manifest()["namespaces"])
PAIRS = [
    (c["json"], c["protobuf"], c["same_event_sequence"])
    for c in fixtures.manifest()["json_vs_protobuf_checks"]
]


def run(data: bytes, members: frozenset[str], fast: bool = True) -> list[bytes]:
    return feed_every_split(
        data, lambda: ProtoWatchFilter(members, use_fast_path=fast).feed, bytewise_limit=100_000
    )


def run_reads(name: str, members: frozenset[str], fast: bool = True) -> list[bytes]:
    """Feed a capture exactly as the TLS reads delivered it."""
    data = fixtures.body(name)
    ends = reads(name)["read_end_offsets"]
    f = ProtoWatchFilter(members, use_fast_path=fast)
    out: list[bytes] = []
    for a, b in zip([0, *ends], ends, strict=False):
        out.extend(f.feed(data[a:b]))
    f.feed_eof()
    return out


def is_subsequence(kept: list[bytes], frames: list[bytes]) -> bool:
    it = iter(frames)
    return all(any(k == f for f in it) for k in kept)


def test_protobuf_watch_captures_exist() -> None:
    assert {n for n in STREAMS if manifest_entry(n)["encoding"] == "protobuf"} == set(STREAMS)
    assert {p for _, p, _ in PAIRS} <= set(STREAMS)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "slow"])
@pytest.mark.parametrize("name", STREAMS)
def test_keeps_exactly_the_mesh_events_and_every_bookmark(name: str, fast: bool) -> None:
    kept = run(fixtures.body(name), MESH, fast)
    assert run_reads(name, MESH, fast) == kept
    # Expected counts come from the capture's manifest; the kept frames are decoded independently.
    by_ns: dict[str, dict[str, int]] = manifest_entry(name)["watch"]["by_namespace"]  # type: ignore[index]
    expected: Counter[tuple[str, str]] = Counter()
    for ns, types in by_ns.items():
        if ns == "" or ns in MESH:
            for t, n in types.items():
                expected[(ns, t)] += n
    got = Counter((ref_event(k)[2], ref_event(k)[0]) for k in kept)
    assert got == expected
    assert is_subsequence(kept, ref_frames(name))


@pytest.mark.parametrize("name", STREAMS)
def test_every_frame_is_decided_by_its_independently_decoded_namespace(name: str) -> None:
    for frame in ref_frames(name):
        etype, _, ns, _, _ = ref_event(frame)
        expected = (etype, None if etype in ("BOOKMARK", "ERROR") else ns)
        assert classify_slow(frame, 4, len(frame)) == expected
        # Every real frame takes the fast path, and it agrees.
        assert classify_fast(frame, 4, len(frame)) == expected
        for fast in (True, False):
            assert ProtoWatchFilter({ns}, use_fast_path=fast).feed(frame) == [frame]
            dropped = ProtoWatchFilter(ALL_NAMESPACES - {ns}, use_fast_path=fast).feed(frame)
            assert dropped == ([frame] if expected[1] is None else [])
        # Offsets inside a bigger buffer (the frame amid others in one chunk) give the same answer.
        padded = b"\x0a\x12" + frame + b"\x1a\x00k8s\x00"
        assert classify_fast(padded, 6, 2 + len(frame)) == expected


def _json_key(line: bytes) -> tuple[str, str, str, str, str]:
    ev = orjson.loads(line)
    obj = ev["object"]
    if obj.get("kind") == "Status":
        return ev["type"], "Status", "", "", str(obj["code"])
    meta = obj["metadata"]
    return ev["type"], obj["kind"], meta.get("namespace", ""), meta.get("name", ""), meta["resourceVersion"]


def _member_sets() -> list[frozenset[str]]:
    rng = random.Random(7)
    names = sorted(ALL_NAMESPACES)
    subsets = [frozenset(rng.sample(names, k)) for k in (1, 2, 3, 5, 8) for _ in range(2)]
    return [frozenset(), MESH, ALL_NAMESPACES, *subsets]


@pytest.mark.parametrize(("json_name", "pb_name", "same_order"), PAIRS, ids=[p for _, p, _ in PAIRS])
def test_keeps_the_same_events_as_the_json_filter(json_name: str, pb_name: str, same_order: bool) -> None:
    for members in _member_sets():
        js = [_json_key(line) for line in WatchFilter(members).feed(fixtures.body(json_name))]
        pb = [ref_event(frame) for frame in run(fixtures.body(pb_name), members)]
        if same_order:
            assert pb == js, sorted(members)
        else:  # the streaming-list pair: same events in another hash-map order
            assert sorted(pb) == sorted(js), sorted(members)


def test_empty_membership_keeps_only_bookmarks_and_errors() -> None:
    assert [ref_event(k)[0] for k in run(fixtures.body("watch-pods.pb"), frozenset())] == ["BOOKMARK"] * 3
    assert [ref_event(k)[4] for k in run(fixtures.body("watch-pods-410.pb"), frozenset())] == ["410"]


def test_initial_events_end_bookmark_passes() -> None:
    kept = run(fixtures.body("watchlist-pods.pb"), frozenset({"mesh-a"}))
    last = kept[-1]
    assert ref_event(last)[0] == "BOOKMARK"
    raw = ref_bytes(ref_decode(ref_bytes(ref_decode(last[4:]), 2)), 1)
    annotation = ref_decode(ref_bytes(ref_meta(ref_unknown(raw)[2]), 12))  # a map entry {1 key, 2 value}
    assert annotation == {1: [b"k8s.io/initial-events-end"], 2: [b"true"]}


@pytest.mark.parametrize("name", STREAMS)
def test_frame_resource_version_of_every_frame(name: str) -> None:
    for frame in ref_frames(name):
        raw = ref_bytes(ref_decode(ref_bytes(ref_decode(frame[4:]), 2)), 1)
        _, tm, obj = ref_unknown(raw)
        # A Status (ERROR) carries a ListMeta, whose resourceVersion is field 2; ObjectMeta's is field 6.
        rv = ref_str(ref_meta(obj), 2 if ref_str(tm, 2) == "Status" else 6)
        assert frame_resource_version(frame) == (rv or None)
    assert frame_resource_version(b"") is None
    assert frame_resource_version(b"\x00\x00\x00\x05abc") is None
    assert frame_resource_version(b"\x00\x00\x00\x02\x0a\x00") is None


def test_counters_and_resume_point() -> None:
    data = fixtures.body("watch-pods.pb")
    wf = ProtoWatchFilter(MESH)
    kept = wf.feed(data)
    wf.feed_eof()
    assert wf.events_in == manifest_entry("watch-pods.pb")["watch"]["events"]  # type: ignore[index]
    assert (wf.events_kept, wf.events_dropped) == (len(kept), wf.events_in - len(kept))
    assert wf.bytes_in == len(data)
    assert wf.bytes_out == sum(map(len, kept))
    assert wf.buffered == 0
    assert wf.last_kept is not None
    last_rv: str = manifest_entry("watch-pods.pb")["watch"]["last_rv"]  # type: ignore[index]
    assert frame_resource_version(wf.last_kept) == last_rv == "549"


# ---------------------------------------------------------------------------------------------------
# Synthetic frames, written with the reference encoder


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def event(
    etype: str = "ADDED",
    namespace: str | None = "mesh-a",
    *,
    meta_head: bytes = b"",
    rest: bytes = b"",
    kind: str = "Pod",
    magic: bytes = b"k8s\x00",
) -> bytes:
    meta = meta_head + (ref_field(3, namespace) if namespace is not None else b"") + ref_field(6, "42")
    obj = ref_field(1, meta) + rest
    unknown = ref_field(1, ref_field(1, "v1") + ref_field(2, kind)) + ref_field(2, obj)
    unknown += ref_field(3, "") + ref_field(4, "")
    return frame(ref_field(1, etype) + ref_field(2, ref_field(1, magic + unknown)))


MALFORMED = {
    "unknown-type": event("SYNC"),
    "no-type": frame(ref_field(2, ref_field(1, b"k8s\x00" + ref_field(2, ref_field(1, b""))))),
    "no-object": frame(ref_field(1, "ADDED")),
    "empty-object": frame(ref_field(1, "ADDED") + ref_field(2, b"")),
    "no-magic": event(magic=b"k8s\x01"),
    "bookmark-no-magic": event("BOOKMARK", magic=b""),
    "two-types": frame(ref_field(1, "ADDED") + event()[4:]),
    "type-as-varint": frame(ref_field(1, 3) + event()[4:]),
    "no-metadata": frame(
        ref_field(1, "ADDED") + ref_field(2, ref_field(1, b"k8s\x00" + ref_field(2, ref_field(2, b"spec"))))
    ),
    "truncated-inside": frame(event()[4:-3]),
    "trailing-garbage": frame(event()[4:] + b"\xff"),
    "group": frame(event()[4:] + b"\x1b"),
    "empty-frame": frame(b""),
    "namespace-not-utf8": frame(event(namespace="X")[4:].replace(b"\x1a\x01X", b"\x1a\x01\xff")),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frames_raise_framing_errors(data: bytes) -> None:
    for members in (frozenset({"mesh-a"}), frozenset()):
        with pytest.raises(StreamFramingError):
            ProtoWatchFilter(members).feed(data)


def test_unknown_fields_are_skipped_at_every_level() -> None:
    head = ref_field(1, "name") + ref_field(2, "gen-") + ref_field(30, 5, 1) + ref_field(31, 5, 5)
    ev = event(meta_head=head, rest=ref_field(2, b"spec") + ref_field(99, 1))
    ev = frame(ref_field(9, 1, 5) + ev[4:] + ref_field(10, 1, 1))
    assert classify_fast(ev, 4, len(ev)) is None  # not the API server's layout: the general walk decides
    assert classify_slow(ev, 4, len(ev)) == ("ADDED", "mesh-a")
    assert ProtoWatchFilter({"mesh-a"}).feed(ev) == [ev]
    assert ProtoWatchFilter({"mesh-b"}).feed(ev) == []


def test_missing_namespace_is_the_empty_namespace() -> None:
    ev = event(namespace=None)
    assert ProtoWatchFilter({""}).feed(ev) == [ev]
    assert ProtoWatchFilter({"mesh-a"}).feed(ev) == []


def test_stream_ending_inside_a_frame_is_an_error() -> None:
    ev = event()
    for cut in (1, 3, 4, 5, len(ev) - 1):
        f = ProtoWatchFilter({"mesh-a"})
        assert f.feed(ev + ev[:cut]) == [ev]
        assert f.buffered == cut
        with pytest.raises(StreamFramingError):
            f.feed_eof()
    f = ProtoWatchFilter({"mesh-a"})
    f.feed(ev)
    f.feed_eof()


def test_oversized_frame_is_refused_from_its_prefix_alone() -> None:
    f = ProtoWatchFilter({"mesh-a"}, max_frame_bytes=1000)
    with pytest.raises(ObjectTooLargeError):
        f.feed(struct.pack(">I", 1001))  # nothing of the body has been fed, or buffered
    f = ProtoWatchFilter({"mesh-a"}, max_frame_bytes=1000)
    f.feed(b"\x00\x00")
    with pytest.raises(ObjectTooLargeError):
        f.feed(b"\x03\xe9")
    f = ProtoWatchFilter({"mesh-a"}, max_frame_bytes=1000)
    with pytest.raises(ObjectTooLargeError):
        f.feed(event() + b"\xff\xff\xff\xff")
    limit = ProtoWatchFilter({"mesh-a"}, max_frame_bytes=len(event()) - 4)
    assert limit.feed(event()) == [event()]


def big_event(size: int, namespace: str = "mesh-a") -> bytes:
    return event(namespace=namespace, rest=ref_field(2, b"x" * size))


def test_three_mib_object_passes_with_the_default_limit() -> None:
    big = big_event(3 * 1024 * 1024)
    assert classify_fast(big, 4, len(big)) is None  # lengths of 4 varint bytes take the general walk
    assert classify_slow(big, 4, len(big)) == ("ADDED", "mesh-a")
    one_mib = big_event(1024 * 1024)
    assert classify_fast(one_mib, 4, len(one_mib)) == ("ADDED", "mesh-a")
    assert classify_fast(one_mib, 4, len(one_mib) - 1) is None  # the object must end with the frame
    assert run(big, frozenset({"mesh-a"})) == [big]
    assert run(big + big_event(10, "plain"), frozenset({"mesh-a"})) == [big]
    with pytest.raises(ObjectTooLargeError):
        ProtoWatchFilter({"mesh-a"}).feed(frame(b"\x00" * (DEFAULT_MAX_LINE_BYTES + 1))[:4])


def test_a_big_frame_in_small_pieces_is_linear() -> None:
    # 12 MiB in 2 KiB reads: a buffer rebuilt per read would copy ~38 GB (minutes); joined once, ~ms.
    big = big_event(12 * 1024 * 1024)
    f = ProtoWatchFilter({"mesh-a"})
    out: list[bytes] = []
    t0 = time.perf_counter()
    for i in range(0, len(big), 2048):
        out.extend(f.feed(big[i : i + 2048]))
    assert time.perf_counter() - t0 < 5.0
    assert out == [big]


# ---------------------------------------------------------------------------------------------------
# Fuzz (h11's afl invariant): frames or StreamFramingError, never another exception


def agree(buf: bytes, start: int, end: int) -> None:
    """The fast path either declines or gives the slow path's answer (h11/aiohttp: both parsers alike)."""
    fast = classify_fast(buf, start, end)
    try:
        slow = classify_slow(buf, start, end)
    except StreamFramingError:
        assert fast is None
    else:
        assert fast is None or fast == slow


def _feed(
    data: bytes, cuts: list[int], members: frozenset[str], limit: int = 1 << 20, fast: bool = True
) -> list[bytes] | str:
    f = ProtoWatchFilter(members, max_frame_bytes=limit, use_fast_path=fast)
    out: list[bytes] = []
    prev = 0
    try:
        for c in [*sorted(cuts), len(data)]:
            out.extend(f.feed(data[prev:c]))
            prev = max(prev, c)
        f.feed_eof()
    except StreamFramingError as exc:
        return type(exc).__name__
    return out


def _frames_of(data: bytes) -> list[bytes]:
    """Cut by the length prefixes (for fuzz data that has no recorded event offsets)."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        end = pos + 4 + struct.unpack(">I", data[pos : pos + 4])[0]
        out.append(data[pos:end])
        pos = end
    return out


@settings(max_examples=1000)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_any_bytes_give_input_frames_or_a_framing_error(data: bytes, cuts: list[int]) -> None:
    agree(data, 0, len(data))
    agree(data, 0, len(data) // 2)
    for members in (frozenset({"mesh-a"}), frozenset()):
        result = _feed(data, cuts, members, limit=300)
        assert result == _feed(data, cuts, members, limit=300, fast=False)
        if isinstance(result, str):
            assert result in ("StreamFramingError", "ObjectTooLargeError")
            continue
        assert result == _feed(data, [], members, limit=300)
        assert is_subsequence(result, _frames_of(data))


@settings(max_examples=1000)
@given(st.integers(0, 28), st.binary(min_size=1, max_size=40), st.integers(0, 200))
def test_fast_and_slow_agree_on_real_frame_heads_spliced_with_garbage(
    index: int, junk: bytes, at: int
) -> None:
    # The fast path reads the first ~150 bytes of a frame: damage exactly that region.
    original = ref_frames("watch-pods.pb")[index][4:]
    at %= len(original)
    for body in (original[:at] + junk + original[at:], original[:at] + junk + original[at + len(junk) :]):
        agree(body, 0, len(body))
        agree(body + original, 0, len(body))  # bytes past ``end`` must not be read as part of the frame


namespaces = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", max_size=253)
etypes = st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"])


@st.composite
def synthetic_events(draw: st.DrawFn) -> tuple[str, str, bytes]:
    etype = draw(etypes)
    ns = draw(st.one_of(namespaces, st.sampled_from(["mesh-a", "mesh-b", "plain"])))
    head = b""
    if draw(st.booleans()):
        head += ref_field(1, draw(st.text(max_size=253)))
    if draw(st.booleans()):
        head += ref_field(2, draw(st.text(max_size=253)))
    rest = ref_field(2, draw(st.binary(max_size=draw(st.sampled_from([10, 300, 5000])))))
    if draw(st.booleans()):  # the decoy: a "namespace" value somewhere after metadata
        rest += ref_field(3, ref_field(1, ref_field(3, "mesh-a")))
    kind = "Status" if etype == "ERROR" else "Pod"
    return etype, ns, event(etype, ns, meta_head=head, rest=rest, kind=kind)


def crafted(etype: bytes = b"ADDED", **delta: int) -> bytes:
    """A WatchEvent body in the API server's layout, with one declared length off by ``delta[level]``."""

    def tag_len(number: int, content: bytes, level: str) -> bytes:
        n = len(content) + delta.get(level, 0)
        return ref_enc_varint(number << 3 | 2) + ref_enc_varint(max(n, 0))

    ns = b"mesh-a"
    meta = ref_field(1, "name") + tag_len(3, ns, "ns") + ns + ref_field(6, "42")
    obj = tag_len(1, meta, "meta") + meta + ref_field(2, b"spec-bytes")
    tm = ref_field(1, "v1") + ref_field(2, "Pod")
    unknown = (
        tag_len(1, tm, "typemeta")
        + tm
        + tag_len(2, obj, "unknown")
        + obj
        + ref_field(3, "")
        + ref_field(4, "")
    )
    raw = b"k8s\x00" + unknown
    rawext = tag_len(1, raw, "raw") + raw
    return tag_len(1, etype, "type") + etype + tag_len(2, rawext, "object") + rawext


@pytest.mark.parametrize("etype", [b"ADDED", b"BOOKMARK"])
@pytest.mark.parametrize("level", ["type", "object", "raw", "typemeta", "unknown", "meta", "ns"])
def test_fast_path_checks_every_declared_length(level: str, etype: bytes) -> None:
    body = crafted(etype)
    expected = (etype.decode(), "mesh-a" if etype == b"ADDED" else None)
    assert classify_fast(body, 0, len(body)) == classify_slow(body, 0, len(body)) == expected
    for d in range(-40, 130):
        body = crafted(etype, **{level: d})
        # What follows ``end`` is the next frame, never part of this one, even when it looks like a field.
        for after in (b"", body, b"\x12\x00" + body, b"\x1a\x01x"):
            agree(body + after, 0, len(body))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(synthetic_events(), max_size=8),
    st.lists(st.integers(0, 40_000), max_size=10),
    st.sampled_from([frozenset({"mesh-a", "mesh-b"}), frozenset(), frozenset({""})]),
)
def test_synthetic_streams_any_split(
    evs: list[tuple[str, str, bytes]], cuts: list[int], members: frozenset[str]
) -> None:
    data = b"".join(e for _, _, e in evs)
    expected = [e for t, ns, e in evs if t in ("BOOKMARK", "ERROR") or ns in members]
    cuts = [c for c in cuts if c <= len(data)]
    assert _feed(data, cuts, members) == expected
    assert _feed(data, cuts, members, fast=False) == expected
    for _, _, e in evs:
        agree(e, 4, len(e))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 28), st.integers(0, 20_000), st.integers(0, 255), st.lists(st.integers(0, 40_000)))
def test_corrupted_real_frames_never_escape_the_error_type(
    index: int, at: int, value: int, cuts: list[int]
) -> None:
    frames = ref_frames("watch-pods.pb")
    original = frames[index]
    body = bytearray(original[4:])
    at %= len(body)
    body[at] = value
    corrupted = frame(bytes(body))
    truncated = frame(original[4 : 4 + at])
    for bad in (corrupted, truncated):
        agree(bad, 4, len(bad))
        data = frames[0] + bad + frames[-1]
        result = _feed(data, [c for c in cuts if c <= len(data)], MESH, limit=DEFAULT_MAX_LINE_BYTES)
        if isinstance(result, str):
            continue
        assert is_subsequence(result, [frames[0], bad, frames[-1]])
    # Cutting a frame's body short always breaks its nested lengths.
    assert _feed(truncated, [], MESH) == "StreamFramingError"


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 5000), st.integers(-2, 2))
def test_frame_size_against_the_limit(size: int, delta: int) -> None:
    ev = big_event(size)
    limit = len(ev) - 4 + delta
    result = _feed(ev, [len(ev) // 2], frozenset({"mesh-a"}), limit=max(0, limit))
    assert result == ([ev] if delta >= 0 else "ObjectTooLargeError")

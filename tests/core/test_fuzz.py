"""Property tests (h11's afl invariant): for any bytes, the filter returns whole input lines or raises
StreamFramingError, never anything else; and its two decision paths always agree."""

from __future__ import annotations

import contextlib

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discofilter.core.listfilter import filter_list
from discofilter.core.watchfilter import WatchFilter
from discofilter.errors import StreamFramingError

MEMBERS = frozenset({"mesh-a", "mesh-b"})
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=60)
namespaces = st.sampled_from(["mesh-a", "mesh-b", "plain-1", "plain-2", "", "namespace"])
label_maps = st.dictionaries(
    st.sampled_from(["app", "namespace", "x"]), st.sampled_from(["mesh-a", "v"]), max_size=3
)


@st.composite
def events(draw: st.DrawFn) -> bytes:
    etype = draw(st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]))
    if etype == "ERROR":
        obj: dict[str, object] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "code": 410}
    else:
        meta: dict[str, object] = {}
        keys = draw(st.permutations(["name", "generateName", "namespace", "labels", "resourceVersion"]))
        ns = draw(namespaces)
        for k in keys:
            if k == "namespace" and (ns or etype != "BOOKMARK"):
                meta["namespace"] = ns
            elif k == "labels":
                meta["labels"] = draw(label_maps)
            elif k == "resourceVersion":
                meta["resourceVersion"] = str(draw(st.integers(1, 10**9)))
            elif draw(st.booleans()):
                meta[k] = draw(names)
        obj = {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": {"x": draw(st.text(max_size=20))}}
    return orjson.dumps({"type": etype, "object": obj}) + b"\n"


def _run(data: bytes, cuts: list[int], fast: bool) -> list[bytes] | str:
    wf = WatchFilter(MEMBERS, use_fast_path=fast, max_line_bytes=4096)
    out: list[bytes] = []
    prev = 0
    try:
        for c in [*sorted(cuts), len(data)]:
            out.extend(wf.feed(data[prev:c]))
            prev = max(prev, c)
        wf.feed_eof()
    except StreamFramingError as exc:
        return type(exc).__name__
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), max_size=12), st.lists(st.integers(0, 4000), max_size=8))
def test_well_formed_streams_any_split_fast_equals_slow(evs: list[bytes], cuts: list[int]) -> None:
    data = b"".join(evs)
    cuts = [c for c in cuts if c <= len(data)]
    fast = _run(data, cuts, True)
    assert fast == _run(data, cuts, False)
    assert fast == _run(data, [], True)
    # Reference model: decode each event and decide by its metadata.namespace.
    expected = []
    for line in evs:
        ev = orjson.loads(line)
        if ev["type"] in ("BOOKMARK", "ERROR") or ev["object"]["metadata"].get("namespace", "") in MEMBERS:
            expected.append(line)
    assert fast == expected


@settings(max_examples=500)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6))
def test_any_bytes_give_input_lines_or_a_framing_error(data: bytes, cuts: list[int]) -> None:
    for fast in (True, False):
        result = _run(data, [c for c in cuts if c <= len(data)], fast)
        if isinstance(result, str):
            assert result in ("StreamFramingError", "ObjectTooLargeError")
            continue
        lines = data.splitlines(keepends=True)
        it = iter(lines)
        assert all(any(k == line for line in it) for k in result)


@settings(max_examples=300)
@given(st.lists(events(), max_size=6).map(lambda evs: evs), st.integers(0, 200))
def test_corrupted_streams_never_escape_the_error_type(evs: list[bytes], cut: int) -> None:
    data = b"".join(evs)
    corrupted = data[:cut] + b"\x00{" + data[cut:]
    result = _run(corrupted, [cut // 2], True)
    assert isinstance(result, (list, str))


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_list_filter_on_garbage_raises_only_framing_errors(data: bytes) -> None:
    with contextlib.suppress(StreamFramingError):
        filter_list(data, MEMBERS)

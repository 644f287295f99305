"""ListStream: the incremental list filter gives filter_list's answer, however the body is split."""

from __future__ import annotations

import gzip

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discofilter.core.listfilter import ListResult, filter_list, filter_list_slow
from discofilter.core.liststream import ListStream
from discofilter.errors import ObjectTooLargeError, StreamFramingError
from tests import fixtures
from tests.core.test_listfilter import JSON_LISTS, MESH_AB, list_body, lists
from tests.helpers import splits

MESH = frozenset(fixtures.manifest()["mesh_namespaces"])


def run(pieces: list[bytes], members: frozenset[str], **kw: int) -> tuple[bytes, ListResult]:
    stream = ListStream(members, **kw)
    out = [stream.feed(p) for p in pieces]
    last, result = stream.finish()
    assert result.body == b""  # the bytes came out along the way
    return b"".join([*out, last]), result


def counts(r: ListResult) -> tuple[object, ...]:
    return r.items_in, r.items_kept, r.resource_version, r.continue_token


@pytest.mark.parametrize("name", JSON_LISTS)
def test_every_split_of_a_real_list_gives_filter_lists_bytes(name: str) -> None:
    body = list_body(name)
    expected = filter_list(body, MESH)
    reference = filter_list_slow(body, MESH)
    assert orjson.loads(expected.body) == orjson.loads(reference.body)
    for split, pieces in splits(body):
        if split == "bytewise" and len(body) > 60_000:
            continue  # the 2- and 7-byte splits already cut every token of the big lists
        out, result = run(pieces, MESH)
        assert out == expected.body, split
        assert counts(result) == counts(expected), split


def test_numbers_cut_anywhere_wait_for_their_rest() -> None:
    # msgspec calls "1.5e-" an invalid number, not a truncated one (hypothesis found a list cut there).
    body = (
        b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":['
        b'{"metadata":{"name":"a","namespace":"mesh-a"},"spec":[-1.5e-207,2.0E+16,-0.25,10]},'
        b'{"metadata":{"name":"b","namespace":"plain"},"spec":[-3.5e-7]}]}'
    )
    expected = filter_list_slow(body, frozenset({"mesh-a"}))
    for cut in range(1, len(body)):
        out, result = run([body[:cut], body[cut:]], frozenset({"mesh-a"}))
        assert orjson.loads(out) == orjson.loads(expected.body), cut
        assert (result.items_in, result.items_kept) == (2, 1)


def test_output_comes_out_as_items_arrive_not_at_the_end() -> None:
    body = list_body("list-pods.json")  # 18 pods of 2-20 KB; mesh-a's come first
    stream = ListStream(MESH)
    early = b"".join(stream.feed(body[i : i + 4096]) for i in range(0, len(body) // 2, 4096))
    assert early.startswith(
        b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"503"},"items":['
    )
    assert early.count(b'"namespace":"mesh-a"') >= 3
    assert stream.buffered < 30_000  # at most one pod and a read held


def test_an_item_over_the_limit_is_refused_before_it_is_all_buffered() -> None:
    body = list_body("list-pods.json")
    stream = ListStream(MESH, max_item_bytes=10_000)  # mesh pods are ~20 KB
    with pytest.raises(ObjectTooLargeError):
        for i in range(0, len(body), 1024):
            stream.feed(body[i : i + 1024])
            assert stream.buffered < 12_000


def test_items_before_kind_fall_back_to_the_whole_body() -> None:
    # Never seen from the API server (it writes kind first), but valid JSON: still filtered right.
    doc = {
        "items": [{"metadata": {"namespace": "mesh-a"}}, {"metadata": {"namespace": "plain-1"}}],
        "kind": "PodList",
        "metadata": {"resourceVersion": "9", "remainingItemCount": 3},
    }
    body = orjson.dumps(doc)
    for _, pieces in splits(body):
        out, result = run(pieces, MESH)
        assert orjson.loads(out) == {
            "items": [{"metadata": {"namespace": "mesh-a"}}],
            "kind": "PodList",
            "metadata": {"resourceVersion": "9"},
        }
        assert counts(result) == (2, 1, "9", None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"kind":"PodList","items":[{"metadata":{"namespace":"mesh-a"}}',  # cut short
        b'{"kind":"PodList","items":[{"metadata":{"namespace":"mesh-a"}}]',
        b'{"kind":"PodList","items":[{"metadata":{"namespace":"mesh-a"}}]}x',
        b'{"kind":"PodList","items":[{"metadata":{"namespace":"mesh-a"}} {"metadata":{}}]}',
        b'{"kind":"PodList" "items":[]}',
        b'{"kind":"PodList","items":[{"spec":{}}]}',
        b'{"kind":"Pod","items":[]}',
        b'{"kind":"PodList","items":[{"metadata":{"namespace":7}}]}',
        b'{"kind":"PodList",7:[]}',
    ],
)
def test_malformed_lists_raise(body: bytes) -> None:
    for _, pieces in splits(body):
        with pytest.raises(StreamFramingError):
            run(pieces, MESH)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(lists(), st.lists(st.integers(0, 4000), max_size=8))
def test_generated_lists_split_anywhere_agree_with_filter_list(body: bytes, cuts: list[int]) -> None:
    pieces, prev = [], 0
    for c in sorted(cuts):
        pieces.append(body[prev:c])
        prev = max(prev, c)
    pieces.append(body[prev:])
    try:
        expected: ListResult | None = filter_list(body, MESH_AB)
    except StreamFramingError:
        expected = None
    if expected is None:
        with pytest.raises(StreamFramingError):
            run(pieces, MESH_AB)
        return
    out, result = run(pieces, MESH_AB)
    assert out == expected.body
    assert counts(result) == counts(expected)


def test_gzip_fixture_is_the_plain_list() -> None:
    assert list_body("list-pods.json.gz") == gzip.decompress(fixtures.body("list-pods.json.gz"))
    assert list_body("list-pods.json.gz") == fixtures.body("list-pods.json")


@pytest.mark.parametrize(
    ("head", "filler"),
    [
        (b'{"kind":"PodList","items":[{"a":"', b"x"),  # an item
        (b'{"kind":"PodList","', b"x"),  # a member name
        (b'{"kind":"PodList","metadata":{"a":"', b"x"),  # a list member
        (b'{"kind":"PodList","items":[{"metadata":{}}, ', b" "),  # whitespace between items
    ],
)
def test_nothing_pending_grows_past_the_limit(head: bytes, filler: bytes) -> None:
    stream = ListStream(MESH, max_item_bytes=5_000)
    with pytest.raises(ObjectTooLargeError):
        stream.feed(head)
        for _ in range(10_000):
            stream.feed(filler * 7)
            assert stream.buffered <= 5_000 + 7

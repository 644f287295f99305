"""filter_proto_list on the real protobuf LIST captures and on lists written with the reference encoder;
expected values come from the manifest and the independent decoder in ``tests.core.test_protobuf``."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discofilter.core.listfilter import filter_list
from discofilter.core.protolist import filter_proto_list
from discofilter.errors import StreamFramingError
from tests import fixtures
from tests.core.test_protobuf import Fields, ref_decode, ref_field, ref_meta, ref_str, ref_unknown
from tests.helpers import manifest_entry

MESH = frozenset(fixtures.manifest()["mesh_namespaces"])
ALL_NAMESPACES = frozenset(fixtures.manifest()["namespaces"])
LISTS = ["list-pods.pb", "list-pods-mesh-a.pb", "list-endpointslices.pb", "list-namespaces.istiod-accept.pb"]
ERRORS = ["error-401-bad-token.pb", "error-404-namespace.pb", "error-410-list-exact.pb"]


def items_of(lst: Fields) -> list[bytes]:
    return [v for v in lst.get(2, []) if isinstance(v, bytes)]


def item_ns(item: bytes) -> str:
    return ref_str(ref_meta(ref_decode(item)), 3)


@pytest.mark.parametrize(
    "members", [MESH, frozenset(), frozenset({"plain-1", "smoke-b"})], ids=["mesh", "none", "some"]
)
@pytest.mark.parametrize("name", LISTS)
def test_keeps_member_items_byte_for_byte_and_the_list_metadata(name: str, members: frozenset[str]) -> None:
    body = fixtures.body(name)
    result = filter_proto_list(body, members)
    entry = manifest_entry(name)["list"]
    by_ns: dict[str, int] = entry["items_by_namespace"]  # type: ignore[index]
    assert result.items_in == sum(by_ns.values())
    assert result.items_kept == sum(n for ns, n in by_ns.items() if ns in members)
    assert result.resource_version == entry["resourceVersion"]  # type: ignore[index]
    assert result.continue_token is None

    in_unk, in_tm, in_list = ref_unknown(body)
    out_unk, out_tm, out_list = ref_unknown(result.body)  # the rebuilt body re-parses
    # The envelope keeps its type and its contentEncoding/contentType fields as they were.
    assert out_tm == in_tm
    assert {k: v for k, v in out_unk.items() if k != 2} == {k: v for k, v in in_unk.items() if k != 2}
    # The kept items are the input's items, byte for byte and in order.
    assert items_of(out_list) == [i for i in items_of(in_list) if item_ns(i) in members]
    assert out_list[1] == in_list[1]  # ListMeta unchanged: the captures carry no remainingItemCount
    assert {k: v for k, v in out_list.items() if k != 2} == {k: v for k, v in in_list.items() if k != 2}


@pytest.mark.parametrize("name", LISTS)
def test_nothing_dropped_gives_the_input_back_unchanged(name: str) -> None:
    body = fixtures.body(name)
    members = ALL_NAMESPACES | {""}
    assert filter_proto_list(body, members).body == body


def test_same_items_as_the_json_filter() -> None:
    for pb, js in (
        ("list-pods.pb", "list-pods.json"),
        ("list-endpointslices.pb", "list-endpointslices.json"),
    ):
        for members in (MESH, frozenset({"plain-2"}), frozenset()):
            json_items = orjson.loads(filter_list(fixtures.body(js), members).body)["items"]
            _, _, lst = ref_unknown(filter_proto_list(fixtures.body(pb), members).body)
            got = [(item_ns(i), ref_str(ref_meta(ref_decode(i)), 1)) for i in items_of(lst)]
            assert got == [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in json_items]


def test_cluster_scoped_items_have_the_empty_namespace() -> None:
    body = fixtures.body("list-namespaces.istiod-accept.pb")
    assert filter_proto_list(body, MESH).items_kept == 0
    assert filter_proto_list(body, frozenset({""})).items_kept == 12


# ---------------------------------------------------------------------------------------------------
# Synthetic lists: remainingItemCount, continue, unknown fields


def pod(ns: str, name: str) -> bytes:
    return ref_field(1, ref_field(1, name) + ref_field(3, ns) + ref_field(6, "7")) + ref_field(2, b"spec")


def envelope(lst: bytes, kind: str = "PodList", tail: bytes = b"") -> bytes:
    unknown = ref_field(1, ref_field(1, "v1") + ref_field(2, kind)) + ref_field(2, lst)
    return (
        b"k8s\x00" + unknown + ref_field(3, "") + ref_field(4, "application/vnd.kubernetes.protobuf") + tail
    )


def list_meta(rv: str = "42", token: str = "tok", remaining: int | None = 5) -> bytes:
    meta = ref_field(1, "") + ref_field(2, rv) + ref_field(3, token)
    return meta + (ref_field(4, remaining) if remaining is not None else b"")


def test_remaining_item_count_is_dropped_and_the_rest_kept() -> None:
    items = [pod("mesh-a", "a"), pod("plain", "b"), pod("mesh-a", "c")]
    lst = (
        ref_field(1, list_meta(remaining=2**40)) + b"".join(ref_field(2, i) for i in items) + ref_field(99, 3)
    )
    body = envelope(lst, tail=ref_field(77, 1, 5))
    result = filter_proto_list(body, frozenset({"mesh-a"}))
    assert (result.items_in, result.items_kept) == (3, 2)
    assert (result.resource_version, result.continue_token) == ("42", "tok")
    unk, tm, out = ref_unknown(result.body)
    assert ref_decode(out[1][0]) == {1: [b""], 2: [b"42"], 3: [b"tok"]}  # type: ignore[arg-type]
    assert items_of(out) == [items[0], items[2]]
    assert out[99] == [3]  # an unknown list field survives
    assert unk[3] == [b""] and unk[4] == [b"application/vnd.kubernetes.protobuf"] and unk[77] == [1]
    assert ref_str(tm, 2) == "PodList"
    # Exact bytes: metadata rewritten, the rest copied in its original order.
    expected_list = ref_field(1, list_meta(remaining=None)) + ref_field(2, items[0]) + ref_field(2, items[2])
    assert result.body == envelope(expected_list + ref_field(99, 3), tail=ref_field(77, 1, 5))


def test_a_page_with_nothing_kept_keeps_its_continue_token() -> None:
    body = envelope(ref_field(1, list_meta()) + ref_field(2, pod("plain", "x")))
    result = filter_proto_list(body, frozenset({"mesh-a"}))
    assert result.items_kept == 0
    _, _, out = ref_unknown(result.body)
    assert 2 not in out
    assert ref_str(ref_decode(out[1][0]), 3) == "tok"  # type: ignore[arg-type]
    assert result.continue_token == "tok"


def test_an_empty_list() -> None:
    body = envelope(ref_field(1, list_meta(token="", remaining=None)))
    result = filter_proto_list(body, frozenset({"mesh-a"}))
    assert (result.items_in, result.items_kept, result.continue_token) == (0, 0, None)
    assert result.body == body


def test_partial_object_metadata_lists_are_filtered_too() -> None:
    item = ref_field(1, ref_field(1, "p") + ref_field(3, "mesh-a"))
    body = envelope(ref_field(1, list_meta()) + ref_field(2, item), kind="PartialObjectMetadataList")
    assert filter_proto_list(body, frozenset({"mesh-a"})).items_kept == 1


# ---------------------------------------------------------------------------------------------------
# Anything else raises


@pytest.mark.parametrize("name", ERRORS)
def test_status_bodies_are_not_lists(name: str) -> None:
    with pytest.raises(StreamFramingError, match="Status"):
        filter_proto_list(fixtures.body(name), MESH)


MALFORMED = {
    "empty": b"",
    "json": fixtures.body("list-pods-mesh-a.json"),
    "no-magic": envelope(b"")[4:],
    "not-a-list": envelope(ref_field(1, list_meta()), kind="Pod"),
    "no-raw": b"k8s\x00" + ref_field(1, ref_field(1, "v1") + ref_field(2, "PodList")),
    "two-raws": envelope(b"") + ref_field(2, b""),
    "raw-varint": b"k8s\x00" + ref_field(1, ref_field(2, "PodList")) + ref_field(2, 3),
    "items-varint": envelope(ref_field(2, 1)),
    "item-without-metadata": envelope(ref_field(2, ref_field(2, b"spec"))),
    "two-metadata": envelope(ref_field(1, b"") + ref_field(1, b"")),
    "rv-varint": envelope(ref_field(1, ref_field(2, 5))),
    "continue-not-utf8": envelope(ref_field(1, ref_field(3, b"\xff"))),
    "garbage-list": envelope(b"\xff\xff"),
    "garbage-envelope-tail": envelope(b"", tail=b"\x07"),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_lists_raise(body: bytes) -> None:
    with pytest.raises(StreamFramingError):
        filter_proto_list(body, MESH)


@pytest.mark.parametrize("name", ["list-pods-mesh-a.pb", "list-endpointslices.pb"])
def test_truncated_real_lists_raise(name: str) -> None:
    body = fixtures.body(name)
    assert body.endswith(b"\x1a\x00\x22\x00")  # contentEncoding and contentType close the envelope
    # Any cut before those last two (optional) fields leaves a length running past the end.
    for cut in [*range(0, 200), *range(200, len(body) - 4, 97)]:
        with pytest.raises(StreamFramingError):
            filter_proto_list(body[:cut], MESH)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_list_or_a_framing_error(data: bytes) -> None:
    for body in (data, b"k8s\x00" + data, envelope(data)):
        with contextlib.suppress(StreamFramingError):
            filter_proto_list(body, MESH)


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.sampled_from(["mesh-a", "mesh-b", "plain", ""]), st.text(max_size=20)), max_size=10)
)
def test_synthetic_lists_keep_exactly_the_member_items(spec: list[tuple[str, str]]) -> None:
    items = [pod(ns, name) for ns, name in spec]
    body = envelope(ref_field(1, list_meta()) + b"".join(ref_field(2, i) for i in items))
    result = filter_proto_list(body, MESH)
    _, _, out = ref_unknown(result.body)
    assert items_of(out) == [i for i, (ns, _) in zip(items, spec, strict=True) if ns in MESH]
    assert result.items_in == len(items)

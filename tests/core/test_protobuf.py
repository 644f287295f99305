"""Tests of the protobuf wire reader, against the real captures and an independent reference decoder.

``google.protobuf`` is not installed (and must not become a dependency), and the official ``kubernetes``
client has no protobuf types, so the expected values come from ``ref_decode`` below: a deliberately
different, stream-based decoder (io.BytesIO, read() and EOF checks, no offsets) written from the
protobuf encoding spec. The protowatch and protolist tests import it too.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections import defaultdict

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discofilter.core.protobuf import (
    MAGIC,
    encode_tag,
    encode_varint,
    find_field,
    find_str,
    iter_fields,
    len_field_header,
    object_namespace,
    object_resource_version,
    read_varint,
    unwrap_unknown,
    value_bounds,
)
from discofilter.errors import StreamFramingError
from tests import fixtures
from tests.helpers import manifest_entry

# ---------------------------------------------------------------------------------------------------
# Reference decoder and encoder (independent of discofilter.core.protobuf)

Fields = dict[int, list[int | bytes]]


class RefError(ValueError):
    pass


def ref_varint(s: io.BytesIO) -> int:
    value = 0
    for i in range(10):
        b = s.read(1)
        if not b:
            raise RefError("eof in varint")
        value |= (b[0] & 0x7F) << (7 * i)
        if not b[0] & 0x80:
            return value
    raise RefError("varint too long")


def ref_decode(data: bytes) -> Fields:
    """Every field of a message: number -> values in order (ints for varint/fixed, bytes for LEN)."""
    out: Fields = defaultdict(list)
    s = io.BytesIO(data)
    while s.tell() < len(data):
        key = ref_varint(s)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise RefError("field 0")
        if wire == 0:
            out[number].append(ref_varint(s))
        elif wire == 2:
            n = ref_varint(s)
            v = s.read(n)
            if len(v) != n:
                raise RefError("eof in bytes")
            out[number].append(v)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            v = s.read(size)
            if len(v) != size:
                raise RefError("eof in fixed")
            out[number].append(int.from_bytes(v, "little"))
        else:
            raise RefError(f"wire type {wire}")
    return dict(out)


def ref_bytes(fields: Fields, number: int) -> bytes:
    values = fields.get(number, [])
    assert all(isinstance(v, bytes) for v in values)
    return values[0] if values else b""  # type: ignore[return-value]


def ref_str(fields: Fields, number: int) -> str:
    return ref_bytes(fields, number).decode()


def ref_int(fields: Fields, number: int) -> int | None:
    values = fields.get(number, [])
    return values[0] if values and isinstance(values[0], int) else None


def ref_enc_varint(value: int) -> bytes:
    out = []
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ref_field(number: int, value: bytes | str | int, wire: int | None = None) -> bytes:
    """One encoded field: bytes/str as LEN, int as varint (or fixed32/64 when ``wire`` is 5/1)."""
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return ref_enc_varint(number << 3 | 2) + ref_enc_varint(len(value)) + value
    if wire == 1:
        return ref_enc_varint(number << 3 | 1) + struct.pack("<Q", value)
    if wire == 5:
        return ref_enc_varint(number << 3 | 5) + struct.pack("<I", value)
    return ref_enc_varint(number << 3) + ref_enc_varint(value)


def ref_unknown(body: bytes) -> tuple[Fields, Fields, Fields]:
    """(runtime.Unknown fields, its typeMeta fields, the object's fields) of a k8s\\0 body."""
    if body[:4] != b"k8s\x00":
        raise RefError("no magic")
    unk = ref_decode(body[4:])
    return unk, ref_decode(ref_bytes(unk, 1)), ref_decode(ref_bytes(unk, 2))


def ref_meta(obj: Fields) -> Fields:
    return ref_decode(ref_bytes(obj, 1))


def ref_event(frame: bytes) -> tuple[str, str, str, str, str]:
    """(type, kind, namespace, name, resourceVersion-or-Status-code) of one whole watch frame."""
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    ev = ref_decode(frame[4:])
    raw = ref_bytes(ref_decode(ref_bytes(ev, 2)), 1)
    _, tm, obj = ref_unknown(raw)
    etype, kind = ref_str(ev, 1), ref_str(tm, 2)
    meta = ref_meta(obj)
    if kind == "Status":
        return etype, kind, "", "", str(ref_int(obj, 6))  # Status.code is field 6
    return etype, kind, ref_str(meta, 3), ref_str(meta, 1), ref_str(meta, 6)


def ref_frames(name: str) -> list[bytes]:
    """The frames of a capture, cut at the capture's recorded event ends (not by any length parsing)."""
    from tests.helpers import reads

    data = fixtures.body(name)
    ends = reads(name)["event_end_offsets"]
    frames = [data[a:b] for a, b in zip([0, *ends], ends, strict=False)]
    assert b"".join(frames) == data
    return frames


# ---------------------------------------------------------------------------------------------------
# The reference decoder itself agrees with the manifest, so it can be trusted as an oracle.


def test_reference_decoder_matches_the_manifest() -> None:
    frames = ref_frames("watch-pods.pb")
    by_ns: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for f in frames:
        etype, _, ns, _, _ = ref_event(f)
        by_ns[ns][etype] += 1
    assert by_ns == manifest_entry("watch-pods.pb")["watch"]["by_namespace"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------
# Varints, tags and fields


@given(st.integers(0, 2**64 - 1))
def test_varints_round_trip_against_the_reference(value: int) -> None:
    enc = ref_enc_varint(value)
    assert encode_varint(value) == enc
    assert read_varint(enc + b"\x00", 0, len(enc) + 1) == (value, len(enc))
    assert read_varint(b"xx" + enc, 2, 2 + len(enc)) == (value, 2 + len(enc))


@pytest.mark.parametrize(
    ("data", "end"),
    [(b"", 0), (b"\x80", 1), (b"\xff\xff", 2), (b"\x80\x01", 1), (b"\xff" * 10 + b"\x01", 11)],
    ids=["empty", "open", "open2", "past-end", "11-bytes"],
)
def test_bad_varints_raise(data: bytes, end: int) -> None:
    with pytest.raises(StreamFramingError):
        read_varint(data, 0, end)


field_values = st.one_of(
    st.tuples(st.just(0), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(1), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(5), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(2), st.binary(max_size=300)),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(1, 2**29 - 1), field_values), max_size=12))
def test_iter_fields_reads_what_the_reference_encoder_wrote(
    spec: list[tuple[int, tuple[int, int | bytes]]],
) -> None:
    msg = b"".join(ref_field(num, val, wire) for num, (wire, val) in spec)
    got = list(iter_fields(msg))
    assert [(f[0], f[1]) for f in got] == [(num, wire) for num, (wire, _) in spec]
    assert b"".join(msg[f[2] : f[4]] for f in got) == msg  # field spans tile the message exactly
    for (num, (wire, val)), (_, _, _, vs, ve) in zip(spec, got, strict=True):
        if wire == 2:
            assert msg[vs:ve] == val
            first = next(f for f in got if f[0] == num)
            if first[1] == 2:  # find_field returns the first occurrence
                assert find_field(msg, 0, len(msg), num) == (first[3], first[4])
        elif wire == 0:
            assert read_varint(msg, vs, ve) == (val, ve)
        else:
            assert int.from_bytes(msg[vs:ve], "little") == val
    assert (
        encode_tag(7, 2) + encode_varint(3) == len_field_header(7, 3) == ref_enc_varint(7 << 3 | 2) + b"\x03"
    )


@pytest.mark.parametrize(
    "msg",
    [
        ref_enc_varint(1 << 3 | 3) + ref_enc_varint(1 << 3 | 4),  # a group
        ref_enc_varint(1 << 3 | 4),  # a lone end-group
        ref_enc_varint(1 << 3 | 6) + b"\x00",
        ref_enc_varint(1 << 3 | 7) + b"\x00",
        b"\x02\x00",  # field number 0
        ref_enc_varint(2**29 << 3 | 0) + b"\x00",  # field number over the maximum
        ref_field(1, b"abc")[:-1],  # length past the end
        ref_field(1, 5, 1)[:-1],  # truncated fixed64
        ref_field(1, 5, 5)[:-1],  # truncated fixed32
        b"\x08\x80",  # truncated varint value
        b"\x8a",  # truncated tag
    ],
)
def test_malformed_fields_raise(msg: bytes) -> None:
    with pytest.raises(StreamFramingError):
        list(iter_fields(msg))
    with pytest.raises(StreamFramingError):
        find_field(msg, 0, len(msg), 99)


def test_wrong_wire_type_for_a_wanted_field_raises() -> None:
    msg = ref_field(3, 7)
    assert find_field(msg, 0, len(msg), 4) is None
    with pytest.raises(StreamFramingError):
        find_field(msg, 0, len(msg), 3)


def test_value_bounds_rejects_groups() -> None:
    with pytest.raises(StreamFramingError):
        value_bounds(b"\x00", 0, 1, 3)


@settings(max_examples=1000)
@given(st.binary(max_size=200), st.integers(1, 20))
def test_any_bytes_walk_or_raise_a_framing_error(data: bytes, number: int) -> None:
    with contextlib.suppress(StreamFramingError):
        for f in iter_fields(data):
            assert 0 <= f[2] < f[3] <= f[4] <= len(data)
    with contextlib.suppress(StreamFramingError):
        find_field(data, 0, len(data), number)
    with contextlib.suppress(StreamFramingError):
        object_namespace(data)
    with contextlib.suppress(StreamFramingError):
        object_resource_version(data)
    with contextlib.suppress(StreamFramingError):
        unwrap_unknown(MAGIC + data)


# ---------------------------------------------------------------------------------------------------
# Kubernetes helpers on the real captures


def _list_items(name: str) -> list[bytes]:
    _, _, lst = ref_unknown(fixtures.body(name))
    return [v for v in lst.get(2, []) if isinstance(v, bytes)]


@pytest.mark.parametrize(
    ("pb", "js"),
    [
        ("list-pods.pb", "list-pods.json"),
        ("list-endpointslices.pb", "list-endpointslices.json"),
        ("list-pods-mesh-a.pb", "list-pods-mesh-a.json"),
        ("list-namespaces.istiod-accept.pb", "list-namespaces.json"),
    ],
)
def test_namespace_and_resource_version_of_every_real_item(pb: str, js: str) -> None:
    items = _list_items(pb)
    expected = [
        (i["metadata"].get("namespace", ""), i["metadata"]["resourceVersion"])
        for i in orjson.loads(fixtures.body(js))["items"]
    ]
    got = [(object_namespace(i), object_resource_version(i)) for i in items]
    assert got == expected  # same order: both lists come from one etcd range read at RV 503
    assert got == [(ref_str(ref_meta(ref_decode(i)), 3), ref_str(ref_meta(ref_decode(i)), 6)) for i in items]
    # offsets into a larger buffer give the same answers (no slicing needed on the hot path)
    body = fixtures.body(pb)
    for item in items[:3]:
        at = body.index(item)
        assert object_namespace(body, at, at + len(item)) == object_namespace(memoryview(item))


@pytest.mark.parametrize(
    "name", ["list-pods.pb", "list-endpointslices.pb", "list-namespaces.istiod-accept.pb"]
)
def test_unwrap_unknown_of_lists(name: str) -> None:
    entry = manifest_entry(name)["list"]
    api_version, kind, obj = unwrap_unknown(fixtures.body(name))
    assert (api_version, kind) == (entry["apiVersion"], entry["kind"])  # type: ignore[index]
    assert isinstance(obj, memoryview)
    _, _, lst = ref_unknown(fixtures.body(name))
    assert ref_decode(bytes(obj)) == lst


@pytest.mark.parametrize(
    "name", ["error-401-bad-token.pb", "error-404-namespace.pb", "error-410-list-exact.pb"]
)
def test_unwrap_unknown_of_status_errors(name: str) -> None:
    status = manifest_entry(name)["status_object"]
    api_version, kind, obj = unwrap_unknown(fixtures.body(name))
    assert (api_version, kind) == (status["apiVersion"], status["kind"])  # type: ignore[index]
    fields = ref_decode(bytes(obj))
    assert ref_int(fields, 6) == status["code"]  # type: ignore[index]
    assert ref_str(fields, 4) == status["reason"]  # type: ignore[index]
    assert find_str(obj, 0, len(obj), 4) == status["reason"]  # type: ignore[index]


def test_lookups_stop_at_the_field_they_need() -> None:
    # Everything after the namespace is garbage that any full parse would reject.
    garbage = b"\xff\xff\xff"
    meta = ref_field(1, "n") + ref_field(2, "g") + ref_field(3, "mesh-a") + garbage
    obj = ref_field(1, meta) + garbage
    assert object_namespace(obj) == "mesh-a"
    with pytest.raises(StreamFramingError):
        list(iter_fields(obj))
    with pytest.raises(StreamFramingError):
        object_resource_version(obj)  # field 6 lies beyond the garbage


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    meta = (
        ref_field(1, "n")
        + ref_field(40, 12345, 1)
        + ref_field(41, 7, 5)
        + ref_field(42, 2**63)
        + ref_field(43, b"\x00" * 200)
        + ref_field(3, "mesh-b")
    )
    obj = ref_field(50, 1, 5) + ref_field(1, meta) + ref_field(2, b"spec")
    assert object_namespace(obj) == "mesh-b"
    assert object_resource_version(obj) == ""


@pytest.mark.parametrize(
    "obj",
    [
        b"",
        ref_field(2, b"spec only"),
        ref_field(1, 5),  # metadata with the wrong wire type
        ref_field(1, ref_field(3, b"\xff\xfe")),  # namespace not UTF-8
        b"nope",
    ],
)
def test_unreadable_objects_raise(obj: bytes) -> None:
    with pytest.raises(StreamFramingError):
        object_namespace(obj)


@pytest.mark.parametrize(
    "body", [b"", b"k8s", b"k8s\x01" + ref_field(2, b""), b"k8s\x00" + ref_field(1, b"x")]
)
def test_unwrap_unknown_refuses_bodies_without_magic_or_object(body: bytes) -> None:
    with pytest.raises(StreamFramingError):
        unwrap_unknown(body)

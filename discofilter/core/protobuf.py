"""A minimal protobuf wire reader (and the little writing a rebuilt list needs) for Kubernetes bodies.

Kubernetes protobuf (``application/vnd.kubernetes.protobuf``) wraps every non-watch body, and the object
of every watch event, in an envelope (k8s.io/apimachinery ``pkg/runtime/serializer/protobuf/protobuf.go``):
the 4-byte magic ``6b 38 73 00`` ("k8s\\0"), then a ``runtime.Unknown`` message
(``pkg/runtime/generated.proto``): 1 typeMeta {1 apiVersion, 2 kind}, 2 raw (the object), 3
contentEncoding, 4 contentType. Every built-in object (and meta.k8s.io PartialObjectMetadata) has its
``metadata`` as field 1; ObjectMeta (``pkg/apis/meta/v1/generated.proto``) has namespace = 3 and
resourceVersion = 6; a List has ListMeta as field 1 and its items as repeated field 2.

discofilter never decodes whole objects: it walks tags and lengths with offsets into one buffer, and
reads the few strings that decide a filter (type, namespace, resourceVersion). Nothing here copies an
object; a function that needs a sub-message takes ``(buf, start, end)`` bounds instead of a slice.

Invariants:
- Rule 1: no I/O. Pure functions over ``bytes``/``memoryview`` and offsets.
- Any input either decodes or raises ``StreamFramingError``: truncated varints and lengths, varints over
  10 bytes, field number 0, groups (wire types 3/4, deprecated and never written by the generated Go
  marshallers), wire types 6/7, and a known field with the wrong wire type. No other exception escapes
  (IndexError, UnicodeDecodeError and the like are checked for or converted).
- Lookups take the *first* occurrence of a field and stop there. The API server's gogo-generated
  ``MarshalToSizedBuffer`` writes each singular field once, in field order, so first == last; Go's
  decoder would let a later duplicate win, which only a non-apiserver producer could exploit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, TypeAlias

from discofilter.errors import StreamFramingError

Buffer: TypeAlias = bytes | bytearray | memoryview

MAGIC: Final = b"k8s\x00"

# Wire types (protobuf encoding spec).
VARINT: Final = 0
FIXED64: Final = 1
LEN: Final = 2
START_GROUP: Final = 3
END_GROUP: Final = 4
FIXED32: Final = 5

MAX_FIELD_NUMBER: Final = (1 << 29) - 1
_MAX_VARINT_BYTES: Final = 10

# Field numbers used by discofilter (apimachinery generated.proto files).
UNKNOWN_TYPE_META: Final = 1
UNKNOWN_RAW: Final = 2
UNKNOWN_CONTENT_ENCODING: Final = 3
UNKNOWN_CONTENT_TYPE: Final = 4
TYPE_META_API_VERSION: Final = 1
TYPE_META_KIND: Final = 2
OBJECT_METADATA: Final = 1  # Pod, Service, Endpoints, EndpointSlice, PartialObjectMetadata, Status, *List
OBJECT_META_NAME: Final = 1
OBJECT_META_NAMESPACE: Final = 3
OBJECT_META_RESOURCE_VERSION: Final = 6
OBJECT_META_ANNOTATIONS: Final = 12
LIST_META_RESOURCE_VERSION: Final = 2
LIST_META_CONTINUE: Final = 3
LIST_META_REMAINING_ITEM_COUNT: Final = 4
LIST_ITEMS: Final = 2

# One field as iter_fields yields it: (number, wire type, start of the tag, start of the value, end of
# the value). For LEN fields the value is the payload (after its length); for VARINT/FIXED* it is the raw
# value bytes. buf[field_start:value_end] is the field's exact encoding, to copy unchanged.
Field: TypeAlias = tuple[int, int, int, int, int]


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; return (value, position after it). It must end before ``end``."""
    result = 0
    shift = 0
    limit = min(end, pos + _MAX_VARINT_BYTES)
    while pos < limit:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    if pos >= end:
        raise StreamFramingError("protobuf: truncated varint")
    raise StreamFramingError("protobuf: varint longer than 10 bytes")


def read_tag(buf: Buffer, pos: int, end: int) -> tuple[int, int, int]:
    """Decode a field tag at ``pos``; return (field number, wire type, position after it)."""
    b = buf[pos]  # callers guarantee pos < end
    if b < 0x80:
        tag = b
        pos += 1
    else:
        tag, pos = read_varint(buf, pos, end)
    number = tag >> 3
    if number == 0 or number > MAX_FIELD_NUMBER:
        raise StreamFramingError(f"protobuf: invalid field number {number}")
    return number, tag & 7, pos


def value_bounds(buf: Buffer, pos: int, end: int, wire: int) -> tuple[int, int]:
    """Bounds of the value that starts at ``pos`` (just after its tag); the payload for LEN fields."""
    if wire == LEN:
        b = buf[pos] if pos < end else -1
        if 0 <= b < 0x80:
            pos += 1
            n = b
        else:
            n, pos = read_varint(buf, pos, end)
        vend = pos + n
    elif wire == VARINT:
        vend = read_varint(buf, pos, end)[1]
    elif wire == FIXED32:
        vend = pos + 4
    elif wire == FIXED64:
        vend = pos + 8
    elif wire in (START_GROUP, END_GROUP):
        raise StreamFramingError("protobuf: groups are not supported (never written by Kubernetes)")
    else:
        raise StreamFramingError(f"protobuf: invalid wire type {wire}")
    if vend > end:
        raise StreamFramingError("protobuf: field runs past the end of its message")
    return pos, vend


def iter_fields(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """Yield every field of the message in ``buf[start:end]`` as (number, wire, field_start, vstart, vend).

    The whole message is validated as it is walked: a malformed field raises when reached.
    """
    if end is None:
        end = len(buf)
    pos = start
    while pos < end:
        number, wire, vpos = read_tag(buf, pos, end)
        vstart, vend = value_bounds(buf, vpos, end, wire)
        yield number, wire, pos, vstart, vend
        pos = vend


def find_field(buf: Buffer, start: int, end: int, number: int) -> tuple[int, int] | None:
    """Bounds of the payload of the first length-delimited field ``number`` in ``buf[start:end]``.

    Stops at the first match: the rest of the message is not read. Fields before it are skipped by
    their lengths (their contents are never looked at). None when the field is absent.
    """
    pos = start
    while pos < end:
        # Inline fast path for the one-byte tags and lengths that almost every field has; the general
        # case goes through read_tag/value_bounds.
        tag = buf[pos]
        if tag < 0x80 and tag & 7 == LEN and tag >= 8:
            pos += 1
            n = buf[pos] if pos < end else 0x80
            if n < 0x80:
                pos += 1
            else:
                n, pos = read_varint(buf, pos, end)
            vend = pos + n
            if vend > end:
                raise StreamFramingError("protobuf: field runs past the end of its message")
            if tag >> 3 == number:
                return pos, vend
            pos = vend
            continue
        fnum, wire, vpos = read_tag(buf, pos, end)
        vstart, vend = value_bounds(buf, vpos, end, wire)
        if fnum == number:
            if wire != LEN:
                raise StreamFramingError(f"protobuf: field {number} has wire type {wire}, expected 2")
            return vstart, vend
        pos = vend
    return None


def decode_str(buf: Buffer, start: int, end: int) -> str:
    try:
        return str(buf[start:end], "utf-8")
    except UnicodeDecodeError as exc:
        raise StreamFramingError("protobuf: string field is not valid UTF-8") from exc


def find_str(buf: Buffer, start: int, end: int, number: int) -> str:
    """The first string field ``number`` of the message in ``buf[start:end]``; "" when absent (proto2)."""
    span = find_field(buf, start, end, number)
    return "" if span is None else decode_str(buf, span[0], span[1])


def check_magic(buf: Buffer, start: int, end: int) -> int:
    """Position just after the k8s\\0 magic at ``start``; StreamFramingError when it is not there."""
    if end - start < 4 or bytes(buf[start : start + 4]) != MAGIC:
        raise StreamFramingError("protobuf: body does not start with the k8s\\0 magic")
    return start + 4


def unknown_raw(buf: Buffer, start: int, end: int) -> tuple[int, int]:
    """Bounds of ``raw`` (the object) inside the runtime.Unknown at ``buf[start:end]`` (after the magic)."""
    span = find_field(buf, start, end, UNKNOWN_RAW)
    if span is None:
        raise StreamFramingError("protobuf: runtime.Unknown carries no object (raw)")
    return span


def unknown_type(buf: Buffer, start: int, end: int) -> tuple[str, str]:
    """(apiVersion, kind) of the runtime.Unknown at ``buf[start:end]``."""
    span = find_field(buf, start, end, UNKNOWN_TYPE_META)
    if span is None:
        return "", ""
    return (
        find_str(buf, span[0], span[1], TYPE_META_API_VERSION),
        find_str(buf, span[0], span[1], TYPE_META_KIND),
    )


def unwrap_unknown(raw: Buffer) -> tuple[str, str, memoryview]:
    """Split a k8s\\0-prefixed body into (apiVersion, kind, object bytes); the object is a view (no copy)."""
    start = check_magic(raw, 0, len(raw))
    end = len(raw)
    api_version, kind = unknown_type(raw, start, end)
    a, b = unknown_raw(raw, start, end)
    return api_version, kind, memoryview(raw)[a:b]


def object_metadata(buf: Buffer, start: int, end: int) -> tuple[int, int]:
    """Bounds of the object's ``metadata`` (field 1). Every built-in kind has one; its absence is an error."""
    span = find_field(buf, start, end, OBJECT_METADATA)
    if span is None:
        raise StreamFramingError("protobuf: object has no metadata")
    return span


def object_namespace(obj: Buffer, start: int = 0, end: int | None = None) -> str:
    """``metadata.namespace`` of the object in ``obj[start:end]``; "" for cluster-scoped objects.

    Reads the object's first field (metadata comes first in every generated marshaller), then the
    metadata's first three fields (name, generateName, namespace); the rest is never touched.
    """
    if end is None:
        end = len(obj)
    ma, mb = object_metadata(obj, start, end)
    return find_str(obj, ma, mb, OBJECT_META_NAMESPACE)


def object_resource_version(obj: Buffer, start: int = 0, end: int | None = None) -> str:
    """``metadata.resourceVersion`` (ObjectMeta field 6) of the object in ``obj[start:end]``; "" if unset."""
    if end is None:
        end = len(obj)
    ma, mb = object_metadata(obj, start, end)
    return find_str(obj, ma, mb, OBJECT_META_RESOURCE_VERSION)


# Writing: only what rebuilding a list envelope needs (a tag, a length, copied fields).


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("protobuf varints written here are unsigned")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_tag(number: int, wire: int) -> bytes:
    return encode_varint((number << 3) | wire)


def len_field_header(number: int, payload_len: int) -> bytes:
    """Tag and length of a length-delimited field; the caller writes the payload after it (no copy)."""
    return encode_tag(number, LEN) + encode_varint(payload_len)


__all__ = [
    "LEN",
    "MAGIC",
    "Buffer",
    "Field",
    "check_magic",
    "decode_str",
    "encode_tag",
    "encode_varint",
    "find_field",
    "find_str",
    "iter_fields",
    "len_field_header",
    "object_metadata",
    "object_namespace",
    "object_resource_version",
    "read_tag",
    "read_varint",
    "unknown_raw",
    "unknown_type",
    "unwrap_unknown",
    "value_bounds",
]

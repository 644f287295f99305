"""Accounting: what istiod would receive, counted per namespace, from the bytes as they arrive.

Nothing is re-encoded: a watch event counts the bytes of its own frame as the API server wrote it (a JSON
line with its newline; a protobuf frame with its 4-byte length prefix), and a LIST counts its body as
received and each item's own bytes inside it. Which namespace an event belongs to is read with
discofilter's own classifiers (``core.watchfilter``, ``core.protowatch``), the same code ``serve``
filters with, so what is counted here as "outside the mesh" is what ``serve`` would drop.

Whether an event is outside the mesh is decided when it arrives, against the membership of that moment
(a ``Container[str]`` of mesh namespaces): a namespace that joins the mesh halfway through the window
counts as outside before and inside after, as ``serve`` would have filtered it.

Gateway pods (labels ``istio.io/gateway-name``, or ``istio: ingressgateway``/``egressgateway``) are
noted per namespace from pod LIST items and pod ADDED/MODIFIED events, so the report can warn when one
sits in a namespace discofilter would not keep.

Rule 1: no I/O. Malformed bytes raise ``StreamFramingError``.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec
import orjson

from discofilter.core import protowatch, watchfilter
from discofilter.core.framing import DEFAULT_MAX_LINE_BYTES, LineFramer
from discofilter.core.protobuf import (
    LEN,
    LIST_ITEMS,
    LIST_META_RESOURCE_VERSION,
    OBJECT_META_NAME,
    OBJECT_META_NAMESPACE,
    OBJECT_METADATA,
    VARINT,
    check_magic,
    find_field,
    find_str,
    iter_fields,
    read_varint,
    unknown_raw,
)
from discofilter.errors import ObjectTooLargeError, StreamFramingError

KINDS: Final = ("pods", "services", "endpoints", "endpointslices")
"""The four filtered collections, in the order reports list them."""
Format = Literal["json", "protobuf"]
_OBJECT_META_LABELS: Final = 11
_STATUS_CODE: Final = 6
_PREFIX: Final = 4
_U32: Final = struct.Struct(">I").unpack_from
GATEWAY_NAME_LABEL: Final = "istio.io/gateway-name"
GATEWAY_ISTIO_VALUES: Final = frozenset({"ingressgateway", "egressgateway"})


def is_gateway(labels: Mapping[str, str]) -> bool:
    """Istio gateway pods: Gateway API deployments carry ``istio.io/gateway-name``; the classic
    ingress and egress gateways of the istio charts carry ``istio: ingressgateway|egressgateway``."""
    return GATEWAY_NAME_LABEL in labels or labels.get("istio") in GATEWAY_ISTIO_VALUES


def format_of(content_type: str | None) -> Format:
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return "protobuf" if base == "application/vnd.kubernetes.protobuf" else "json"


@dataclass(slots=True)
class NamespaceCounts:
    """What one namespace produced in the window."""

    events: dict[str, dict[str, int]] = field(default_factory=dict)
    """kind -> event type -> events."""
    bytes: dict[str, int] = field(default_factory=dict)
    """kind -> watch bytes."""
    outside_events: int = 0
    """Events that arrived while the namespace was outside the mesh (``serve`` would have dropped them)."""
    outside_bytes: int = 0
    outside_event_bytes: dict[str, int] = field(default_factory=dict)
    """format -> bytes of the outside events (the CPU estimate's per-byte rates depend on the format)."""
    outside_events_by_format: dict[str, int] = field(default_factory=dict)
    list_objects: dict[str, int] = field(default_factory=dict)
    list_bytes: dict[str, int] = field(default_factory=dict)
    gateways: set[str] = field(default_factory=set)
    """Names of gateway pods seen in this namespace."""

    @property
    def total_events(self) -> int:
        return sum(sum(t.values()) for t in self.events.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


@dataclass(slots=True)
class KindCounts:
    """Per collection: what is not any namespace's (bookmarks, errors), formats seen, relists, lists."""

    other_events: dict[str, int] = field(default_factory=dict)
    """BOOKMARK and ERROR events (the API server sends them to every watcher; never filtered)."""
    other_bytes: int = 0
    watch_formats: set[str] = field(default_factory=set)
    list_formats: set[str] = field(default_factory=set)
    lists: int = 0
    """LISTs made: 1, plus one per relist a 410 forced."""
    list_body_bytes: int = 0
    """Bytes of the LIST bodies as received (the first LIST; relists are counted in ``relist_bytes``)."""
    relist_bytes: int = 0
    watches: int = 0
    """WATCH requests opened (one, plus one each time the server ended a watch or a relist happened)."""
    outside_list_objects: int = 0
    outside_list_bytes: int = 0
    list_objects_by_format: dict[str, int] = field(default_factory=dict)
    outside_list_objects_by_format: dict[str, int] = field(default_factory=dict)


class Tally:
    """All counts of one analysis window."""

    def __init__(self) -> None:
        self.namespaces: dict[str, NamespaceCounts] = {}
        self.kinds: dict[str, KindCounts] = {k: KindCounts() for k in KINDS}
        self.namespace_events: dict[str, int] = {}
        """Events of the namespace watch itself, by type (istiod receives them all; never filtered)."""
        self.events = 0
        self.outside_events = 0

    def ns(self, name: str) -> NamespaceCounts:
        counts = self.namespaces.get(name)
        if counts is None:
            counts = self.namespaces[name] = NamespaceCounts()
        return counts

    def add_event(
        self, kind: str, etype: str, namespace: str | None, size: int, fmt: Format, outside: bool
    ) -> None:
        if namespace is None:
            k = self.kinds[kind]
            k.other_events[etype] = k.other_events.get(etype, 0) + 1
            k.other_bytes += size
            return
        self.events += 1
        counts = self.ns(namespace)
        by_type = counts.events.setdefault(kind, {})
        by_type[etype] = by_type.get(etype, 0) + 1
        counts.bytes[kind] = counts.bytes.get(kind, 0) + size
        if outside:
            self.outside_events += 1
            counts.outside_events += 1
            counts.outside_bytes += size
            counts.outside_event_bytes[fmt] = counts.outside_event_bytes.get(fmt, 0) + size
            counts.outside_events_by_format[fmt] = counts.outside_events_by_format.get(fmt, 0) + 1

    def add_list(
        self, kind: str, body_size: int, items: list[ListItem], fmt: Format, members: Container[str]
    ) -> None:
        """Take one LIST answer. Only the first LIST of a kind sets the per-namespace LIST counts; a relist
        (after a 410) is counted as a relist, with its bytes, since it is extra traffic, not the state."""
        k = self.kinds[kind]
        k.lists += 1
        k.list_formats.add(fmt)
        if k.lists > 1:
            k.relist_bytes += body_size
            for item in items:
                self._gateway(kind, item)
            return
        k.list_body_bytes = body_size
        for item in items:
            counts = self.ns(item.namespace)
            counts.list_objects[kind] = counts.list_objects.get(kind, 0) + 1
            counts.list_bytes[kind] = counts.list_bytes.get(kind, 0) + item.size
            k.list_objects_by_format[fmt] = k.list_objects_by_format.get(fmt, 0) + 1
            if item.namespace not in members:
                k.outside_list_objects += 1
                k.outside_list_bytes += item.size
                k.outside_list_objects_by_format[fmt] = k.outside_list_objects_by_format.get(fmt, 0) + 1
            self._gateway(kind, item)

    def _gateway(self, kind: str, item: ListItem) -> None:
        if kind == "pods" and item.gateway:
            self.ns(item.namespace).gateways.add(item.name)


@dataclass(frozen=True, slots=True)
class ListItem:
    namespace: str
    size: int
    """The item's own bytes inside the body (JSON text; protobuf field with its tag and length)."""
    name: str = ""
    gateway: bool = False


@dataclass(frozen=True, slots=True)
class ListAnswer:
    items: list[ListItem]
    resource_version: str


# -- JSON ------------------------------------------------------------------------------------------------


class _Meta(msgspec.Struct):
    namespace: str = ""
    name: str = ""
    labels: dict[str, str] | None = None
    resourceVersion: str = ""


class _Obj(msgspec.Struct):
    metadata: _Meta


class _List(msgspec.Struct):
    metadata: _Meta
    items: list[msgspec.Raw] | None = None


_OBJ: Final = msgspec.json.Decoder(_Obj)
_LIST: Final = msgspec.json.Decoder(_List)


def _json_item(raw: bytes | memoryview, *, pods: bool) -> ListItem:
    try:
        meta = _OBJ.decode(raw).metadata
    except msgspec.DecodeError as exc:  # ValidationError derives from it
        raise StreamFramingError(f"list item is not an object with metadata: {exc}") from exc
    gateway = pods and meta.labels is not None and is_gateway(meta.labels)
    return ListItem(meta.namespace, len(raw), meta.name, gateway)


def parse_list(body: bytes, fmt: Format, *, kind: str) -> ListAnswer:
    """The items of a LIST body with their namespaces and sizes, and the list's resourceVersion."""
    pods = kind == "pods"
    if fmt == "protobuf":
        return _parse_proto_list(body, pods=pods)
    try:
        top = _LIST.decode(body)
    except msgspec.DecodeError as exc:
        raise StreamFramingError(f"{kind} list answer is not a JSON list: {exc}") from exc
    items = [_json_item(raw, pods=pods) for raw in top.items or ()]
    return ListAnswer(items, top.metadata.resourceVersion)


# -- protobuf --------------------------------------------------------------------------------------------


def _proto_meta(buf: bytes, start: int, end: int, *, labels: bool) -> tuple[str, str, bool]:
    """(namespace, name, is a gateway) of the object in ``buf[start:end]``; labels read only if asked."""
    meta = find_field(buf, start, end, OBJECT_METADATA)
    if meta is None:
        raise StreamFramingError("protobuf: object has no metadata")
    ns = find_str(buf, meta[0], meta[1], OBJECT_META_NAMESPACE)
    name = find_str(buf, meta[0], meta[1], OBJECT_META_NAME)
    if not labels:
        return ns, name, False
    found: dict[str, str] = {}
    for number, wire, _, vstart, vend in iter_fields(buf, meta[0], meta[1]):
        if number == _OBJECT_META_LABELS and wire == LEN:
            # A map entry: key = 1, value = 2 (protobuf map encoding).
            found[find_str(buf, vstart, vend, 1)] = find_str(buf, vstart, vend, 2)
    return ns, name, is_gateway(found)


def _parse_proto_list(body: bytes, *, pods: bool) -> ListAnswer:
    start = check_magic(body, 0, len(body))
    ra, rb = unknown_raw(body, start, len(body))
    items: list[ListItem] = []
    rv = ""
    for number, wire, fstart, vstart, vend in iter_fields(body, ra, rb):
        if number == LIST_ITEMS and wire == LEN:
            ns, name, gateway = _proto_meta(body, vstart, vend, labels=pods)
            items.append(ListItem(ns, vend - fstart, name, gateway))
        elif number == OBJECT_METADATA and wire == LEN:
            rv = find_str(body, vstart, vend, LIST_META_RESOURCE_VERSION)
    return ListAnswer(items, rv)


# -- watch streams ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One watch event as counted."""

    type: str
    namespace: str | None
    """None for BOOKMARK and ERROR."""
    size: int
    resource_version: str | None
    error_code: int | None = None
    """The Status code of an ERROR event (410: the resourceVersion is too old, relist)."""
    gateway: tuple[str, str] | None = None
    """(namespace, name) of a gateway pod seen in an ADDED or MODIFIED pod event."""


class WatchCounter:
    """Feed the chunks of one watch body; each call returns the events it completed, already tallied."""

    __slots__ = ("_framer", "_need", "_pending", "_pending_size", "fmt", "kind", "members", "tally")

    def __init__(self, kind: str, fmt: Format, tally: Tally, members: Container[str]) -> None:
        self.kind = kind
        self.fmt: Format = fmt
        self.tally = tally
        self.members = members
        self._framer = LineFramer()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._need = _PREFIX

    def feed(self, data: bytes) -> list[Seen]:
        seen = (
            self._proto(data)
            if self.fmt == "protobuf"
            else [self._json(line) for line in self._framer.feed(data)]
        )
        for s in seen:
            outside = s.namespace is not None and s.namespace not in self.members
            self.tally.add_event(self.kind, s.type, s.namespace, s.size, self.fmt, outside)
            if s.gateway is not None:
                self.tally.ns(s.gateway[0]).gateways.add(s.gateway[1])
        return seen

    def feed_eof(self) -> None:
        if self.fmt == "protobuf":
            if self._pending:
                raise StreamFramingError("watch stream ended inside a protobuf frame")
        else:
            self._framer.feed_eof()

    def _json(self, line: bytes) -> Seen:
        verdict = watchfilter.classify_fast(line)
        if verdict is None:
            verdict = watchfilter.classify_slow(line)
        etype, ns = verdict
        rv = watchfilter.event_resource_version(line) if etype != "ERROR" else None
        code: int | None = None
        gateway: tuple[str, str] | None = None
        if etype == "ERROR":
            obj = orjson.loads(line).get("object") or {}
            code = obj.get("code") if isinstance(obj.get("code"), int) else None
        elif self.kind == "pods" and ns is not None and etype != "DELETED":
            item = _json_item(_event_object(line), pods=True)
            if item.gateway:
                gateway = (ns, item.name)
        return Seen(etype, ns, len(line), rv, code, gateway)

    def _proto(self, data: bytes) -> list[Seen]:
        # A partial frame is held as pieces and joined once it is complete (O(n), as LineFramer).
        if self._pending:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._need:
                return []
            buf = b"".join(self._pending)
            self._pending.clear()
        else:
            buf = data
        out: list[Seen] = []
        pos = 0
        while len(buf) - pos >= _PREFIX:
            length = _U32(buf, pos)[0]
            if length > DEFAULT_MAX_LINE_BYTES:
                raise ObjectTooLargeError(f"watch frame of {length} bytes is over the limit")
            end = pos + _PREFIX + length
            if end > len(buf):
                break
            out.append(self._frame(buf[pos:end]))
            pos = end
        rest = buf[pos:]
        self._pending_size = len(rest)
        if rest:
            self._pending.append(rest)
            self._need = _PREFIX + _U32(rest, 0)[0] if len(rest) >= _PREFIX else _PREFIX
        return out

    def _frame(self, frame: bytes) -> Seen:
        end = len(frame)
        verdict = protowatch.classify_fast(frame, _PREFIX, end)
        if verdict is None:
            verdict = protowatch.classify_slow(frame, _PREFIX, end)
        etype, ns = verdict
        rv = protowatch.frame_resource_version(frame)
        code: int | None = None
        gateway: tuple[str, str] | None = None
        if etype == "ERROR" or (self.kind == "pods" and ns is not None and etype != "DELETED"):
            _, oa, ob = protowatch.event_parts(frame, _PREFIX, end)
            if etype == "ERROR":
                code = _status_code(frame, oa, ob)
            else:
                _, name, is_gw = _proto_meta(frame, oa, ob, labels=True)
                if is_gw and ns is not None:
                    gateway = (ns, name)
        return Seen(etype, ns, end, rv, code, gateway)


class _Event(msgspec.Struct):
    object: msgspec.Raw


_EVENT: Final = msgspec.json.Decoder(_Event)


def _event_object(line: bytes) -> bytes:
    """The raw ``object`` of a JSON event line."""
    try:
        return bytes(_EVENT.decode(line).object)
    except msgspec.DecodeError as exc:
        raise StreamFramingError(f"watch event has no object: {exc}") from exc


def _status_code(buf: bytes, start: int, end: int) -> int | None:
    for number, wire, _, vstart, _vend in iter_fields(buf, start, end):
        if number == _STATUS_CODE and wire == VARINT:
            return read_varint(buf, vstart, end)[0]
    return None

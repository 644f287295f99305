"""filter_proto_list: keeps the items of mesh namespaces in a protobuf LIST answer.

The protobuf twin of ``filter_list``. A protobuf list body is k8s\\0 + runtime.Unknown{typeMeta, raw,
contentEncoding, contentType} whose raw is a ``*List`` message: 1 ListMeta {1 selfLink, 2
resourceVersion, 3 continue, 4 remainingItemCount}, 2 repeated items (apimachinery
``pkg/apis/meta/v1/generated.proto``, k8s.io/api ``core/v1/generated.proto``). Nothing is decoded and
re-encoded: the body is rebuilt from slices of the original.

What the rebuilt body keeps:
- the envelope's fields in their original order and bytes (typeMeta, contentEncoding, contentType),
  with only ``raw`` replaced by the rebuilt list;
- the list's fields in their original order, every item field either copied byte for byte (tag, length
  and payload) or left out;
- ``metadata.resourceVersion`` and ``metadata.continue`` (client-go's pager loops while ``continue`` is
  non-empty, so a page whose items were all filtered out keeps its token); ``remainingItemCount`` is
  dropped, as it counts unfiltered items and can no longer be true.

With nothing dropped, the output is the input byte for byte.

Rule 1: no I/O. Anything that is not such a list (a Status, a Table, a malformed body) raises
``StreamFramingError``; it is never forwarded unfiltered.
"""

from __future__ import annotations

from collections.abc import Container

from discofilter.core.lifecycle import decide, decider_of
from discofilter.core.listfilter import ListResult
from discofilter.core.membership import parse_rv
from discofilter.core.protobuf import (
    LEN,
    LIST_ITEMS,
    LIST_META_CONTINUE,
    LIST_META_REMAINING_ITEM_COUNT,
    LIST_META_RESOURCE_VERSION,
    MAGIC,
    OBJECT_METADATA,
    UNKNOWN_RAW,
    Buffer,
    check_magic,
    decode_str,
    iter_fields,
    len_field_header,
    object_namespace,
    object_resource_version,
    unknown_type,
)
from discofilter.errors import StreamFramingError


def filter_proto_list(body: bytes, members: Container[str]) -> ListResult:
    """Return the list with only the items whose namespace is in ``members``. Raises ``Undecided`` for an
    item of a namespace membership does not know yet (``core.lifecycle``)."""
    decider = decider_of(members)
    view = memoryview(body)
    start = check_magic(body, 0, len(body))
    end = len(body)
    _, kind = unknown_type(body, start, end)
    if not kind.endswith("List"):
        raise StreamFramingError(f"expected a list answer, got kind {kind!r}")

    # Walk the whole envelope: every field is validated, and kept in place for the rebuild.
    envelope: list[tuple[int, int]] = []  # field spans; (-1, -1) marks where raw goes
    raw: tuple[int, int] | None = None
    for number, wire, fstart, vstart, vend in iter_fields(body, start, end):
        if number == UNKNOWN_RAW:
            if wire != LEN or raw is not None:
                raise StreamFramingError("protobuf list envelope has a malformed raw field")
            raw = (vstart, vend)
            envelope.append((-1, -1))
        else:
            envelope.append((fstart, vend))
    if raw is None:
        raise StreamFramingError("protobuf list envelope carries no list (raw)")

    pieces: list[Buffer] = []
    items_in = items_kept = 0
    rv = token = ""
    seen_meta = False
    changed = False
    for number, wire, fstart, vstart, vend in iter_fields(body, raw[0], raw[1]):
        if number == LIST_ITEMS:
            if wire != LEN:
                raise StreamFramingError("protobuf list items have the wrong wire type")
            items_in += 1
            ns = object_namespace(body, vstart, vend)
            if decider is not None and decider.undecided(ns):
                # Raises Undecided: the caller resolves the namespace and filters the body again.
                keep = decide(decider, ns, parse_rv(object_resource_version(body, vstart, vend)))
            else:
                keep = ns in members
            if keep:
                items_kept += 1
                pieces.append(view[fstart:vend])
            else:
                changed = True
        elif number == OBJECT_METADATA:
            if wire != LEN or seen_meta:
                raise StreamFramingError("protobuf list has malformed metadata")
            seen_meta = True
            meta, rv, token, dropped = _list_meta(body, view, vstart, vend)
            if dropped:
                changed = True
                pieces.append(len_field_header(OBJECT_METADATA, sum(len(m) for m in meta)))
                pieces.extend(meta)
            else:
                pieces.append(view[fstart:vend])
        else:
            pieces.append(view[fstart:vend])

    if not changed:
        out = body
    else:
        new_raw = b"".join(pieces)
        parts: list[Buffer] = [MAGIC]
        for fstart, fend in envelope:
            if fstart < 0:
                parts.append(len_field_header(UNKNOWN_RAW, len(new_raw)))
                parts.append(new_raw)
            else:
                parts.append(view[fstart:fend])
        out = b"".join(parts)
    return ListResult(
        body=out,
        items_in=items_in,
        items_kept=items_kept,
        resource_version=rv or None,
        continue_token=token or None,
    )


def _list_meta(body: bytes, view: memoryview, start: int, end: int) -> tuple[list[Buffer], str, str, bool]:
    """ListMeta's fields minus remainingItemCount; its resourceVersion, continue, and whether it dropped."""
    kept: list[Buffer] = []
    rv = token = ""
    dropped = False
    for number, wire, fstart, vstart, vend in iter_fields(body, start, end):
        if number == LIST_META_REMAINING_ITEM_COUNT:
            dropped = True
            continue
        if number in (LIST_META_RESOURCE_VERSION, LIST_META_CONTINUE):
            if wire != LEN:
                raise StreamFramingError("protobuf list metadata has a malformed string field")
            if number == LIST_META_RESOURCE_VERSION:
                rv = decode_str(body, vstart, vend)
            else:
                token = decode_str(body, vstart, vend)
        kept.append(view[fstart:vend])
    return kept, rv, token, dropped


__all__ = ["filter_proto_list"]

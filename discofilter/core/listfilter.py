"""filter_list: keeps the items of mesh namespaces in a JSON LIST answer.

A list body is one JSON document, so it is decoded, its items filtered and the list re-encoded. What
stays of the list itself (Kubernetes API concepts, "Retrieving large results sets in chunks"):
- ``metadata.resourceVersion``: the client watches from it.
- ``metadata.continue``: client-go's pager loops while it is non-empty, so a page whose items were all
  filtered out must still carry its token, or the client would stop early with a partial list.
- ``metadata.remainingItemCount`` is dropped: it counts unfiltered items and can no longer be true.

Three list shapes are filtered: a plain ``*List`` (``items``), ``PartialObjectMetadataList`` (``items``
of PartialObjectMetadata), and a meta.k8s.io ``Table`` (``rows``, each with its object's metadata).

Rule 1: no I/O. A body that is not such a list raises ``StreamFramingError``; it is never forwarded
unfiltered.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

import orjson

from discofilter.core.watchfilter import object_namespace, row_namespace, table_rows
from discofilter.errors import StreamFramingError


@dataclass(frozen=True, slots=True)
class ListResult:
    body: bytes
    items_in: int
    items_kept: int
    resource_version: str | None
    continue_token: str | None


def filter_list(body: bytes, members: Container[str]) -> ListResult:
    """Return the list with only the items (or Table rows) whose namespace is in ``members``."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise StreamFramingError(f"list answer is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise StreamFramingError("list answer is not a JSON object")
    meta = doc.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise StreamFramingError("list answer has malformed metadata")
    rows = table_rows(doc)
    if rows is not None:
        key = "rows"
        entries = rows
        kept = [row for row in rows if row_namespace(row) in members]
    else:
        key = "items"
        kind = doc.get("kind")
        if not isinstance(kind, str) or not kind.endswith("List"):
            raise StreamFramingError(f"expected a list answer, got kind {kind!r}")
        items = doc.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise StreamFramingError("list answer has malformed items")
        entries = items
        kept = [item for item in items if object_namespace(item) in members]
    meta.pop("remainingItemCount", None)
    doc[key] = kept
    rv = meta.get("resourceVersion")
    token = meta.get("continue")
    return ListResult(
        body=orjson.dumps(doc) + b"\n",
        items_in=len(entries),
        items_kept=len(kept),
        resource_version=rv if isinstance(rv, str) and rv else None,
        continue_token=token if isinstance(token, str) and token else None,
    )

"""The ``meta.k8s.io/v1`` Table and PartialObjectMetadata representations (what ``kubectl get`` asks for).

``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` makes the server print each object into cells with
the same printers kubectl would use (``pkg/printers/internalversion/printers.go``, 1.28). The server always
prints the wide columns (priority 1) and lets the client hide them. Each row carries the object as
``PartialObjectMetadata`` (``includeObject=Metadata``, the default), the whole object (``Object``) or nothing
(``None``). On a watch every event's object is a one-row Table, and only the first one has
``columnDefinitions`` (the handler sets ``NoHeaders`` after it), later ones print ``null``.

The cells come from podprinter.py (exact, ``list-pods-table.json``) and printers.py.

Rule: nothing here does I/O; ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from discofilter.simapi.podprinter import POD_COLUMNS, pod_cells
from discofilter.simapi.printers import PRINTERS, human_duration, parse_time
from discofilter.simapi.resources import ResourceType

__all__ = ["column_definitions", "human_duration", "parse_time", "partial_list", "partial_object", "table"]

JsonObj = dict[str, Any]


def column_definitions(rt: ResourceType) -> list[JsonObj]:
    columns = POD_COLUMNS if rt.name == "pods" else PRINTERS[rt.name][0]
    return [
        {"name": name, "type": "string", "format": fmt, "description": doc, "priority": priority}
        for name, fmt, priority, doc in columns
    ]


def partial_object(obj: Mapping[str, Any]) -> JsonObj:
    """``meta.AsPartialObjectMetadata``: the object's metadata under kind PartialObjectMetadata."""
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata") or {},
    }


def _row(rt: ResourceType, obj: Mapping[str, Any], now: float, include_object: str) -> JsonObj:
    if rt.name == "pods":
        cells, conditions = pod_cells(obj, now)
    else:
        cells, conditions = PRINTERS[rt.name][1](obj, now), []
    row: JsonObj = {"cells": cells}
    if conditions:
        row["conditions"] = conditions
    if include_object == "Object":
        row["object"] = rt.with_type_meta(obj)
    elif include_object != "None":
        row["object"] = partial_object(obj)
    return row


def table(
    rt: ResourceType,
    objects: Sequence[Mapping[str, Any]],
    metadata: JsonObj,
    *,
    now: float,
    include_object: str = "Metadata",
    headers: bool = True,
) -> JsonObj:
    """A ``meta.k8s.io/v1`` Table of ``objects``; ``metadata`` is the list's (or the object's RV)."""
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(rt) if headers else None,
        "rows": [_row(rt, obj, now, include_object) for obj in objects],
    }


def partial_list(items: Sequence[Mapping[str, Any]], metadata: JsonObj) -> JsonObj:
    """A ``PartialObjectMetadataList`` (``list-pods-partial.json``)."""
    return {
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "items": [partial_object(obj) for obj in items],
    }

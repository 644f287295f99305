"""LIST answers and continue tokens, as kube-apiserver 1.28 writes them.

A continue token is base64url (no padding) of ``{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\\u0000"}``,
where ``<key>`` is the last returned item's etcd key below the list's prefix (``ns/name`` for a cluster-wide
list of a namespaced type, ``name`` otherwise) and the NUL makes the next page start just after it
(``list-pods-page1.json``). An expired token is answered with a fresh one whose ``rv`` is -1: "continue,
inconsistently, at the latest state" (``error-410-list-continue.json``).

Rule: nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from dataclasses import dataclass
from typing import Any

import orjson

from discofilter.simapi import errors as err
from discofilter.simapi.encoding import dumps
from discofilter.simapi.resources import ResourceType

JsonObj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ListResult:
    """One page of a LIST; ``items`` are the store's objects (read-only)."""

    rt: ResourceType
    items: list[JsonObj]
    resource_version: int
    continue_token: str | None = None
    remaining_item_count: int | None = None

    def list_meta(self) -> JsonObj:
        """``metav1.ListMeta`` in Go field order: resourceVersion, continue, remainingItemCount."""
        meta: JsonObj = {"resourceVersion": str(self.resource_version)}
        if self.continue_token:
            meta["continue"] = self.continue_token
        if self.remaining_item_count is not None:
            meta["remainingItemCount"] = self.remaining_item_count
        return meta

    def body(self) -> JsonObj:
        """The ``PodList``/``ServiceList``/... object; items carry no kind/apiVersion (README fact 1)."""
        return {
            "kind": self.rt.list_kind,
            "apiVersion": self.rt.api_version,
            "metadata": self.list_meta(),
            "items": self.items,
        }


def encode_continue(rv: int, start: str) -> str:
    """The token for a next page starting at ``start`` (already including the trailing NUL)."""
    raw = dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_continue(token: str) -> tuple[str, int]:
    """``storage.DecodeContinue``: (start key below the list prefix, resourceVersion). Raises a 400."""
    invalid_rv = "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise err.bad_request(f"invalid continue token: {invalid_rv}: {exc}") from exc
    if not isinstance(data, dict):
        raise err.bad_request(f"invalid continue token: {invalid_rv}")
    if data.get("v") != "meta.k8s.io/v1":
        raise err.bad_request(
            f"invalid continue token: continue key is not valid: server does not recognize this encoded "
            f"version {data.get('v')}"
        )
    rv = data.get("rv")
    if not isinstance(rv, int) or isinstance(rv, bool) or rv == 0:
        raise err.bad_request(f"invalid continue token: {invalid_rv}")
    start = data.get("start")
    if not isinstance(start, str) or not start:
        raise err.bad_request(
            "invalid continue token: continue key is not valid: encoded start key empty (version "
            "meta.k8s.io/v1)"
        )
    # Go cleans the key as a path to stop a client from walking out of the resource's prefix.
    key = start if start.startswith("/") else "/" + start
    if posixpath.normpath(key) != key:
        raise err.bad_request(f"invalid continue token: continue key is not valid: {start}")
    return key[1:], rv

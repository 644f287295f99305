"""Typed views of the raw Kubernetes JSON that discofilter reads.

These are `TypedDict`s over what `orjson.loads` returns: no classes are built per object, because the
hot path must not pay for them. Only the fields discofilter reads are named.
"""

from __future__ import annotations

from typing import Final, Literal, NewType, TypedDict

NamespaceName = NewType("NamespaceName", str)

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]
OBJECT_EVENT_TYPES: Final = frozenset({"ADDED", "MODIFIED", "DELETED"})
# BOOKMARK and ERROR always pass: dropping bookmarks hangs client-go >= 0.35 watch-list informers
# (Teleport #64188), and ERROR carries the 410 that makes a client relist.
ALWAYS_FORWARDED: Final = frozenset({"BOOKMARK", "ERROR"})
EVENT_TYPES: Final = OBJECT_EVENT_TYPES | ALWAYS_FORWARDED

INITIAL_EVENTS_END_ANNOTATION: Final = "k8s.io/initial-events-end"


class RawMeta(TypedDict, total=False):
    name: str
    namespace: str
    resourceVersion: str
    labels: dict[str, str]
    annotations: dict[str, str]
    deletionTimestamp: str | None
    continue_: str


class RawObject(TypedDict, total=False):
    kind: str
    apiVersion: str
    metadata: RawMeta


class RawEvent(TypedDict):
    type: EventType
    object: RawObject


class RawStatus(TypedDict, total=False):
    kind: str
    apiVersion: str
    metadata: dict[str, str]
    status: str
    message: str
    reason: str
    code: int

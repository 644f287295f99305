"""The storage under the simulated API server: etcd's keyspace plus the watch cache, without I/O.

``History`` keeps every object as the raw dict the real server would print as a list item (Go field order,
no ``kind``/``apiVersion``), and one resourceVersion counter shared by all resources, as etcd's revision is.
Each write commits one ``StoreEvent`` (ADDED, MODIFIED or DELETED, carrying the new and the previous state)
into a bounded per-resource history and hands it synchronously to that resource's listeners; the async
HTTP shell turns listeners into per-watcher queues. ``Store`` (store.py) adds the API's write semantics.

Invariants:
- Rule 1: no I/O, no asyncio. Not thread-safe: use it from one thread (the event loop's, when served).
- A committed object is never mutated again: watch events, history and list answers share it.
- resourceVersions grow strictly, globally. Per resource, the history holds every event newer than
  ``floor``: a watch or an exact list from an older resourceVersion is 410 Expired, as after an etcd
  compaction. ``compact`` moves the floor on demand; ``history_window`` bounds the history.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from discofilter.simapi import errors as err
from discofilter.simapi.encoding import deep_copy
from discofilter.simapi.resources import RESOURCES, ResourceType

JsonObj = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Listener = Callable[["StoreEvent"], None]


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One committed write, as the watch cache keeps it."""

    type: EventType
    resource: str
    key: str
    """``namespace/name``, or ``name`` for cluster-scoped types (the etcd key below the resource's prefix)."""
    rv: int
    object: JsonObj
    """The new state; for DELETED the last state, carrying the deletion's resourceVersion."""
    prev: JsonObj | None
    """The state before (None for ADDED): what selector semantics need (cache_watcher.go)."""


class Subscription:
    """A listener registered with ``Store.subscribe``; ``close()`` unregisters it (idempotent)."""

    __slots__ = ("_listener", "_listeners")

    def __init__(self, listeners: list[Listener], listener: Listener) -> None:
        self._listeners = listeners
        self._listener = listener
        listeners.append(listener)

    def close(self) -> None:
        if self._listener in self._listeners:
            self._listeners.remove(self._listener)


class Collection:
    __slots__ = ("floor", "history", "keys", "listeners", "name", "objects", "rv")

    def __init__(self, name: str, floor: int) -> None:
        self.name = name
        self.objects: dict[str, JsonObj] = {}
        self.keys: list[str] = []  # sorted, as etcd iterates them
        self.history: deque[StoreEvent] = deque()
        self.floor = floor
        self.rv = floor
        self.listeners: list[Listener] = []


def with_resource_version(obj: JsonObj, rv: int) -> JsonObj:
    """A shallow copy of ``obj`` whose ``metadata.resourceVersion`` is ``rv`` (keeping the key's place)."""
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta["resourceVersion"] = str(rv)
    out["metadata"] = meta
    return out


def object_key(rt: ResourceType, namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if rt.namespaced else name


def strip_type_meta(obj: Mapping[str, Any]) -> JsonObj:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class History:
    """Objects, the global resourceVersion, per-resource event history and listeners."""

    def __init__(self, *, history_window: int = 10_000) -> None:
        if history_window < 1:
            raise ValueError("history_window must be at least 1")
        self.history_window = history_window
        # etcd's revision starts at 1; an empty store must not answer resourceVersion "0" (that means "any").
        self._rv = 1
        self._collections: dict[str, Collection] = {name: Collection(name, self._rv) for name in RESOURCES}

    # --- reading ------------------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The global counter: the resourceVersion of the latest write to any resource."""
        return self._rv

    def resource_rv(self, resource: str) -> int:
        """The resourceVersion of the latest event of ``resource`` (what its BOOKMARKs carry, fact 5)."""
        return self._coll(resource).rv

    def floor(self, resource: str) -> int:
        """Events of ``resource`` newer than this are all in the history; older resourceVersions expired."""
        return self._coll(resource).floor

    def objects(self, resource: str, namespace: str | None = None) -> Iterator[JsonObj]:
        """The stored objects (read-only!) in key order, optionally of one namespace."""
        rt = self._rt(resource)
        coll = self._coll(resource)
        lo, hi = self._key_range(rt, coll.keys, namespace)
        for key in coll.keys[lo:hi]:
            yield coll.objects[key]

    def events_since(self, resource: str, rv: int) -> list[StoreEvent]:
        """Every event of ``resource`` after ``rv``; 410 ``ApiError`` when the history does not reach back."""
        coll = self._coll(resource)
        if rv < coll.floor:
            raise err.expired(f"too old resource version: {rv} ({coll.floor})")
        out: list[StoreEvent] = []
        for event in reversed(coll.history):
            if event.rv <= rv:
                break
            out.append(event)
        out.reverse()
        return out

    def subscribe(self, resource: str, listener: Listener) -> Subscription:
        """Call ``listener(event)`` for every future event of ``resource``, synchronously, in order."""
        return Subscription(self._coll(resource).listeners, listener)

    # --- seeding and history ------------------------------------------------------------------------------

    def load_list(self, resource: str, list_body: Mapping[str, Any]) -> None:
        """Seed ``resource`` from a LIST answer (e.g. a capture), keeping objects and resourceVersions as
        they are. Replaces what was there, emits no events; the counter moves to at least the list's RV and
        the history of ``resource`` starts there (older watches expire)."""
        coll = self._coll(resource)
        rt = self._rt(resource)
        list_rv = int(str((list_body.get("metadata") or {}).get("resourceVersion") or "0"))
        coll.objects.clear()
        for item in list_body.get("items") or []:
            obj = strip_type_meta(item)
            meta = obj.get("metadata") or {}
            key = object_key(rt, meta.get("namespace"), str(meta.get("name", "")))
            coll.objects[key] = obj
        coll.keys = sorted(coll.objects)
        coll.history.clear()
        self._rv = max(self._rv, list_rv)
        coll.floor = max(list_rv, 1)
        coll.rv = coll.floor

    def apply(self, resource: str, event_type: EventType, obj: Mapping[str, Any]) -> StoreEvent:
        """Replay one event of a capture as it happened: ``obj`` is stored verbatim (kind/apiVersion
        dropped) with its own resourceVersion, which must be newer than every event of ``resource``.
        DELETED removes it."""
        rt = self._rt(resource)
        coll = self._coll(resource)
        stored = deep_copy(strip_type_meta(obj))
        meta = stored.get("metadata") or {}
        rv = int(str(meta.get("resourceVersion", "")))
        if rv <= coll.rv:
            raise ValueError(f"resourceVersion {rv} is not newer than {resource}'s latest ({coll.rv})")
        key = object_key(rt, meta.get("namespace"), str(meta.get("name", "")))
        prev = coll.objects.get(key)
        if event_type != "ADDED" and prev is None:
            raise ValueError(f"{event_type} of {resource} {key} which is not stored")
        if event_type == "DELETED":
            del coll.objects[key]
            coll.keys.pop(bisect.bisect_left(coll.keys, key))
        else:
            if prev is None:
                bisect.insort(coll.keys, key)
            coll.objects[key] = stored
        self._rv = max(self._rv, rv)
        return self._record(coll, StoreEvent(event_type, resource, key, rv, stored, prev))

    def compact(self, rv: int | None = None) -> None:
        """Forget history up to ``rv`` (default: everything) in every resource, like ``etcdctl compact``:
        watches and exact or continued lists from before it get 410."""
        target = self._rv if rv is None else min(rv, self._rv)
        for coll in self._collections.values():
            while coll.history and coll.history[0].rv <= target:
                coll.history.popleft()
            coll.floor = max(coll.floor, target)

    # --- internals for the write paths -------------------------------------------------------------------

    def _rt(self, resource: str) -> ResourceType:
        rt = RESOURCES.get(resource)
        if rt is None:
            raise err.unknown_resource()
        return rt

    def _coll(self, resource: str) -> Collection:
        coll = self._collections.get(resource)
        if coll is None:
            raise err.unknown_resource()
        return coll

    def _commit(
        self, coll: Collection, event_type: EventType, key: str, obj: JsonObj, prev: JsonObj | None
    ) -> StoreEvent:
        self._rv += 1
        stored = with_resource_version(obj, self._rv)
        coll.objects[key] = stored
        return self._record(coll, StoreEvent(event_type, coll.name, key, self._rv, stored, prev))

    def _remove(self, coll: Collection, key: str, current: JsonObj) -> StoreEvent:
        del coll.objects[key]
        coll.keys.pop(bisect.bisect_left(coll.keys, key))
        self._rv += 1
        deleted = with_resource_version(current, self._rv)
        event = self._record(coll, StoreEvent("DELETED", coll.name, key, self._rv, deleted, current))
        self._removed(coll.name, key)
        return event

    def _removed(self, resource: str, key: str) -> None:
        """Hook called after ``key`` of ``resource`` was deleted (the namespace controller listens here)."""

    def _record(self, coll: Collection, event: StoreEvent) -> StoreEvent:
        coll.history.append(event)
        if len(coll.history) > self.history_window:
            coll.floor = coll.history.popleft().rv
        coll.rv = event.rv
        for listener in list(coll.listeners):
            listener(event)
        return event

    def _state_at(self, coll: Collection, rv: int) -> tuple[Mapping[str, JsonObj], list[str]]:
        if rv >= coll.rv:
            return coll.objects, coll.keys
        overlay: dict[str, JsonObj | None] = {}
        for event in reversed(coll.history):
            if event.rv <= rv:
                break
            overlay[event.key] = event.prev
        objects = dict(coll.objects)
        for key, prev in overlay.items():
            if prev is None:
                objects.pop(key, None)
            else:
                objects[key] = prev
        return objects, sorted(objects)

    @staticmethod
    def _key_range(rt: ResourceType, keys: list[str], namespace: str | None) -> tuple[int, int]:
        if not (rt.namespaced and namespace):
            return 0, len(keys)
        # "/" + 1 is "0": every key of the namespace sorts between these two.
        return bisect.bisect_left(keys, f"{namespace}/"), bisect.bisect_left(keys, f"{namespace}0")

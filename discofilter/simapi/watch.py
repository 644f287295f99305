"""What one watcher is sent: the cacher's per-watcher logic of kube-apiserver 1.28, without I/O.

``open_watch`` decides how a watch starts (replay from a resourceVersion, the current state as ADDED for
``resourceVersion`` 0/unset or for a streaming list, or 410 when the history is gone) and returns a
``WatchCursor`` that converts every later store event for this watcher (``translate``) and decides bookmarks
(``bookmark``). The async shell only moves bytes.

The rules, each checked against the captures in ``tests/simapi``:

* Selector semantics (``cache_watcher.go`` ``convertToWatchEvent``): an object that starts matching comes as
  ADDED, one that stops matching as DELETED carrying its *previous* content with the *new*
  resourceVersion (``watch-pods-fieldselector.json``: the evicted pod, still ``Running``, at RV 574).
* Progress: the watcher's resourceVersion starts at the requested one and moves with the events replayed
  from history, not with live ones (``processInterval`` then ``process``). A BOOKMARK carries the latest
  resourceVersion of the resource and is only sent when that is newer than the progress: so a watch from the
  head gets none (``watch-pods-no-bookmark-at-head.json``), neither does one whose replay reached the head
  (``watch-pods-gzip-requested.json``), while live events do not stop one (``watch-pods.json``: three
  bookmarks at 549 after the live event 549).
* A streaming list (``sendInitialEvents=true``) ends its initial ADDED events with a BOOKMARK annotated
  ``k8s.io/initial-events-end: "true"``. 1.28 only sent it once the watch cache had seen a write at or past
  the request's etcd revision (``watchlist-endpointslices-idle-no-bookmark.json`` got none); later releases
  send it at once, which is what client-go needs and what this does, at the global resourceVersion.

Rule: nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from discofilter.simapi.resources import ResourceType
from discofilter.simapi.selection import ObjectFilter
from discofilter.simapi.store import Store, StoreEvent, with_resource_version

JsonObj = dict[str, Any]
OutType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
INITIAL_EVENTS_END: Final = {"k8s.io/initial-events-end": "true"}


@dataclass(frozen=True, slots=True)
class WatchOutput:
    """One event for one watcher. ``source`` says which state of ``event`` ``object`` is (``"object"``, or
    ``"prev"`` for a DELETED made from the previous state), empty for synthetic events (initial state,
    bookmarks): what an encoding cache keys on."""

    type: OutType
    object: JsonObj
    event: StoreEvent | None = None
    source: str = ""


@dataclass(slots=True)
class WatchCursor:
    """The state of one watcher; see the module docstring."""

    rt: ResourceType
    filter: ObjectFilter
    namespace: str | None
    progress_rv: int
    allow_bookmarks: bool

    def translate(self, event: StoreEvent) -> WatchOutput | None:
        """The event this watcher gets for ``event``, or None."""
        if event.rv <= self.progress_rv:
            return None  # already covered by what the watch started from
        if self.namespace is not None and not event.key.startswith(self.namespace + "/"):
            return None
        if self.filter.everything:
            return WatchOutput(event.type, event.object, event, "object")
        now = event.type != "DELETED" and self.filter.matches(event.object)
        before = event.prev is not None and self.filter.matches(event.prev)
        if now and not before:
            return WatchOutput("ADDED", event.object, event, "object")
        if now:
            return WatchOutput("MODIFIED", event.object, event, "object")
        if before:
            if event.type == "DELETED":
                return WatchOutput("DELETED", event.object, event, "object")
            assert event.prev is not None
            return WatchOutput("DELETED", with_resource_version(event.prev, event.rv), event, "prev")
        return None

    def bookmark(self, resource_rv: int) -> WatchOutput | None:
        """The periodic BOOKMARK, if one is due: only with allowWatchBookmarks and something newer than the
        watcher's progress (README fact 6)."""
        if not self.allow_bookmarks or resource_rv <= self.progress_rv:
            return None
        return WatchOutput("BOOKMARK", self.rt.bookmark(resource_rv))


def _initial_state(store: Store, cursor: WatchCursor) -> list[WatchOutput]:
    flt = cursor.filter
    return [
        WatchOutput("ADDED", obj)
        for obj in store.objects(cursor.rt.name, cursor.namespace)
        if flt.everything or flt.matches(obj)
    ]


def open_watch(
    store: Store,
    rt: ResourceType,
    flt: ObjectFilter,
    *,
    namespace: str | None,
    resource_version: str | None,
    send_initial_events: bool,
    allow_bookmarks: bool,
) -> tuple[WatchCursor, list[WatchOutput]]:
    """Start a watch: the cursor and the events to send first. Raises the store's 410 ``ApiError`` when
    ``resource_version`` is older than the history (the shell turns it into an ERROR event)."""
    cursor = WatchCursor(rt, flt, namespace or None, 0, allow_bookmarks)
    if send_initial_events:
        initial = _initial_state(store, cursor)
        cursor.progress_rv = store.resource_version
        if allow_bookmarks:
            initial.append(WatchOutput("BOOKMARK", rt.bookmark(cursor.progress_rv, INITIAL_EVENTS_END)))
        return cursor, initial
    if resource_version in (None, "", "0"):
        # "Start at most recent" / "any": the current state as ADDED, then what follows.
        initial = _initial_state(store, cursor)
        cursor.progress_rv = store.resource_rv(rt.name)
        return cursor, initial
    start = int(resource_version)
    replay = store.events_since(rt.name, start)
    cursor.progress_rv = start
    out: list[WatchOutput] = []
    for event in replay:
        item = cursor.translate(event)
        if item is not None:
            out.append(item)
    if out:
        assert out[-1].event is not None
        cursor.progress_rv = out[-1].event.rv
    return cursor, out

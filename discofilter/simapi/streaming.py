"""Serving a WATCH: the chunked stream, the cacher's bookmark schedule, the timeout, backpressure.

What each watcher is sent is decided by ``watch.py``; this module moves it. A watch answers 200 and
chunked at once (headers flushed before any event), writes one ``{"type":...,"object":...}\\n`` per event
as it happens, sends BOOKMARKs on the cacher's schedule (every ``bookmark_interval`` and once
``bookmark_lead`` before the deadline) and ends cleanly at ``timeoutSeconds``. A too-old resourceVersion is
a 200 with a single ERROR event (``watch-pods-410.json``). A watcher that falls ``watch_queue_limit`` events
behind is cut off, as the cacher closes watchers that do not keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

from aiohttp import web

from discofilter.simapi import errors as err
from discofilter.simapi import tables
from discofilter.simapi.encoding import dumps
from discofilter.simapi.request import ListOptions, Representation, Target
from discofilter.simapi.resources import ResourceType
from discofilter.simapi.responses import Context, KubeStreamResponse, representation
from discofilter.simapi.selection import FieldTerm, ObjectFilter
from discofilter.simapi.settings import SimSettings
from discofilter.simapi.store import Store, StoreEvent, parse_resource_version
from discofilter.simapi.watch import WatchCursor, WatchOutput, open_watch

JsonObj = dict[str, object]

# How often an idle watch looks at its connection; a vanished client is otherwise only noticed on a write.
_IDLE_CHECK_SECONDS: Final = 1.0


class EncodedObjects:
    """Encoded event objects shared by every watcher of the app (encode once, send to N watchers).

    A bounded LRU keyed by (resourceVersion, state): resourceVersions are unique per write, so the key
    names one object. Bounded because a history of 20 KB pods would otherwise hold its encodings too."""

    __slots__ = ("_data", "_limit")

    def __init__(self, limit: int = 4096) -> None:
        self._data: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._limit = limit

    def get(self, key: tuple[int, str]) -> bytes | None:
        data = self._data.get(key)
        if data is not None:
            self._data.move_to_end(key)
        return data

    def put(self, key: tuple[int, str], data: bytes) -> None:
        self._data[key] = data
        if len(self._data) > self._limit:
            self._data.popitem(last=False)


ENCODED: Final = web.AppKey("simapi_encoded_objects", EncodedObjects)


class WatchEncoder:
    """Event lines for one watcher."""

    def __init__(
        self,
        rt: ResourceType,
        representation: Representation,
        include_object: str,
        store: Store,
        shared: EncodedObjects,
    ) -> None:
        self.rt = rt
        self.representation = representation
        self.include_object = include_object
        self.store = store
        self.shared = shared
        self.headers_sent = False

    def line(self, out: WatchOutput) -> bytes:
        kind = out.type.encode()
        if self.representation == "object":
            if out.event is not None and out.source:
                key = (out.event.rv, out.source)
                data = self.shared.get(key)
                if data is None:
                    data = dumps(self.rt.with_type_meta(out.object))
                    self.shared.put(key, data)
            else:
                data = dumps(self.rt.with_type_meta(out.object))
            return b'{"type":"' + kind + b'","object":' + data + b"}\n"
        obj: JsonObj
        if self.representation == "partial":
            obj = tables.partial_object(out.object)
        else:
            rv = str((out.object.get("metadata") or {}).get("resourceVersion", ""))
            obj = tables.table(
                self.rt,
                [out.object],
                {"resourceVersion": rv},
                now=self.store.clock(),
                include_object=self.include_object,
                headers=not self.headers_sent,
            )
            self.headers_sent = True
        return b'{"type":"' + kind + b'","object":' + dumps(obj) + b"}\n"


def _next_bookmark(now: float, deadline: float, settings: SimSettings) -> float | None:
    # cacheWatcher.nextBookmarkTime: every bookmark_interval, and once bookmark_lead before the deadline.
    when = now + settings.bookmark_interval
    when = min(when, deadline - settings.bookmark_lead)
    return None if when <= now else when


async def serve_watch(
    request: web.Request, ctx: Context, target: Target, opts: ListOptions
) -> web.StreamResponse:
    opts.validate_watch(watch_list_enabled=ctx.settings.watch_list_enabled)
    rt, store, settings = target.rt, ctx.store, ctx.settings
    flt = store.filter(rt.name, opts.label_selector, opts.field_selector)
    if target.name is not None:
        flt = ObjectFilter(rt, flt.labels, (*flt.fields, FieldTerm("metadata.name", target.name, False)))
    if opts.resource_version not in (None, "", "0"):
        parse_resource_version(rt, opts.resource_version or "")
    pending: deque[StoreEvent] = deque()
    wakeup = asyncio.Event()
    overflow = False

    loop = asyncio.get_running_loop()
    delay = settings.watch_delays.get(rt.name, 0.0)
    delayed: deque[tuple[float, StoreEvent]] = deque()

    def release() -> None:
        now = loop.time()
        while delayed and delayed[0][0] <= now:
            deliver(delayed.popleft()[1])
        if delayed:
            loop.call_at(delayed[0][0], release)

    def listener(event: StoreEvent) -> None:
        if delay > 0:  # SimSettings.watch_delays: deliberate skew between the kinds' streams
            delayed.append((loop.time() + delay, event))
            if len(delayed) == 1:
                loop.call_at(delayed[0][0], release)
            return
        deliver(event)

    def deliver(event: StoreEvent) -> None:
        nonlocal overflow
        if overflow:
            return
        pending.append(event)
        if len(pending) > settings.watch_queue_limit:
            overflow = True
            pending.clear()
        wakeup.set()

    # Subscribing and taking the starting point happen without an await in between: no event is lost or
    # delivered twice.
    subscription = store.subscribe(rt.name, listener)
    try:
        expired: err.ApiError | None = None
        try:
            cursor, initial = open_watch(
                store,
                rt,
                flt,
                namespace=target.namespace,
                resource_version=opts.resource_version,
                send_initial_events=bool(opts.send_initial_events),
                allow_bookmarks=opts.allow_watch_bookmarks,
            )
        except err.ApiError as exc:
            if exc.code != 410:
                raise
            expired, initial = exc, []
        response = KubeStreamResponse(status=200, headers=ctx.headers())
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"")  # sends the headers now, as the apiserver flushes them before any event
        with contextlib.suppress(ConnectionResetError):
            if expired is not None:
                await response.write(b'{"type":"ERROR","object":' + dumps(expired.status()) + b"}\n")
            else:
                include = request.query.get("includeObject", "Metadata")
                shared = request.app[ENCODED]
                encoder = WatchEncoder(rt, representation(request), include, store, shared)
                for out in initial:
                    await response.write(encoder.line(out))
                timeout = (
                    float(opts.timeout_seconds) if opts.timeout_seconds else settings.default_watch_timeout
                )
                await _stream(
                    request, response, encoder, cursor, pending, wakeup, lambda: overflow, timeout, settings
                )
            await response.write_eof()
        return response
    finally:
        subscription.close()


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    encoder: WatchEncoder,
    cursor: WatchCursor,
    pending: deque[StoreEvent],
    wakeup: asyncio.Event,
    overflowed: Callable[[], bool],
    timeout: float,
    settings: SimSettings,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    next_bookmark = _next_bookmark(start, deadline, settings) if cursor.allow_bookmarks else None
    while True:
        while pending:
            out = cursor.translate(pending.popleft())
            if out is not None:
                await response.write(encoder.line(out))
        if overflowed():
            return  # the cacher closes a watcher that cannot keep up; the client re-watches
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        now = loop.time()
        if now >= deadline:
            return
        if next_bookmark is not None and now >= next_bookmark:
            bookmark = cursor.bookmark(encoder.store.resource_rv(encoder.rt.name))
            if bookmark is not None:
                await response.write(encoder.line(bookmark))
            next_bookmark = _next_bookmark(now, deadline, settings)
            continue
        wake_at = min(
            deadline, next_bookmark if next_bookmark is not None else math.inf, now + _IDLE_CHECK_SECONDS
        )
        wakeup.clear()
        if pending:
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(wake_at):
                await wakeup.wait()

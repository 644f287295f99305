"""The replay pump: the simulated API server's recorded watch answers, served at the speed of the kernel.

Saturation asks how fast a proxy gets through an API server's output. A real kube-apiserver serves watch
events from its watch cache, already encoded, in Go: it is not the bottleneck. simapi is Python and costs
about as much per event as the proxies under test, so at saturation it would measure itself. The pump
takes simapi's own answers (recorded once, byte for byte, by watching simapi from the stream's start) and
serves them again as the API server frames them: ``200``, ``Transfer-Encoding: chunked``, one chunk per
event, written in large slices so the pump costs next to nothing.

It is a minimal HTTP/1.1 server (asyncio ``Protocol``, no aiohttp) that answers only what the proxies
and clients ask during saturation:

- ``GET {pods,services,endpoints,endpointslices}?watch=1&resourceVersion=RV``: the recorded stream
  after ``RV`` (the stream's start, or any resourceVersion in it), then the connection stays open as a
  watch does, until ``timeoutSeconds`` or the client goes. Extra query parameters:

  - ``benchLoops=N``: the stream N times over (trials long enough to time);
  - ``benchRate=R``: paced, one event per write (one HTTP chunk, one TLS record batch) at R events/s on
    this watch: the moderate-rate case, where every read carries one event and the per-wakeup cost shows;
  - ``benchSeconds=S`` (with ``benchRate``): only the first ~R*S events of the recording, then its last
    event (the stream's end marker) at S seconds, so a paced run has a known length and a known end;
  - ``benchEpoch=T`` (with ``benchRate``): the schedule starts at ``time.time() == T`` instead of when
    the request arrived, so the four watches of a client (and a proxy's reopened ones) share one clock;
  - ``fieldSelector``: its ``metadata.namespace!=NS`` requirements are honoured (the events of NS are
    never sent, and a paced schedule skips their slots, as an API server that never sends them), as
    kube-apiserver does in its watch cache (REFERENCE.md). Other requirements are not checked: the
    recording was made with the clients' own selectors (``status.phase!=Failed`` for pods), and simapi,
    not the pump, answers the real 400 for a field it does not support.
- ``GET /api/v1/namespaces`` (discofilter's and the naive proxy's membership): the recorded list; with
  ``watch`` a silent watch (membership does not change during saturation);
- anything else: a 404 ``Status``.

Bound to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final, cast
from urllib.parse import parse_qs

log = logging.getLogger("discofilter.bench.pump")

_WRITE_SLICE: Final = 256 * 1024
"""Bytes per transport.write: large enough that the pump's own CPU vanishes; events still arrive framed
as one chunk each, as from an API server that flushes after every event."""
_MAX_HEAD: Final = 64 * 1024
_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_NOT_FOUND: Final = (
    b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
    b'"message":"the replay pump serves only the recorded streams","reason":"NotFound","code":404}\n'
)


_NAMESPACE: Final = re.compile(rb'"namespace":"([^"]*)"')
_RV: Final = re.compile(rb'"resourceVersion":"([0-9]+)"')
_HEAD: Final = 4096
"""An event's metadata (namespace, resourceVersion) comes before anything large in it."""
_EXCLUDE: Final = "metadata.namespace!="


def frame_chunks(lines: list[bytes]) -> bytes:
    """HTTP/1.1 chunked framing, one chunk per event line."""
    return b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)


@dataclass(frozen=True, slots=True)
class Recording:
    start_rv: str
    streams: Mapping[str, bytes]
    """Request path -> the chunk-framed events of its watch from ``start_rv`` (no terminating chunk)."""
    namespace_list: bytes


@dataclass(frozen=True, slots=True)
class _Event:
    """One recorded event: where its chunk lies in the framed stream, its resourceVersion and namespace."""

    start: int
    end: int
    rv: int
    namespace: str


def _index(body: bytes) -> tuple[_Event, ...]:
    out = []
    view = memoryview(body)
    for offset in _event_slices(view):
        end = _chunk_end(view, offset)
        head = body[offset : min(end, offset + _HEAD)]
        ns, rv = _NAMESPACE.search(head), _RV.search(head)
        out.append(_Event(offset, end, int(rv[1]) if rv else 0, ns[1].decode() if ns else ""))
    return tuple(out)


def paced_count(available: int, rate: float, seconds: float) -> int:
    """Events a paced watch of ``available`` recorded events sends in ``seconds`` at ``rate``: about
    rate*seconds, the end marker (the recording's last event) included, at least the marker alone."""
    return max(1, min(available, round(rate * seconds)))


def paced_plan(body: bytes, rate: float, seconds: float) -> tuple[int, int]:
    """(events, chunk-framed bytes) a paced watch of the recorded ``body`` sends (nothing excluded)."""
    events = _index(body)
    count = paced_count(len(events), rate, seconds)
    chosen = [*events[: count - 1], events[-1]]
    return count, sum(e.end - e.start for e in chosen)


def excluded_namespaces(field_selector: str) -> frozenset[str]:
    """The namespaces a field selector's ``metadata.namespace!=NS`` requirements exclude."""
    return frozenset(
        req[len(_EXCLUDE) :] for req in field_selector.split(",") if req.strip().startswith(_EXCLUDE)
    )


class _Connection(asyncio.Protocol):
    def __init__(self, recording: Recording, index: Mapping[str, Sequence[_Event]]) -> None:
        self.recording = recording
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.closed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.busy:
            return  # a watch owns the connection; HTTP/1.1 clients send nothing more on it
        self.buffer += data
        while not self.busy and b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self._request(head.decode("latin-1"))
        if len(self.buffer) > _MAX_HEAD and self.transport is not None:
            self.transport.close()

    def _head(self, status: str, headers: Mapping[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status}", f"Date: {formatdate(usegmt=True)}", "Cache-Control: no-cache, private"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _send(self, status: str, body: bytes) -> None:
        assert self.transport is not None
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        self.transport.write(self._head(status, headers) + body)

    def _request(self, head: str) -> None:
        parts = head.split("\r\n", 1)[0].split(" ")
        method, target = parts[0], parts[1] if len(parts) > 1 else ""
        path, _, query = target.partition("?")
        q = {k: v[-1] for k, v in parse_qs(query).items()}
        watch = q.get("watch") in _TRUE
        timeout = float(q.get("timeoutSeconds") or 1800)
        if method != "GET":
            self._send("405 Method Not Allowed", _NOT_FOUND)
        elif path == "/api/v1/namespaces" and not watch:
            self._send("200 OK", self.recording.namespace_list)
        elif path == "/api/v1/namespaces":
            rv = q.get("resourceVersion") or self.recording.start_rv
            asked = q.get("allowWatchBookmarks") in _TRUE
            self._stream(memoryview(b""), timeout, bookmark=_bookmark_chunk(rv) if asked else None)
        elif watch and path in self.recording.streams and self._known_rv(q.get("resourceVersion", "")):
            self._watch(path, q, timeout)
        else:
            self._send("404 Not Found", _NOT_FOUND)

    def _known_rv(self, rv: str) -> bool:
        return rv == self.recording.start_rv or (rv.isdigit() and int(rv) > int(self.recording.start_rv))

    def _watch(self, path: str, q: Mapping[str, str], timeout: float) -> None:
        body = self.recording.streams[path]
        excluded = excluded_namespaces(q.get("fieldSelector", ""))
        after = int(q["resourceVersion"])
        events = self.index[path]
        if excluded or q["resourceVersion"] != self.recording.start_rv:
            keep = [e.rv > after and e.namespace not in excluded for e in events]
        else:
            keep = [True] * len(events)
        rate = float(q.get("benchRate") or 0)
        if rate <= 0:
            loops = int(q["benchLoops"]) if q.get("benchLoops", "").isdigit() else 1
            if not all(keep):
                body = b"".join(body[e.start : e.end] for e, k in zip(events, keep, strict=True) if k)
            plan: list[tuple[float, int, int]] = [(0.0, 0, len(body))]
            self._stream(memoryview(body), timeout, plan, loops)
            return
        # Paced: event i of the recording at i/rate s from the start, the marker (last event) at
        # benchSeconds; an excluded event's slot passes in silence, as the API server never sends it.
        seconds = float(q.get("benchSeconds") or 0)
        count = paced_count(len(events), rate, seconds) if seconds > 0 else len(events)
        order = [*range(count - 1), len(events) - 1]
        due = [i / rate for i in range(count - 1)] + [seconds if seconds > 0 else (count - 1) / rate]
        plan = [(d, events[i].start, events[i].end) for d, i in zip(due, order, strict=True) if keep[i]]
        epoch = float(q.get("benchEpoch") or 0) or time.time()
        self._stream(memoryview(self.recording.streams[path]), timeout, plan, 1, epoch)

    def _stream(
        self,
        body: memoryview,
        timeout: float,
        plan: Sequence[tuple[float, int, int]] = (),
        loops: int = 1,
        epoch: float | None = None,
        bookmark: bytes | None = None,
    ) -> None:
        assert self.transport is not None
        self.busy = True
        headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        self.transport.write(self._head("200 OK", headers))
        self.task = asyncio.create_task(self._pump(body, timeout, plan, loops, epoch, bookmark))

    async def _pump(
        self,
        body: memoryview,
        timeout: float,
        plan: Sequence[tuple[float, int, int]],
        loops: int,
        epoch: float | None,
        bookmark: bytes | None = None,
    ) -> None:
        """Write ``plan``'s slices of ``body``: at the speed of the kernel in large slices (``epoch``
        None), or each at its due time, seconds after ``epoch`` (``time.time()``)."""
        transport = self.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        t0 = None if epoch is None else loop.time() + (epoch - time.time())
        for _ in range(loops):
            for due, start, end in plan:
                if t0 is not None:
                    delay = t0 + due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                for offset in range(start, end, _WRITE_SLICE):
                    await self.can_write.wait()
                    if self.closed.is_set():
                        return
                    transport.write(body[offset : min(end, offset + _WRITE_SLICE)])
        # Then nothing more, as a watch at the head of history: open until its timeout or the client goes,
        # with a BOOKMARK now and then if the client asked for them, as the API server sends.
        deadline = loop.time() + timeout
        while not self.closed.is_set() and (left := deadline - loop.time()) > 0:
            wait = left if bookmark is None else min(left, BOOKMARK_EVERY_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), wait)
            if bookmark is not None and not self.closed.is_set() and loop.time() < deadline:
                transport.write(bookmark)
        if not self.closed.is_set():
            transport.write(b"0\r\n\r\n")
            transport.close()


BOOKMARK_EVERY_SECONDS = 30.0
"""The API server bookmarks a watch that asked for it about once a minute (the cacher's bookmarkFrequency).
discofilter counts a namespace watch quiet for 65 s as unconfirmed and makes filtered requests wait for a
LIST; twice a minute keeps a loaded two-core bench run clear of that bound, so it measures the relay,
not a membership wait (a real cluster's namespace watch also moves with every namespace change)."""


def _bookmark_chunk(rv: str) -> bytes:
    """One chunk holding a namespace watch BOOKMARK at ``rv``, framed as the API server frames it."""
    head = b'{"type":"BOOKMARK","object":{"kind":"Namespace","apiVersion":"v1","metadata":'
    event = head + b'{"resourceVersion":"' + rv.encode() + b'"}}}\n'
    return b"%x\r\n%s\r\n" % (len(event), event)


def _chunk_end(body: memoryview | bytes, offset: int) -> int:
    """Where the HTTP chunk starting at ``offset`` ends (after its trailing CRLF)."""
    head_end = bytes(body[offset : offset + 20]).index(b"\r\n")
    size = int(bytes(body[offset : offset + head_end]), 16)
    return offset + head_end + 2 + size + 2


def _event_slices(body: memoryview | bytes) -> list[int]:
    offsets, offset = [], 0
    while offset < len(body):
        offsets.append(offset)
        offset = _chunk_end(body, offset)
    return offsets


async def serve_pump(
    recording: Recording, ssl_context: ssl.SSLContext | None = None
) -> tuple[asyncio.Server, str]:
    """Listen on 127.0.0.1 (a free port), over TLS with ``ssl_context``; returns the server and its URL."""
    loop = asyncio.get_running_loop()
    index = {path: _index(body) for path, body in recording.streams.items()}
    server = await loop.create_server(lambda: _Connection(recording, index), "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if ssl_context is not None else "http"
    return server, f"{scheme}://127.0.0.1:{port}"

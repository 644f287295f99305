"""WatchConnection: one filtered watch's own HTTP/1.1 connection to the API server, read without aiohttp.

The hot path of the product. aiohttp's client gives every HTTP chunk (the API server sends one per
event) Python-level bookkeeping and wakes the relay task for every read (``core.http1`` says what that
costs). Here the socket's ``data_received`` callback finds the body's spans between the chunk framing
(``core.http1.ResponseReader.feed_spans``) and runs the watch filter over them in place, at once; only
kept bytes are copied and queued, and only they wake the relay task. An event of a namespace outside
the mesh costs one callback, no copy and no task switch.

What stays as it was with aiohttp:
- the request: the same headers (the client's credentials, or discofilter's when lent), the same TLS
  context, the connect timeout; plus ``Accept-Encoding: identity`` (the stream is filtered, so it must
  arrive plain; the API server does not compress watches anyway) and ``Connection: close`` (a watch
  connection is never reused);
- backpressure: past ``max_pending`` queued kept bytes the socket stops being read, so a stalled client
  holds at most that, one read and the kernel buffers;
- ``end()`` (shutdown, membership change): the connection goes at once and the relay's pending read
  returns EOF; whole events already written stay written, nothing decided after it is sent.

One connection per watch, outside aiohttp's pool: a watch holds its connection for its whole life
anyway (HTTP/1.1), and ``Connection: close`` means nothing is left to reuse.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, cast

from yarl import URL

from discofilter.core.http1 import ResponseHead, ResponseReader, join_spans
from discofilter.core.lifecycle import Undecided
from discofilter.errors import StreamFramingError, UpstreamError

Sink = Callable[[bytes, list[int]], bytes]
"""A watch filter's ``feed_spans``: one read's buffer and the offsets of the body in it -> kept bytes."""


class Gate(Protocol):
    """A filter that can stop at an event it cannot decide yet (``core.lifecycle``)."""

    blocked: Undecided | None

    def resume(self) -> bytes: ...


Resolve = Callable[[str, int | None], Awaitable[bool]]
"""Waits until an event of that namespace at that resourceVersion can be decided; False if it cannot."""


class UpstreamClosed(ConnectionError):
    """The API server's connection ended before the response did (restart, network, idle cut)."""


def request_bytes(method: str, base: URL, raw: str, headers: Mapping[str, str]) -> bytes:
    """The request head: ``raw`` (path and query as the client sent them) under the base URL's path.

    Header values arrive from aiohttp's parser as str decoded with surrogateescape and go back out as
    the same octets. CR, LF and NUL are refused: they would split the head (request smuggling).
    """
    prefix = base.raw_path.rstrip("/")
    host = base.host_port_subcomponent or base.raw_host or ""
    lines = [f"{method} {prefix}{raw} HTTP/1.1", f"Host: {host}"]
    skip = {"host", "accept-encoding", "connection", "content-length", "transfer-encoding"}
    for k, v in headers.items():
        if k.lower() in skip:
            continue
        if any(c in k or c in v for c in "\r\n\0"):
            raise UpstreamError(f"header {k!r} carries a control character; not forwarded")
        lines.append(f"{k}: {v}")
    lines += ["Accept-Encoding: identity", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


class WatchConnection(asyncio.Protocol):
    """The protocol of one watch's upstream connection. ``open`` connects and sends the request; then
    ``head()``, then either ``attach(filter)`` and ``read()`` until b"", or ``read_all()``."""

    def __init__(self, request: bytes, max_pending: int) -> None:
        self._request = request
        self._max_pending = max_pending
        self._reader = ResponseReader()
        self._transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self._head: asyncio.Future[ResponseHead] = loop.create_future()
        self._sink: Sink | None = None
        self._queue: list[bytes] = []  # kept bytes (after attach) or raw body bytes (before it)
        self._queued = 0
        self._exc: Exception | None = None
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._gate: Gate | None = None
        self._resolve: Resolve | None = None
        self._resolving: asyncio.Task[None] | None = None
        self.undecided: Undecided | None = None
        """An event nothing could decide: the watch was ended here, and its client must relist."""
        self.ended = False
        """``end()`` was called: nothing more is read or handed on."""
        # Server-side exclusion's re-open (discofilter.exclusion) needs these; they cost one clock
        # read per socket read.
        self._held = False
        self._interrupted = False
        self.notify_data = False
        """Interrupt the pending ``read()`` after any body bytes arrive, kept or not."""
        self.last_data_at = time.monotonic()
        """When body bytes last arrived (every event up to the filter's last processed one did)."""

    @classmethod
    async def open(
        cls,
        base: URL,
        request: bytes,
        ssl_ctx: ssl.SSLContext | bool,
        *,
        connect_timeout: float,
        max_pending: int,
    ) -> WatchConnection:
        loop = asyncio.get_running_loop()
        host = base.raw_host or ""
        port = base.port or (443 if base.scheme == "https" else 80)
        context = ssl_ctx if isinstance(ssl_ctx, ssl.SSLContext) else None
        if context is None and base.scheme == "https":
            context = ssl.create_default_context()
        async with asyncio.timeout(connect_timeout):
            _, proto = await loop.create_connection(
                lambda: cls(request, max_pending),
                host,
                port,
                ssl=context,
                server_hostname=host if context is not None else None,
            )
        return proto

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.ended or self._eof or self._exc is not None:
            return
        reader = self._reader
        try:
            buf, spans = reader.feed_spans(data)
            if reader.head is not None and not self._head.done():
                self._head.set_result(reader.head)
            if spans:
                self.last_data_at = time.monotonic()
                self._hand_on(buf, spans)
                if self.notify_data:
                    self._interrupted = True
            if reader.done:
                self._eof = True
                self.close()
        except Exception as exc:  # noqa: BLE001 (framing, an oversized event, a filter bug: read() raises it)
            self._exc = exc
            self.close()
        self._wake()

    def _hand_on(self, buf: bytes, spans: list[int]) -> None:
        """Queue what the sink keeps of one read's body (all of it before a sink is attached); past
        ``max_pending`` queued bytes, stop reading the socket until ``read()`` takes them."""
        sink = self._sink
        kept = sink(buf, spans) if sink is not None else join_spans(buf, spans)
        if kept:
            self._queue.append(kept)
            self._queued += len(kept)
            if self._queued >= self._max_pending and not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()
        gate = self._gate
        if gate is not None and gate.blocked is not None and self._resolving is None:
            self._start_resolving()

    # -- an event of a namespace not known yet (the slow path; core.lifecycle) --------------------

    def _start_resolving(self) -> None:
        """The filter stopped at an undecided event: read no more until it is resolved (the held body
        is bounded by about one read), and resolve it in a task."""
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._resolving = asyncio.get_running_loop().create_task(self._resolve_held())

    async def _resolve_held(self) -> None:
        gate, resolve = self._gate, self._resolve
        assert gate is not None and resolve is not None
        try:
            while (blocked := gate.blocked) is not None:
                ok = await resolve(blocked.namespace, blocked.rv)
                if self.ended:
                    return
                if not ok:
                    self.undecided = blocked
                    self.end()
                    return
                kept = gate.resume()
                if kept:
                    self._queue.append(kept)
                    self._queued += len(kept)
                    self._wake()
        except Exception as exc:  # noqa: BLE001 (framing, a filter bug: read() raises it)
            self._exc = exc
            self.close()
        finally:
            self._resolving = None
            self._wake()
        if self._paused and self._queued < self._max_pending and self._transport is not None:
            self._paused = False
            if not self._held:  # a server-side exclusion switch holds the socket: it releases it
                self._transport.resume_reading()

    @property
    def resolving(self) -> bool:
        """The filter stopped at an undecided event and a lookup decides it: the stream must not be
        switched (server-side exclusion) until it is, since the held tail lives in the filter."""
        return self._resolving is not None

    def eof_received(self) -> bool | None:
        return None  # close: the response is over or cut; connection_lost decides which

    def connection_lost(self, exc: Exception | None) -> None:
        if not (self._eof or self.ended or self._exc is not None):
            try:
                self._reader.feed_eof()  # a body delimited by the close ends here
                self._eof = True
            except StreamFramingError as cut:
                why = f"{cut}" + (f" ({exc})" if exc else "")
                self._exc = UpstreamClosed(why)
        if not self._head.done():
            self._head.set_exception(self._exc or UpstreamClosed("connection closed before the response"))
            self._head.exception()  # retrieved here: nobody may be waiting for it any more
        self._wake()

    # -- the relay's side -------------------------------------------------------------------------

    async def head(self) -> ResponseHead:
        return await self._head

    def attach(self, sink: Sink, gate: Gate | None = None, resolve: Resolve | None = None) -> None:
        """From now on each read's body goes through ``sink`` and only what it returns is queued; body
        bytes that came with the head are run through it first. With ``gate`` and ``resolve``, an
        event the filter cannot decide yet stops reading until ``resolve`` says it can be."""
        self._sink = sink
        if gate is not None and resolve is not None:
            self._gate, self._resolve = gate, resolve
        if self._queue:
            body = b"".join(self._queue)
            self._queue.clear()
            self._queued = 0
            try:
                self._hand_on(body, [0, len(body)])
            except Exception as exc:  # noqa: BLE001 (handed to read(), as in data_received)
                self._exc = exc
                self.close()

    async def read(self) -> bytes:
        """The next kept bytes, b"" at the end of the body (or after ``end()``); raises what broke it."""
        while True:
            if self.ended:
                return b""
            if self._queue:
                out = self._queue[0] if len(self._queue) == 1 else b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                if self._paused and self._resolving is None and self._transport is not None:
                    self._paused = False
                    if not self._held:
                        self._transport.resume_reading()
                return out
            if self._interrupted:
                self._interrupted = False
                return b""
            if self._exc is not None:
                raise self._exc
            if self._eof and self._resolving is None:  # a held tail is still to be decided
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    @property
    def finished(self) -> bool:
        """The body is over (EOF, ``end()``, or an error ``read()`` raises): a b"" from ``read()`` then
        is the end, not an ``interrupt()``."""
        return self.ended or self._eof or self._exc is not None

    def interrupt(self) -> None:
        """Make the pending (or next) ``read()`` return b"" once, queued bytes first."""
        self._interrupted = True
        self._wake()

    def hold(self) -> None:
        """Stop reading the socket: nothing more reaches the filter until ``release()``."""
        self._held = True
        if self._transport is not None and not self._paused:
            self._transport.pause_reading()

    def release(self) -> None:
        self._held = False
        if self._transport is not None and not self._paused and not self._transport.is_closing():
            self._transport.resume_reading()

    def take_queued(self) -> bytes:
        """What is queued now (kept bytes after ``attach``), without waiting."""
        out = b"".join(self._queue)
        self._queue.clear()
        self._queued = 0
        if self._paused and self._resolving is None:
            self._paused = False
            if not self._held and self._transport is not None:
                self._transport.resume_reading()
        return out

    def unread(self, data: bytes) -> None:
        """Put raw body bytes taken before ``attach`` back in front (``attach`` filters them)."""
        if data:
            self._queue.insert(0, data)
            self._queued += len(data)

    async def read_all(self, limit: int) -> bytes:
        """The whole body (an error answer), at most ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"API server error answer exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def end(self) -> None:
        """End from outside (shutdown, membership change): the pending ``read()`` returns b"" now."""
        self.ended = True
        self.close()
        if not self._head.done():
            self._head.set_exception(UpstreamClosed("ended by discofilter"))
            self._head.exception()
        self._wake()

    def close(self) -> None:
        task = self._resolving
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # nothing more is handed on: a stream waiting on a namespace waits no more
        if self._transport is not None and not self._transport.is_closing():
            # abort, not close: nothing is left to write, and a closing TLS transport would otherwise
            # keep reading (and filtering) until the peer's close_notify.
            self._transport.abort()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


__all__ = ["Gate", "Resolve", "UpstreamClosed", "WatchConnection", "request_bytes"]

"""The replay pump: the simulated API server's recorded watch answers, served at the speed of the kernel.

Saturation asks how fast a proxy gets through an API server's output. A real kube-apiserver serves watch
events from its watch cache, already encoded, in Go: it is not the bottleneck. simapi is Python and costs
about as much per event as the proxies under test, so at saturation it would measure itself. The pump
takes simapi's own answers (recorded once, byte for byte, by watching simapi from the stream's start) and
serves them again as the API server frames them: ``200``, ``Transfer-Encoding: chunked``, one chunk per
event, written in large slices so the pump costs next to nothing.

It is a minimal HTTP/1.1 server (asyncio ``Protocol``, no aiohttp) that answers only what the proxies
and clients ask during saturation:

- ``GET {pods,services,endpoints,endpointslices}?watch=1&resourceVersion=START``: the recorded stream
  (``benchLoops`` times over with that extra query parameter, for trials long enough to time; with
  ``benchRate`` one event per write at that many events/s), then the
  connection stays open as a watch does, until ``timeoutSeconds`` or the client goes;
- ``GET /api/v1/namespaces`` (discofilter's and the naive proxy's membership): the recorded list; with
  ``watch`` a silent watch (membership does not change during saturation);
- anything else: a 404 ``Status``.

Bound to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
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


def frame_chunks(lines: list[bytes]) -> bytes:
    """HTTP/1.1 chunked framing, one chunk per event line."""
    return b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)


@dataclass(frozen=True, slots=True)
class Recording:
    start_rv: str
    streams: Mapping[str, bytes]
    """Request path -> the chunk-framed events of its watch from ``start_rv`` (no terminating chunk)."""
    namespace_list: bytes


class _Connection(asyncio.Protocol):
    def __init__(self, recording: Recording) -> None:
        self.recording = recording
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
            self._stream(b"", timeout)
        elif watch and path in self.recording.streams and q.get("resourceVersion") == self.recording.start_rv:
            loops = int(q["benchLoops"]) if q.get("benchLoops", "").isdigit() else 1
            rate = float(q.get("benchRate") or 0)
            self._stream(self.recording.streams[path], timeout, loops, rate)
        else:
            self._send("404 Not Found", _NOT_FOUND)

    def _stream(self, body: bytes, timeout: float, loops: int = 1, rate: float = 0.0) -> None:
        assert self.transport is not None
        self.busy = True
        headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        self.transport.write(self._head("200 OK", headers))
        self.task = asyncio.create_task(self._pump(memoryview(body), timeout, loops, rate))

    async def _pump(self, body: memoryview, timeout: float, loops: int, rate: float) -> None:
        transport = self.transport
        assert transport is not None
        slices = _event_slices(body) if rate > 0 else range(0, len(body), _WRITE_SLICE)
        step = _WRITE_SLICE
        t0, n = asyncio.get_running_loop().time(), 0
        for _ in range(loops):
            for offset in slices:
                await self.can_write.wait()
                if self.closed.is_set():
                    return
                if rate > 0:
                    # One event per write at a steady rate (benchRate): the moderate-rate case, where
                    # every read carries one event and the per-wakeup cost shows.
                    n += 1
                    delay = t0 + n / rate - asyncio.get_running_loop().time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    step = _chunk_end(body, offset) - offset
                transport.write(body[offset : offset + step])
        # Then nothing more, as a watch at the head of history: open until its timeout or the client goes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        if not self.closed.is_set():
            transport.write(b"0\r\n\r\n")
            transport.close()


def _chunk_end(body: memoryview, offset: int) -> int:
    """Where the HTTP chunk starting at ``offset`` ends (after its trailing CRLF)."""
    head_end = bytes(body[offset : offset + 20]).index(b"\r\n")
    size = int(bytes(body[offset : offset + head_end]), 16)
    return offset + head_end + 2 + size + 2


def _event_slices(body: memoryview) -> list[int]:
    offsets, offset = [], 0
    while offset < len(body):
        offsets.append(offset)
        offset = _chunk_end(body, offset)
    return offsets


async def serve_pump(recording: Recording) -> tuple[asyncio.Server, str]:
    """Listen on 127.0.0.1 (a free port); returns the server and its URL."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(recording), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"

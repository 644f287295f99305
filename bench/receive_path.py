"""aiohttp's receive path alone: CPU per watch event for a client that reads a chunked body and drops it.

Run it with::

    python bench/receive_path.py            # ~60 s; a table on stdout
    python bench/receive_path.py --json     # the same as JSON

What it answers: how much of a proxy's per-event cost is spent before its filter sees a byte, and what
changes it. A server process (plain blocking sockets, so it costs next to nothing and is not charged to
the client) sends the same pod watch stream (the core benchmark's ``pods-mixed`` corpus, 11.6 KB per
event, 5 passes) framed two ways:

- ``chunk-per-event``: one HTTP chunk per event, as the kube-apiserver flushes after every event;
- ``64k-chunks``: the same bytes in 64 KiB HTTP chunks (what a busy stream looks like to a reader that
  gets many events per read);
- ``paced-2000``: one event per write at 2,000 events/s (4,000 events): the moderate rate of the latency
  phase, where every event costs a wakeup, a read and a callback chain of its own.

The client (this process, uvloop) reads it with aiohttp ``readany()`` (what ``proxy._pump`` did until
filtered watches got their own reader), with a few ``read_bufsize`` values; with discofilter's own watch
reader (``watchconn``, de-chunking in the read callback, a sink that drops every byte); and with plain
asyncio streams and no HTTP parser (the floor of loop and kernel). Measured per event: the client's CPU
(user+system), minor page faults (fresh pages touched: glibc serves allocations over its mmap threshold,
128 KiB by default, with fresh mappings, so large buffers fault on every read), and wall time. Run it
again with ``MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=16777216`` in the environment to see
what the allocator settings change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import aiohttp
import uvloop
from yarl import URL

from discofilter.bench.core import build_corpora
from discofilter.bench.pump import frame_chunks
from discofilter.watchconn import WatchConnection, request_bytes

PASSES: Final = 5
CHUNK: Final = 64 * 1024
RATE: Final = 2_000
"""The latency phase's rate in ``discofilter bench``: most reads then carry one event."""
PACED_EVENTS: Final = 4_000


def paced_frames(framed: bytes) -> list[bytes]:
    """Split a chunk-per-event payload (without its last chunk) back into one frame per event."""
    frames = []
    pos = 0
    while pos < len(framed):
        eol = framed.index(b"\r\n", pos)
        size = int(framed[pos:eol], 16)
        end = eol + 2 + size + 2
        frames.append(framed[pos:end])
        pos = end
    return frames


def _framed(lines: list[bytes], mode: str) -> bytes:
    body = b"".join(lines)
    if mode == "chunk-per-event":
        return frame_chunks(lines) + b"0\r\n\r\n"
    return frame_chunks([body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]) + b"0\r\n\r\n"


def _serve(sock: socket.socket, payloads: dict[str, bytes]) -> None:
    """Blocking server: one request per connection, the path names the payload."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    while True:
        conn, _ = sock.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    break
                request += data
            if not request:
                continue
            path = request.split(b" ", 2)[1].decode().lstrip("/")
            if path == "quit":
                return
            if path.startswith("paced-"):
                # One event per write, at RATE events/s: the moderate-rate case, one wakeup per event.
                conn.sendall(head)
                gap = 1.0 / RATE
                due = time.perf_counter()
                for frame in paced_frames(payloads[path]):
                    due += gap
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    conn.sendall(frame)
                conn.sendall(b"0\r\n\r\n")
                continue
            conn.sendall(head + payloads[path])


def _usage() -> tuple[float, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_minflt


async def _aiohttp_read(url: str, bufsize: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, read_bufsize=bufsize, auto_decompress=False) as resp,
    ):
        n = 0
        while True:
            chunk = await resp.content.readany()
            if not chunk:
                return n
            n += len(chunk)


async def _watchconn_read(url: str) -> int:
    """discofilter's own watch reader (watchconn + core.http1), its sink dropping every byte."""
    base = URL(url)
    req = request_bytes("GET", URL(f"{base.scheme}://{base.host_port_subcomponent}"), base.raw_path, {})
    conn = await WatchConnection.open(base, req, False, connect_timeout=10, max_pending=256 * 1024)
    await conn.head()
    n = 0

    def sink(data: bytes, spans: list[int]) -> bytes:
        nonlocal n
        n += sum(spans[1::2]) - sum(spans[::2])
        return b""

    conn.attach(sink)
    await conn.read()
    return n


async def _raw_read(host: str, port: int, path: str, bufsize: int) -> int:
    reader, writer = await asyncio.open_connection(host, port, limit=bufsize)
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    n = 0
    while True:
        data = await reader.read(bufsize)
        if not data:
            break
        n += len(data)
    writer.close()
    return n


def _measure(run: Callable[[], Coroutine[Any, Any, int]], events: int) -> dict[str, float]:
    best: dict[str, float] | None = None
    for _ in range(3):  # the best of three: the least disturbed by the other processes on the machine
        cpu0, flt0 = _usage()
        t0 = time.perf_counter()
        got = asyncio.run(run())
        wall = time.perf_counter() - t0
        cpu, flt = _usage()
        row = {
            "cpu_us_per_event": (cpu - cpu0) / events * 1e6,
            "minor_faults_per_event": (flt - flt0) / events,
            "events_per_s": events / wall,
            "mb_per_s": got / wall / 1e6,
        }
        if best is None or row["cpu_us_per_event"] < best["cpu_us_per_event"]:
            best = row
    assert best is not None
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    lines = list(build_corpora()[0].lines) * PASSES
    events = len(lines)
    payloads = {mode: _framed(lines, mode) for mode in ("chunk-per-event", "64k-chunks")}
    payloads[f"paced-{RATE}"] = frame_chunks(lines[:PACED_EVENTS])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    host, port = sock.getsockname()
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sock, payloads), daemon=True)
    server.start()
    uvloop.install()
    rows: list[dict[str, Any]] = []
    try:
        for mode in payloads:
            url = f"http://{host}:{port}/{mode}"
            n = PACED_EVENTS if mode.startswith("paced-") else events
            for bufsize in (64 * 1024, 256 * 1024, 2 * 1024 * 1024):
                if n == PACED_EVENTS and bufsize != 256 * 1024:
                    continue  # one event per read: the buffer size cannot matter
                r = _measure(lambda url=url, b=bufsize: _aiohttp_read(url, b), n)  # type: ignore[misc]
                rows.append({"reader": "aiohttp readany", "framing": mode, "read_bufsize": bufsize, **r})
            r = _measure(lambda url=url: _watchconn_read(url), n)  # type: ignore[misc]
            rows.append({"reader": "discofilter watchconn", "framing": mode, "read_bufsize": 256 * 1024, **r})
            r = _measure(lambda mode=mode: _raw_read(host, port, mode, 256 * 1024), n)  # type: ignore[misc]
            rows.append(
                {"reader": "asyncio stream, no HTTP", "framing": mode, "read_bufsize": 256 * 1024, **r}
            )
    finally:
        with socket.create_connection((host, port)) as quit_conn:
            quit_conn.sendall(b"GET /quit HTTP/1.1\r\n\r\n")
        server.join(5)
    if args.json:
        print(json.dumps({"events": events, "mean_event_bytes": len(b"".join(lines)) / events, "rows": rows}))
        return 0
    print(f"{events} events, {len(b''.join(lines)) / events:.0f} bytes each on average")
    header = ("reader", "framing", "bufsize", "µs CPU/event", "faults/event", "MB/s")
    print("{:24s} {:16s} {:>8s} {:>13s} {:>13s} {:>7s}".format(*header))
    for row in rows:
        print(
            f"{row['reader']:24s} {row['framing']:16s} {row['read_bufsize'] // 1024:7d}K "
            f"{row['cpu_us_per_event']:13.2f} {row['minor_faults_per_event']:13.2f} {row['mb_per_s']:7.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""1,000 concurrent filtered watches on one real ``discofilter serve`` process: all are served, an
event reaches every one, and what each costs is measured (RSS and file descriptors of the process).

The numbers go to the test log and the README ("What many watches cost"); the asserted bounds are loose
on purpose (this is not a timing test): they catch a per-watch cost that grows by an order of magnitude.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import psutil
from aiohttp import web

from tests import fixtures
from tests.test_shutdown import serve_process

log = logging.getLogger(__name__)

WATCHES = 1000
MESH_EVENTS = [
    line
    for line in fixtures.body("watch-pods.json").splitlines(keepends=True)
    if orjson.loads(line)["object"]["metadata"].get("namespace") == "mesh-a"
]


class HeldWatches:
    """An upstream whose watches send one real mesh event, then wait; ``release`` sends one more to all."""

    def __init__(self) -> None:
        self.open = 0
        self.release = asyncio.Event()
        self.done = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/api/v1/namespaces" and "watch" not in request.query:
            return web.Response(body=fixtures.body("list-namespaces.json"), content_type="application/json")
        if "watch" not in request.query:  # discofilter's one-off gateway pod LIST at start-up: none
            body = b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[]}'
            return web.Response(body=body, content_type="application/json")
        out = web.StreamResponse()
        out.headers["Content-Type"] = "application/json"
        await out.prepare(request)
        if request.path == "/api/v1/namespaces":  # discofilter's own namespace watch: quiet
            await self.done.wait()
            return out
        self.open += 1
        try:
            await out.write(MESH_EVENTS[0])
            await self.release.wait()
            await out.write(MESH_EVENTS[1])
            await self.done.wait()
        finally:
            self.open -= 1
        return out

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=2048).start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            self.done.set()
            await runner.cleanup()


async def open_watch(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /api/v1/pods?watch=1&allowWatchBookmarks=true HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def next_event(reader: asyncio.StreamReader) -> dict[str, object]:
    """One chunk of a chunked body that holds one whole event (discofilter writes events whole)."""
    size = int((await reader.readline()).strip(), 16)
    data = await reader.readexactly(size + 2)
    event: dict[str, object] = orjson.loads(data[:-2])
    return event


async def test_a_thousand_watches_on_one_process(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard)
    )  # this process: 3 fds per watch
    upstream = HeldWatches()
    async with upstream.serve() as up_url, serve_process(tmp_path, up_url) as (proc, url, _):
        ps = psutil.Process(proc.pid)
        host, port = url.removeprefix("http://").split(":")
        warm = [await open_watch(host, int(port)) for _ in range(20)]  # first-use allocations out of the way
        for r, _ in warm:
            await next_event(r)
        rss0, fds0 = ps.memory_info().rss, ps.num_fds()
        clients = []
        for _ in range(0, WATCHES, 100):  # in waves, so the listen backlog is never the limit
            clients += await asyncio.gather(*(open_watch(host, int(port)) for _w in range(100)))
        first = await asyncio.wait_for(asyncio.gather(*(next_event(r) for r, _ in clients)), 60)
        assert all(e["type"] == "ADDED" for e in first)
        assert upstream.open == WATCHES + len(warm)  # the upstream pool did not cap the watches
        rss1, fds1 = ps.memory_info().rss, ps.num_fds()
        upstream.release.set()
        second = await asyncio.wait_for(asyncio.gather(*(next_event(r) for r, _ in clients)), 60)
        assert {orjson.dumps(e) for e in second} == {orjson.dumps(orjson.loads(MESH_EVENTS[1]))}
        rss_per_watch = (rss1 - rss0) / WATCHES
        fds_per_watch = (fds1 - fds0) / WATCHES
        log.warning(
            "%d watches: RSS %.1f -> %.1f MiB (%.1f KiB per watch), fds %d -> %d (%.2f per watch)",
            WATCHES,
            rss0 / 2**20,
            rss1 / 2**20,
            rss_per_watch / 1024,
            fds0,
            fds1,
            fds_per_watch,
        )
        assert fds_per_watch <= 2.05  # the client socket and the upstream socket, nothing else
        assert rss_per_watch < 256 * 1024
        for _, w in [*warm, *clients]:
            w.close()

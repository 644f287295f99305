"""proxy._list streams JSON lists through ListStream (listperf): over real sockets, with an upstream that
holds back or breaks off the real ``list-pods.json`` capture mid-body."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from discofilter.proxy import GZIP_THRESHOLD
from discofilter.settings import Settings, WatchSettings
from tests import fixtures
from tests.harness import running_discofilter, write_kubeconfig
from tests.test_proxy import namespace_source

BODY = fixtures.body("list-pods.json")
MESH = frozenset(fixtures.manifest()["mesh_namespaces"])
# The 9 mesh pods come first in the capture; their end is well past 128 KiB of filtered output.
MESH_END = BODY.rindex(b'{"metadata":{"name":"', 0, BODY.index(b'"namespace":"plain-1"'))


class Upstream:
    """Answers GET /api/v1/pods with the first ``cut`` bytes of the capture, then waits for ``go`` (and
    sends the rest) or, with ``go`` None, drops the connection."""

    def __init__(self, cut: int, go: asyncio.Event | None) -> None:
        self.cut = cut
        self.go = go

    async def handle(self, request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await out.prepare(request)
        for i in range(0, self.cut, 16 * 1024):
            await out.write(BODY[i : min(i + 16 * 1024, self.cut)])
        if self.go is None:
            assert request.transport is not None
            request.transport.close()  # the API server goes away mid-list
            return out
        await self.go.wait()
        await out.write(BODY[self.cut :])
        await out.write_eof()
        return out


@contextlib.asynccontextmanager
async def through_discofilter(tmp_path: Path, upstream: Upstream) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/api/v1/pods", upstream.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kc = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", token="t")
    settings = Settings(watch=WatchSettings(wire_format="json", read_chunk_bytes=16 * 1024))
    try:
        async with running_discofilter(kc, settings=settings, source=namespace_source()) as df:
            yield df.url
    finally:
        await runner.cleanup()


async def test_a_large_list_streams_before_the_upstream_has_sent_it_all(tmp_path: Path) -> None:
    go = asyncio.Event()
    async with (
        through_discofilter(tmp_path, Upstream(MESH_END, go)) as url,
        aiohttp.ClientSession() as session,
        # Not gzip'd: zlib holds compressed output back until it has a block's worth.
        session.get(url + "/api/v1/pods", headers={"Accept-Encoding": "identity"}) as resp,
    ):
        assert resp.status == 200
        assert "Content-Length" not in resp.headers  # streamed, chunked
        first = b""
        # The upstream holds the rest until the client has seen more than the 128 KiB held back: a
        # proxy that buffered the whole list would never get here (the guard only stops a hang).
        while len(first) <= GZIP_THRESHOLD:
            chunk = await asyncio.wait_for(resp.content.readany(), 30)
            assert chunk
            first += chunk
        go.set()
        body = first + await resp.read()
    doc = orjson.loads(body)
    assert [i["metadata"]["namespace"] for i in doc["items"]].count("mesh-a") == 3
    assert {i["metadata"]["namespace"] for i in doc["items"]} == MESH
    assert doc["metadata"] == {"resourceVersion": "503"}


async def test_an_upstream_that_breaks_off_after_output_began_never_yields_a_shorter_list(
    tmp_path: Path,
) -> None:
    async with (
        through_discofilter(tmp_path, Upstream(MESH_END, None)) as url,
        aiohttp.ClientSession() as session,
        session.get(url + "/api/v1/pods") as resp,
    ):
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_an_upstream_that_breaks_off_early_gets_an_error_status(tmp_path: Path) -> None:
    async with (
        through_discofilter(tmp_path, Upstream(40_000, None)) as url,
        aiohttp.ClientSession() as session,
        session.get(url + "/api/v1/pods") as resp,
    ):
        assert resp.status == 502
        status = await resp.json()
    assert status["kind"] == "Status"
    assert "ended the LIST answer early" in status["message"]

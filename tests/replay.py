"""A replay upstream: serves real kube-apiserver captures with their real headers and read splits.

It is not a fake API server (that is ``discofilter.simapi``); it replays exactly what a real 1.28
server sent, byte for byte and split where the real TLS reads split it, so the proxy is tested on
real bytes. It records every request it receives.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from tests import fixtures
from tests.helpers import reads

_SKIP = {"transfer-encoding", "content-length", "date", "connection"}


@dataclass
class Recorded:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Replay:
    routes: dict[str, str] = field(default_factory=dict)
    """Request path (without query) -> fixture file to answer with; "PATH?watch" for watches only."""
    requests: list[Recorded] = field(default_factory=list)
    delay_between_reads: float = 0.0
    hold_open: asyncio.Event | None = None
    """If set, a watch answer stays open after its body until this is set (like a live watch)."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Recorded(request.method, request.raw_path, dict(request.headers), body))
        name = None
        if "watch" in request.query:
            name = self.routes.get(request.path + "?watch")
        name = name or self.routes.get(request.path)
        if name is None:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        status, headers = fixtures.headers(name)
        data = fixtures.body(name)
        out = web.StreamResponse(status=status)
        for k, v in headers:
            if k.lower() not in _SKIP:
                out.headers.add(k, v)
        try:
            offsets = reads(name)["read_end_offsets"]
        except FileNotFoundError:
            offsets = [len(data)]
        if len(data) < 2048 and "watch" not in request.query:
            out.content_length = len(data)
        await out.prepare(request)
        prev = 0
        for end in offsets:
            await out.write(data[prev:end])
            prev = end
            if self.delay_between_reads:
                await asyncio.sleep(self.delay_between_reads)
        if prev < len(data):
            await out.write(data[prev:])
        if self.hold_open is not None and "watch" in request.query:
            await self.hold_open.wait()
        await out.write_eof()
        return out

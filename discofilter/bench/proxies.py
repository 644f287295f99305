"""The two reference proxies discofilter is compared with, each in its own process.

``python -m discofilter.bench.proxies passthrough|naive --upstream URL [--ca FILE] [--selector SEL]...``
(``--ca``: the CA that signed an ``https://`` upstream's certificate, as a kubeconfig's
``certificate-authority``) prints
``{"port": N}`` on stdout once it listens on 127.0.0.1, then serves until SIGTERM or stdin closes.

- ``passthrough``: the floor of any aiohttp proxy. Every request is forwarded and every answer relayed
  byte for byte, read with ``readany()`` and written as it comes: no framing, no parsing. It is the
  same loop style as discofilter's relay (uvloop, one upstream session, one write per read).
- ``naive``: what a filtering proxy looks like when it decodes (Teleport's approach, and the naive proxy
  REFERENCE.md measured). Watches of pods, services, endpoints and endpointslices are split into events,
  every event is decoded with orjson, events of other namespaces dropped and the kept ones re-encoded;
  LISTs are decoded, filtered and re-encoded. Its membership is a LIST + WATCH of namespaces matched
  with discofilter's own selector code. It never ends a watch when membership changes (which is one of
  the things that makes it naive), so it is a cost model, not a correct proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import orjson
import uvloop
from aiohttp import web

from discofilter.core.framing import LineFramer
from discofilter.core.routing import RouteKind, classify
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, SelectorSet, parse_selector

log = logging.getLogger("discofilter.bench.proxies")

_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
)  # fmt: skip
READ_BUFFER: Final = 256 * 1024
"""discofilter's upstream read size (WatchSettings.read_chunk_bytes), so the relays compare."""
_ALWAYS: Final = frozenset({"BOOKMARK", "ERROR"})


class Relay:
    """The pass-through proxy; ``Naive`` overrides the filtered reads."""

    def __init__(self, upstream: str, ca_file: str | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None
        self.ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, ssl=self.ssl),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=10),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def _open(
        self, request: web.Request, *, decompress: bool = False, json_only: bool = False
    ) -> aiohttp.ClientResponse:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if json_only:
            headers["Accept"] = "application/json"
        body = await request.read() if request.body_exists else None
        return await self.session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
            auto_decompress=decompress,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            read_bufsize=READ_BUFFER,
        )

    @staticmethod
    def _start(resp: aiohttp.ClientResponse, *, rewritten: bool) -> web.StreamResponse:
        out = web.StreamResponse(status=resp.status, reason=resp.reason)
        for k, v in resp.headers.items():
            if k.lower() not in _HOP_BY_HOP and not (rewritten and k.lower() == "content-encoding"):
                out.headers.add(k, v)
        return out

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = await self._open(request)
        try:
            out = self._start(resp, rewritten=False)
            await out.prepare(request)
            while chunk := await resp.content.readany():
                await out.write(chunk)
            await out.write_eof()
            return out
        finally:
            resp.release()


class Naive(Relay):
    def __init__(self, upstream: str, selectors: SelectorSet, ca_file: str | None = None) -> None:
        super().__init__(upstream, ca_file)
        self.selectors = selectors
        self.members: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._track(ready))
        await asyncio.wait_for(ready.wait(), 60)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await super().close()

    def _apply(self, etype: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        if etype != "DELETED" and self.selectors.matches(meta.get("labels") or {}):
            self.members.add(name)
        else:
            self.members.discard(name)

    async def _track(self, ready: asyncio.Event) -> None:
        assert self.session is not None
        url = f"{self.upstream}/api/v1/namespaces"
        while True:
            try:
                async with self.session.get(url, auto_decompress=True) as resp:
                    doc = orjson.loads(await resp.read())
                self.members.clear()
                for item in doc.get("items") or []:
                    self._apply("ADDED", item)
                ready.set()
                rv = doc["metadata"]["resourceVersion"]
                async with self.session.get(f"{url}?watch=1&resourceVersion={rv}") as resp:
                    framer = LineFramer()
                    while chunk := await resp.content.readany():
                        for line in framer.feed(chunk):
                            event = orjson.loads(line)
                            if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                                self._apply(event["type"], event["object"])
            except (aiohttp.ClientError, OSError, orjson.JSONDecodeError, KeyError) as exc:
                log.warning("namespace watch: %s", exc)
            await asyncio.sleep(1.0)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = classify(
            request.method, request.raw_path.partition("?")[0], request.query.getall("watch", [])
        )
        if route.kind is RouteKind.WATCH:
            return await self._watch(request)
        if route.kind is RouteKind.LIST:
            return await self._list(request)
        return await super().handle(request)

    def _keep(self, event: Mapping[str, Any]) -> bool:
        if event.get("type") in _ALWAYS:
            return True
        return (event["object"].get("metadata") or {}).get("namespace") in self.members

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        resp = await self._open(request, decompress=True, json_only=True)
        try:
            out = self._start(resp, rewritten=True)
            await out.prepare(request)
            framer = LineFramer()
            while chunk := await resp.content.readany():
                kept = [
                    orjson.dumps(event) + b"\n"
                    for event in map(orjson.loads, framer.feed(chunk))
                    if self._keep(event)
                ]
                if kept:
                    await out.write(b"".join(kept))
            await out.write_eof()
            return out
        finally:
            resp.release()

    async def _list(self, request: web.Request) -> web.StreamResponse:
        resp = await self._open(request, decompress=True, json_only=True)
        try:
            body = await resp.read()
        finally:
            resp.release()
        out = web.Response(status=resp.status, reason=resp.reason, content_type="application/json")
        if resp.status != 200:
            out.body = body
            return out
        doc = orjson.loads(body)
        doc["items"] = [i for i in doc.get("items") or [] if i["metadata"].get("namespace") in self.members]
        (doc.get("metadata") or {}).pop("remainingItemCount", None)
        out.body = orjson.dumps(doc) + b"\n"
        return out


async def _serve(relay: Relay) -> None:
    await relay.start()
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", relay.handle)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sys.stdout.write(orjson.dumps({"port": port}).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    eof = asyncio.create_task(reader.read())  # the orchestrator went away: stop too
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([eof, waiter], return_when=asyncio.FIRST_COMPLETED)
    eof.cancel()
    waiter.cancel()
    await runner.cleanup()
    await relay.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="discofilter.bench.proxies")
    parser.add_argument("kind", choices=["passthrough", "naive"])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--selector", action="append", default=[])
    parser.add_argument("--ca", help="CA file that signed an https:// upstream's certificate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    selectors = (
        SelectorSet(tuple(parse_selector(s) for s in args.selector))
        if args.selector
        else DEFAULT_MESH_SELECTORS
    )
    relay = (
        Relay(args.upstream, args.ca)
        if args.kind == "passthrough"
        else Naive(args.upstream, selectors, args.ca)
    )
    uvloop.run(_serve(relay))


if __name__ == "__main__":
    main()

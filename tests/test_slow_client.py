"""A watch client that stops reading: discofilter stops reading its upstream too (bounded memory), ends
that watch after ``client_write_timeout_seconds``, and every other client goes on unaffected."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from discofilter.settings import Settings, WatchSettings
from tests import fixtures
from tests.test_faults import scripted, start_like, wait_for
from tests.test_metrics import scrape, value

MESH_EVENTS = [
    line
    for line in fixtures.body("watch-pods.json").splitlines(keepends=True)
    if orjson.loads(line)["object"]["metadata"].get("namespace") == "mesh-a"
]
BATCH = b"".join(MESH_EVENTS) * 16  # about 1 MiB of real mesh events per upstream write


class Firehose:
    """An upstream whose watch answers never end: as fast as TCP lets it for ``?labelSelector=slow``,
    paced for the others. It counts what each watch managed to send."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.ended: dict[str, str] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        who = request.query.get("labelSelector", "")
        out = await start_like(request, "watch-pods.json")
        self.sent[who] = 0
        try:
            while True:
                if who == "slow":
                    await out.write(BATCH)  # awaits drain: TCP backpressure reaches here
                    self.sent[who] += len(BATCH)
                else:
                    await out.write(MESH_EVENTS[0])
                    self.sent[who] += len(MESH_EVENTS[0])
                    await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError) as exc:
            self.ended[who] = type(exc).__name__
            raise


async def stalled_watch(url: str, path: str) -> socket.socket:
    """Send a watch request from a socket with a tiny receive buffer, and never read from it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    await asyncio.get_running_loop().sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


async def test_a_stalled_client_is_bounded_then_dropped_and_others_go_on(tmp_path: Path) -> None:
    timeout = 1.0
    settings = replace(Settings(), watch=WatchSettings(client_write_timeout_seconds=timeout))
    hose = Firehose()
    async with scripted(tmp_path, hose.handle, settings=settings) as df:
        proxy = df.runtime.proxy
        async with (
            aiohttp.ClientSession() as s,
            s.get(df.url + "/api/v1/pods?watch=1&labelSelector=fast") as fast,
        ):
            await fast.content.readline()
            sock = await stalled_watch(df.url, "/api/v1/pods?watch=1&labelSelector=slow")
            try:
                await wait_for(lambda: "slow" in hose.sent)
                await wait_for(lambda: proxy.slow_clients_ended == 1, timeout=timeout + 10)
                sent_to_stalled = hose.sent["slow"]
                # discofilter stopped reading the stalled watch's upstream: what it took is bounded
                # by socket buffers plus one upstream read, not by how long the client stalled.
                await asyncio.sleep(0.5)
                assert hose.sent["slow"] == sent_to_stalled
                await wait_for(lambda: "slow" in hose.ended)  # ...and its upstream connection is closed
                # Measured here: ~7 MB, almost all of it kernel socket buffers (Linux autotunes a
                # loopback receive buffer up to tcp_rmem's max, 32 MiB here); discofilter itself holds
                # one upstream read (read_chunk_bytes) and aiohttp's 64 KiB write high-water mark.
                assert sent_to_stalled < 48 * 1024 * 1024, sent_to_stalled
                # The stalled client's connection was dropped (EOF after what the buffers held).
                received = 0
                with contextlib.suppress(ConnectionError):
                    while chunk := await asyncio.wait_for(
                        asyncio.get_running_loop().sock_recv(sock, 1 << 20), 5
                    ):
                        received += len(chunk)
                assert 0 < received < sent_to_stalled
            finally:
                sock.close()
            # The other client was served throughout and still is.
            target = hose.sent["fast"] + 20 * len(MESH_EVENTS[0])  # 20 events sent after the drop
            while hose.sent["fast"] < target:
                line = await asyncio.wait_for(fast.content.readline(), 2)
                assert orjson.loads(line)["object"]["metadata"]["namespace"] == "mesh-a"
            assert proxy.slow_clients_ended == 1
            samples = await scrape(df.metrics_url)
            assert value(samples, "discofilter_slow_clients_ended_total") == 1
        assert len(proxy.registry.watches) <= 1

"""Graceful shutdown of the real ``discofilter serve`` process: SIGTERM it while big LISTs are being
read and watches (JSON and protobuf) are open, and check that no client got a torn body.

What each client must see: a LIST body that is complete JSON with every mesh object; a watch stream
of whole events that ends cleanly (the terminating chunk arrives: it is the end of a watch, as at an
API server timeout, not a cut connection); and the listener closed to new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest
from aiohttp import web

from discofilter.simapi import SimSettings, build_app
from tests.core.test_protobuf import ref_event
from tests.harness import bound_ports, write_kubeconfig
from tests.test_e2e import pod, seeded
from tests.test_faults import CAPTURES, accept, scripted, start_like
from tests.test_proxy import pb_frames

ISTIOD_ACCEPT = "application/vnd.kubernetes.protobuf,application/json"
MESH = {"mesh-a", "mesh-b", "mesh-rev"}
EXTRA_PODS = 300  # ~6 MB of mesh pods: a LIST that a slow reader takes a second or more to read


@contextlib.asynccontextmanager
async def simapi() -> AsyncIterator[tuple[Any, str]]:
    store = seeded()
    template = next(p for p in store.objects("pods") if p["metadata"]["namespace"] == "mesh-a")
    for i in range(EXTRA_PODS):
        obj = copy.deepcopy(template)
        obj["metadata"] = {**obj["metadata"], "name": f"bulk-{i}", "resourceVersion": None, "uid": None}
        store.create("pods", {k: v for k, v in obj.items() if k != "status"})
    runner = web.AppRunner(build_app(store, SimSettings(bookmark_interval=0.3, bookmark_lead=0.1)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield store, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def low_nofile_limit() -> None:
    """Start the child with the usual soft open-files limit, whatever this process has."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


@contextlib.asynccontextmanager
async def serve_process(
    tmp_path: Path, sim_url: str, *extra: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, str]]:
    """The real ``discofilter serve``, ready; yields (process, proxy URL, health URL)."""
    kc = write_kubeconfig(tmp_path / "kc", sim_url)
    log = (tmp_path / "serve.log").open("wb")
    # Every port 0: the kernel picks, and the start-up line says which (no pick-then-bind race).
    proc = subprocess.Popen(
        [sys.executable, "-m", "discofilter", "serve", "--kubeconfig", str(kc), "--listen", "127.0.0.1:0",
         "--health-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": ""},
        preexec_fn=low_nofile_limit,
    )  # fmt: skip
    try:
        for _ in range(200):
            ports = bound_ports((tmp_path / "serve.log").read_text())
            if ports is not None:
                port, hport, _ = ports
                break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("discofilter serve never started listening")
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{hport}/readyz") as r:
                        if r.status == 200:
                            break
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("discofilter serve never became ready")
        yield proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{hport}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()


async def slow_list(s: aiohttp.ClientSession, url: str, started: asyncio.Event) -> bytes:
    """Read a LIST 64 KiB at a time with pauses, as a busy client would: it stays in flight."""
    async with s.get(url) as r:
        assert r.status == 200
        body = b""
        async for chunk in r.content.iter_chunked(64 * 1024):
            body += chunk
            started.set()
            await asyncio.sleep(0.01)
        return body


async def watch_to_end(
    s: aiohttp.ClientSession, url: str, headers: dict[str, str], opened: asyncio.Event
) -> list[tuple[str, str, str]]:
    """(type, namespace, name) of every event of a watch read to its end, which must be clean."""
    async with s.get(url, headers=headers) as r:
        assert r.status == 200
        opened.set()
        body = await r.read()  # raises ClientPayloadError if the stream is cut instead of ended
    if "protobuf" in r.headers["Content-Type"]:
        return [(t, ns, name) for t, _, ns, name, _ in map(ref_event, pb_frames(body))]
    events = [orjson.loads(line) for line in body.splitlines()]  # every line whole JSON
    return [
        (e["type"], e["object"]["metadata"].get("namespace", ""), e["object"]["metadata"].get("name", ""))
        for e in events
    ]


async def test_sigterm_ends_watches_cleanly_and_lets_lists_finish(tmp_path: Path) -> None:
    async with simapi() as (store, sim_url), serve_process(tmp_path, sim_url) as (proc, url, _):
        soft, hard = psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE)
        assert soft == hard  # started at 1024 at most, raised to the hard limit (2 fds per watch)
        truth = {p["metadata"]["name"] for p in store.objects("pods") if p["metadata"]["namespace"] in MESH}
        async with aiohttp.ClientSession() as s:
            lists_started = [asyncio.Event() for _ in range(3)]
            lists = [asyncio.create_task(slow_list(s, url + "/api/v1/pods", ev)) for ev in lists_started]
            watches_opened = [asyncio.Event() for _ in range(6)]
            watches = [
                asyncio.create_task(watch_to_end(s, f"{url}/api/v1/{res}?watch=1&resourceVersion=0", hdr, ev))
                for (res, hdr), ev in zip(
                    [
                        ("pods", {}),
                        ("pods", {"Accept": ISTIOD_ACCEPT}),
                        ("services", {}),
                        ("pods", {}),
                        ("namespaces", {}),  # pass-through: not filtered, ended all the same
                        ("configmaps", {"Accept": ISTIOD_ACCEPT}),
                    ],
                    watches_opened,
                    strict=True,
                )
            ]
            for ev in [*lists_started, *watches_opened]:
                await asyncio.wait_for(ev.wait(), 10)
            for i in range(5):  # events in flight on the watches
                store.create("pods", pod(f"late-{i}", "mesh-b"))
            await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            t0 = asyncio.get_running_loop().time()
            await asyncio.sleep(0.2)
            # The listener is closed: a new client goes elsewhere.
            host, port = url.removeprefix("http://").split(":")
            try:
                _, w = await asyncio.open_connection(host, int(port))
                w.close()
                refused = False
            except ConnectionRefusedError:
                refused = True
            assert refused
            bodies = await asyncio.wait_for(asyncio.gather(*lists), 20)
            streams = await asyncio.wait_for(asyncio.gather(*watches), 20)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 20) == 0
        # Nothing held the shutdown for the 10 s grace period: the slow LISTs took about a second.
        assert asyncio.get_running_loop().time() - t0 < 8
    for body in bodies:
        doc = orjson.loads(body)  # complete JSON
        assert {i["metadata"]["name"] for i in doc["items"]} >= truth
        assert {i["metadata"]["namespace"] for i in doc["items"]} <= MESH
    for events in streams[:4]:
        assert events
        assert all(t != "ERROR" and ns in {*MESH, ""} for t, ns, _ in events)
    assert {name for _, _, name in streams[4]} >= {"mesh-a", "plain-1"}  # pass-through: every namespace
    assert {name for _, _, name in streams[0]} >= {f"late-{i}" for i in range(5)}
    log = (tmp_path / "serve.log").read_text()
    assert "stopped accepting; ended 6 open watches" in log


async def test_a_list_beyond_the_grace_period_is_cut_never_completed_wrongly(tmp_path: Path) -> None:
    grace = "1.5"
    async with (
        simapi() as (_, sim_url),
        serve_process(tmp_path, sim_url, "--shutdown-grace-seconds", grace) as (proc, url, health),
    ):
        host, port = url.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        # A tiny receive buffer, so the 6 MB answer cannot hide in kernel buffers: the LIST stays in
        # flight in discofilter for as long as this client takes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await loop.sock_recv(sock, 4096)
        head, _, body = data.partition(b"\r\n\r\n")
        lengths = [
            int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")
        ]
        proc.send_signal(signal.SIGTERM)
        t0 = loop.time()
        exit_time: list[float] = []

        def wait_exit() -> int:
            code = proc.wait()
            exit_time.append(loop.time())
            return code

        exited = asyncio.create_task(asyncio.to_thread(wait_exit))
        await asyncio.sleep(0.2)
        # Draining is not ready: a Service stops sending clients to a listener that no longer accepts.
        async with aiohttp.ClientSession() as s, s.get(health + "/readyz") as r:
            assert (r.status, await r.text()) == (503, "shutting down\n")
        assert not exit_time  # ...asked while the LIST was still in flight
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 4096), 10):
                body += chunk
                if not exit_time:
                    await asyncio.sleep(0.01)  # ~400 KB/s at most: far beyond the grace period
        sock.close()
        assert await asyncio.wait_for(exited, 20) == 0
        # The grace period bounded the shutdown, not the slow client. (The client goes on reading
        # what the kernel's send buffer still held after the process left.)
        assert exit_time[0] - t0 < 5
    # Cut, and visibly so: fewer bytes than a Content-Length said, or (a JSON LIST streams as it is
    # filtered) a chunked body without its final chunk; then the connection ended.
    if lengths:
        assert len(body) < lengths[0]
    else:
        assert b"chunked" in head.lower() and not body.endswith(b"\r\n0\r\n\r\n")


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
@pytest.mark.parametrize("mid_event", [False, True], ids=["at-boundary", "mid-event"])
async def test_shutdown_ends_a_pass_through_watch_cleanly_only_at_an_event_boundary(
    tmp_path: Path, encoding: str, mid_event: bool
) -> None:
    """What drain() does to a pass-through watch (ConfigMaps here), in-process: a stream that has sent
    whole events ends cleanly; one caught in the middle of an event is cut, so the client knows."""
    capture, events, _ = CAPTURES[encoding]
    sent = b"".join(events[:3]) + (events[3][: len(events[3]) // 2] if mid_event else b"")
    hold = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        out = await start_like(request, capture)
        await out.write(sent)
        await hold.wait()
        return out

    async with scripted(tmp_path, handler) as df, aiohttp.ClientSession() as s:
        async with s.get(df.url + "/api/v1/configmaps?watch=1", headers=accept(encoding)) as r:
            got = b""
            while len(got) < len(sent):
                got += await asyncio.wait_for(r.content.readany(), 5)
            assert df.runtime.proxy.registry.end_all("shutdown") == 1
            if mid_event:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await asyncio.wait_for(r.read(), 5)
            else:
                assert got + await asyncio.wait_for(r.read(), 5) == sent
        hold.set()

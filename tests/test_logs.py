"""Logs of the real ``discofilter serve``, run as a subprocess against the simulated API server.

``--log-format=json`` must give one JSON object per stderr line with time, level, logger, message and
the call's structured extras; at the default level there is no line per request or per watch event.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from discofilter.simapi import SimSettings, Store, build_app
from tests import fixtures
from tests.harness import write_kubeconfig

Line = dict[str, Any]


@asynccontextmanager
async def simapi() -> AsyncIterator[tuple[Store, str]]:
    store = Store(seed=7)
    store.load_list("namespaces", orjson.loads(fixtures.body("list-namespaces.json")))
    store.load_list("pods", orjson.loads(fixtures.body("list-pods.json")))
    runner = web.AppRunner(build_app(store, SimSettings(bookmark_interval=0.2)), shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield store, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class Serve:
    """``python -m discofilter serve`` with every port picked by the kernel; stderr read line by line."""

    def __init__(self, kubeconfig: Path, *flags: str) -> None:
        self.argv = [
            sys.executable, "-m", "discofilter", "serve", "--kubeconfig", str(kubeconfig),
            "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            *flags,
        ]  # fmt: skip
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Serve:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOFILTER_")}
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, env=env
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        await self.drain()

    async def drain(self) -> None:
        """Wait for the process to end and keep the rest of its stderr."""
        assert self.proc is not None and self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), 30)
        self.lines += rest.decode().splitlines()
        await asyncio.wait_for(self.proc.wait(), 30)

    async def until(self, text: str) -> str:
        """Read stderr lines until one contains ``text``; return it."""
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stderr.readline(), 30)
            assert raw, f"discofilter exited before logging {text!r}: {self.lines}"
            self.lines.append(raw.decode().rstrip("\n"))
            if text in self.lines[-1]:
                return self.lines[-1]


async def get(url: str, **kw: Any) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as r:
        return r.status, await r.read()


def parse(line: str) -> Line:
    doc = json.loads(line)
    assert isinstance(doc, dict)
    assert {"time", "level", "logger", "message"} <= doc.keys(), doc
    when = datetime.datetime.fromisoformat(doc["time"].replace("Z", "+00:00"))
    assert when.utcoffset() == datetime.timedelta(0)
    assert doc["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    return doc


async def test_json_logs_of_the_real_command(tmp_path: Path) -> None:
    async with simapi() as (store, url):
        kc = write_kubeconfig(tmp_path / "kubeconfig", url)
        async with Serve(kc, "--log-format=json") as df:
            start = parse(await df.until("discofilter listening"))
            assert start["logger"] == "discofilter" and start["level"] == "INFO"
            proxy = f"http://{start['listen']}"
            assert start["upstream"] == url
            health, metrics = f"http://{start['health_listen']}", f"http://{start['metrics_listen']}"
            await asyncio.wait_for(until_ready(health), 30)  # the listeners open before membership syncs
            assert (await get(metrics + "/metrics"))[0] == 200
            assert (await get(proxy + "/api/v1/pods"))[0] == 200  # no line for it at info

            async with aiohttp.ClientSession() as s, s.get(proxy + "/api/v1/pods?watch=1") as watch:
                await asyncio.wait_for(_until_open(metrics), 30)
                store.patch_labels("namespaces", None, "plain-1", {"istio-injection": "enabled"})
                change = parse(await df.until("mesh membership changed"))
                ended = parse(await df.until("membership change ended"))
                await watch.read()
        assert df.proc is not None and df.proc.returncode == 0
    docs = [parse(line) for line in df.lines]  # every line, to the last, is one JSON object
    assert change["logger"] == "discofilter.tracker"
    assert change["changed"] == ["plain-1"]
    assert change["mesh_namespaces"] == len(fixtures.manifest()["mesh_namespaces"]) + 1
    assert isinstance(change["generation"], int)
    assert ended["watches_ended"] == {"pods": 1}
    assert not [d for d in docs if "/api/v1/pods" in d["message"]]
    assert any(d["message"].startswith("shutting down") for d in docs)


async def until_ready(health: str) -> None:
    while (await get(health + "/readyz"))[0] != 200:
        await asyncio.sleep(0.05)


async def _until_open(metrics: str) -> None:
    while b'discofilter_open_watches{resource="pods"} 1.0' not in (await get(metrics + "/metrics"))[1]:
        await asyncio.sleep(0.05)


async def test_debug_level_logs_one_line_per_request_and_text_is_the_default(tmp_path: Path) -> None:
    async with simapi() as (_, url):
        kc = write_kubeconfig(tmp_path / "kubeconfig", url)
        async with Serve(kc, "--log-level=debug") as df:
            start = await df.until("discofilter listening")
            proxy = "http://" + start.split("discofilter listening on http://")[1].split(" ")[0]
            health = "http://" + start.split("(health on ")[1].split(",")[0]
            await asyncio.wait_for(until_ready(health), 30)
            assert (await get(proxy + "/api/v1/pods"))[0] == 200
            line = await df.until("discofilter.requests")
    assert " DEBUG discofilter.requests: list pods /api/v1/pods 200 " in line
    assert not start.startswith("{")

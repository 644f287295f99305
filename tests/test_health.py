"""/healthz and /readyz: liveness is the event loop answering; readiness is membership synced and fresh.

The end-to-end case runs discofilter's real namespace watch (kubernetes-asyncio) against the simulated
API server, stops the server for longer than the stale bound and starts it again on the same port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from discofilter.core.membership import Membership
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS
from discofilter.settings import NamespaceWatchSettings, Settings
from discofilter.simapi import SimSettings, Store, build_app
from discofilter.tracker import OPEN, NamespaceTracker, RawDict
from tests import fixtures
from tests.fakes import FakeNamespaceSource
from tests.harness import running_discofilter, write_kubeconfig
from tests.test_metrics import scrape, value

STALE = 0.5
QUICK = NamespaceWatchSettings(
    backoff_initial_seconds=0.05, backoff_max_seconds=0.2, short_watch_seconds=0.0, max_stale_seconds=STALE
)


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        await r.read()
        return r.status


async def until(cond: Callable[[], object], timeout: float = 15.0) -> None:
    async def wait() -> None:
        while not await cond():  # type: ignore[misc]
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), timeout)


async def start_simapi(store: Store, port: int = 0) -> tuple[web.AppRunner, int]:
    app = build_app(store, SimSettings(bookmark_interval=0.1, bookmark_lead=0.05))
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, int(runner.addresses[0][1])


async def test_readyz_fails_past_the_stale_bound_and_recovers(tmp_path: Path) -> None:
    store = Store(seed=7)
    store.load_list("namespaces", orjson.loads(fixtures.body("list-namespaces.json")))
    sim, port = await start_simapi(store)
    kc = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    settings = replace(Settings(), namespaces=QUICK)
    try:
        async with running_discofilter(kc, settings=settings) as df:
            ready, healthz = df.health_url + "/readyz", df.health_url + "/healthz"
            assert await status_of(ready) == 200
            assert await status_of(healthz) == 200

            await sim.cleanup()  # the API server goes away: the namespace watch fails and keeps retrying
            await until(lambda: _is(ready, 503))
            assert await status_of(healthz) == 200  # alive all along: nothing to restart
            tracker = df.runtime.tracker
            assert tracker.failing_since is not None and tracker.last_contact is not None
            assert tracker.clock() - tracker.last_contact > STALE
            samples = await scrape(df.metrics_url)
            assert value(samples, "discofilter_ready") == 0
            assert value(samples, "discofilter_namespace_watch_failures_total") >= 1
            assert value(samples, "discofilter_namespace_last_event_age_seconds") > STALE

            sim, _ = await start_simapi(store, port)  # back, same address, same history
            await until(lambda: _is(ready, 200))
            assert await status_of(healthz) == 200
            assert value(await scrape(df.metrics_url), "discofilter_ready") == 1
    finally:
        await sim.cleanup()


async def _is(url: str, code: int) -> bool:
    return await status_of(url) == code


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_quiet_watch_stays_fresh_and_staleness_counts_from_the_last_contact() -> None:
    clock = Clock()
    src = FakeNamespaceSource()
    settings = replace(QUICK, max_stale_seconds=120.0)
    tracker = NamespaceTracker(Membership(DEFAULT_MESH_SELECTORS), src, settings, lambda _: None, clock=clock)
    assert not tracker.fresh()  # not synced yet
    task = asyncio.create_task(tracker.run())
    try:
        await asyncio.wait_for(tracker.ready.wait(), 5)
        clock.now += 3600  # an hour without a namespace event, the watch still open: fresh
        assert tracker.fresh()
        # A failure noticed now: membership was last known right an hour ago, past the bound.
        src.fail_next.append(ConnectionResetError("reset"))
        src.end_watches()
        await until(lambda: _async(tracker.failing_since is not None))
        assert not tracker.fresh()
        src.add("a", **{"istio-injection": "enabled"})  # the retry succeeds and delivers an event
        await until(lambda: _async(tracker.failing_since is None))
        assert tracker.fresh()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _async(value: bool) -> bool:
    return value


class AcceptingFake(FakeNamespaceSource):
    """The in-memory source, saying OPEN when a watch starts, as the kubernetes-asyncio source does."""

    async def watch(self, resource_version: str, timeout_seconds: int) -> AsyncIterator[tuple[str, RawDict]]:
        if self.fail_next:  # refused before any answer, like a failed connect
            raise self.fail_next.pop(0)
        yield OPEN, {}
        async for item in super().watch(resource_version, timeout_seconds):
            yield item


async def test_a_watch_that_goes_silent_needs_an_event_not_just_a_reconnect() -> None:
    src = AcceptingFake()
    settings = replace(QUICK, inactivity_seconds=0.2, max_stale_seconds=0.3)
    tracker = NamespaceTracker(Membership(DEFAULT_MESH_SELECTORS), src, settings, lambda _: None)
    task = asyncio.create_task(tracker.run())
    try:
        await asyncio.wait_for(tracker.ready.wait(), 5)
        # Nothing arrives: each watch is accepted, then stays silent past the inactivity bound.
        await until(lambda: _async(src.watches >= 3 and not tracker.fresh()))
        since, seen = tracker.failing_since, src.watches
        assert since is not None
        await until(lambda: _async(src.watches >= seen + 2))  # two more accepted, silent watches
        assert tracker.failing_since == since  # neither reconnect counted as recovery
        assert not tracker.fresh()
        src.add("a")  # the next event, on the watch open now
        await until(lambda: _async(tracker.fresh()))
        assert tracker.failing_since is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

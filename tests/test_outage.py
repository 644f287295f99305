"""An API server outage and restart, through a real discofilter, with real clients (kubernetes-asyncio
and kubectl) against simapi stopped and restarted on the same port.

The question of issue 16: after the outage, does a client's first relist already carry the membership
of that moment? A namespace joins the mesh while the API server is down (or right as it comes back);
discofilter's namespace watch is still in its retry backoff when the clients relist, so without a
confirmation step that relist was filtered under the pre-outage membership, and corrected only by a
410 that costs the client another round of client-go's backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio import watch

from discofilter.settings import NamespaceWatchSettings, ServerSettings, Settings
from discofilter.simapi import SimSettings, Store, build_app
from tests.harness import Running, free_port, running_discofilter, write_kubeconfig
from tests.test_e2e import ADMIN, OWN, api_client, kubectl, seeded

JOINER = "plain-1"
"""A namespace outside the mesh with pods and endpoints; it joins the mesh during the outage."""
BEFORE = {"mesh-a", "mesh-b", "mesh-rev"}
"""The mesh namespaces that have pods and endpoints before the outage."""
OUTAGE_SECONDS = 6.0
"""Longer than discofilter's namespace watch backoff used to allow: after 6 s of failures, a 30 s cap
with client-go's doubling put its next retry seconds after the API server was back."""


@dataclass
class Sim:
    store: Store
    port: int
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        sim = SimSettings(
            bookmark_interval=0.5, bookmark_lead=0.2, tokens={ADMIN: "admin", OWN: "discofilter"}
        )
        self.runner = web.AppRunner(
            build_app(self.store, sim), handler_cancellation=True, shutdown_timeout=0.2
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def join(self) -> None:
        self.store.patch_labels("namespaces", None, JOINER, {"istio-injection": "enabled"})


@contextlib.asynccontextmanager
async def outage_env(
    tmp_path: Path, settings: Settings | None = None
) -> AsyncIterator[tuple[Sim, Running, Path]]:
    sim = Sim(seeded(), free_port())
    await sim.start()
    own = write_kubeconfig(tmp_path / "own.kc", sim.url, token=OWN)
    try:
        async with running_discofilter(own, settings=settings or Settings()) as df:
            yield sim, df, write_kubeconfig(tmp_path / "client.kc", df.url, token=ADMIN)
    finally:
        await sim.stop()


@dataclass
class Reflector:
    """client-go's reflector, in kubernetes-asyncio: LIST, then WATCH from its resourceVersion with
    bookmarks (re-watching when a watch ends); on a 410 or any error, a short pause, then a relist.
    Records every LIST answered (when, and the namespaces it held) and every 410."""

    list_fn: Callable[..., Any]
    lists: list[tuple[float, set[str]]] = field(default_factory=list)
    expired: list[float] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            try:
                resp = await self.list_fn(resource_version="", _preload_content=False)
                if resp.status != 200:
                    raise aclient.ApiException(status=resp.status, reason=resp.reason)
                doc = await resp.json()
                self.lists.append((time.monotonic(), {o["metadata"]["namespace"] for o in doc["items"]}))
                rv = doc["metadata"]["resourceVersion"]
                while True:
                    w = watch.Watch()
                    try:
                        async for ev in w.stream(
                            self.list_fn, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=30
                        ):
                            rv = ev["raw_object"]["metadata"]["resourceVersion"]
                    finally:
                        await w.close()
            except aclient.ApiException as exc:
                if exc.status == 410:
                    self.expired.append(time.monotonic())
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(0.1)

    def first_list_after(self, t: float) -> tuple[float, set[str]] | None:
        return next(((at, ns) for at, ns in self.lists if at > t), None)


async def until(cond: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("when", ["while_down", "right_after"])
async def test_the_first_relist_after_an_outage_carries_the_new_membership(tmp_path: Path, when: str) -> None:
    async with outage_env(tmp_path) as (sim, df, client_kc):
        api = await api_client(client_kc)
        core = aclient.CoreV1Api(api)
        reflectors = {
            "pods": Reflector(core.list_pod_for_all_namespaces),
            "endpoints": Reflector(core.list_endpoints_for_all_namespaces),
        }
        tasks = [asyncio.create_task(r.run()) for r in reflectors.values()]
        try:
            await until(lambda: all(r.lists for r in reflectors.values()), 10)
            for r in reflectors.values():
                assert r.lists[0][1] == BEFORE
            await asyncio.sleep(0.5)  # watches open
            await sim.stop()
            down = time.monotonic()
            if when == "while_down":
                await asyncio.sleep(0.5)
                sim.join()
            await asyncio.sleep(OUTAGE_SECONDS - (time.monotonic() - down))
            await sim.start()
            up = time.monotonic()
            if when == "right_after":
                sim.join()  # before any request reaches the restarted API server
            await until(lambda: all(r.first_list_after(up) for r in reflectors.values()), 15)
            await asyncio.sleep(2.0)  # bookmarks every 0.5 s: a 410 would have come by now
            for resource, r in reflectors.items():
                first = r.first_list_after(up)
                assert first is not None
                assert first[1] == {*BEFORE, JOINER}, f"{resource}: the first relist after the outage"
                assert [at for at, _ in r.lists if at > up] == [first[0]], f"{resource}: relisted again"
                assert [at for at in r.expired if at > up] == [], f"{resource}: 410 after the outage"
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await api.close()
        metrics = await _metrics(df)
        confirmed = _value(metrics, 'discofilter_membership_wait_seconds_count{outcome="confirmed"}')
        assert confirmed >= 1  # the relists above waited for the confirming LIST
        assert _value(metrics, "discofilter_membership_unconfirmed_seconds_total") >= OUTAGE_SECONDS - 1
        assert _value(metrics, "discofilter_membership_confirmed") == 1


async def test_an_answer_from_the_api_server_wakes_the_namespace_watch(tmp_path: Path) -> None:
    # A backoff far longer than the outage: only the wake can bring membership back in time.
    slow = NamespaceWatchSettings(backoff_initial_seconds=20.0, backoff_max_seconds=30.0)
    async with outage_env(tmp_path, replace(Settings(), namespaces=slow)) as (sim, df, _client_kc):
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession(headers=auth) as s:
            await sim.stop()
            await until(lambda: df.runtime.tracker.reconnects > 0, 5)  # in its 20-40 s backoff now
            sim.join()
            await sim.start()
            up = time.monotonic()
            async with s.get(df.url + "/api/v1/nodes") as r:  # any request that passes through
                assert r.status == 200
            async with s.get(df.url + "/api/v1/pods") as r:
                assert r.status == 200, await r.text()
                doc = await r.json()
            served = time.monotonic() - up
        assert {o["metadata"]["namespace"] for o in doc["items"]} == {*BEFORE, JOINER}
        assert served < 3.0  # recovery plus a round trip or two; the backoff would have been 20 s


async def test_kubectl_after_an_outage_sees_the_namespace_that_joined(tmp_path: Path) -> None:
    # kubectl sends no token to an http:// server: the sidecar set-up, discofilter lends its own.
    sidecar = replace(Settings(), server=ServerSettings(upstream_credentials=True))
    async with outage_env(tmp_path, sidecar) as (sim, _df, client_kc):
        before = await asyncio.to_thread(kubectl, client_kc, "get", "pods", "-A", "-o", "name")
        assert len(before.split()) == 9
        await sim.stop()
        await asyncio.sleep(1.0)
        sim.join()
        await asyncio.sleep(OUTAGE_SECONDS - 1.0)
        await sim.start()
        out = await asyncio.to_thread(
            kubectl,
            client_kc,
            "get",
            "pods",
            "-A",
            "-o",
            "custom-columns=NS:.metadata.namespace",
            "--no-headers",
        )
        assert set(out.split()) == {*BEFORE, JOINER}


async def test_a_request_that_cannot_be_confirmed_in_time_is_refused(tmp_path: Path) -> None:
    quick = NamespaceWatchSettings(confirm_wait_seconds=0.5)
    async with outage_env(tmp_path, replace(Settings(), namespaces=quick)) as (sim, df, _client_kc):
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession(headers=auth) as s:
            await sim.stop()
            # Until the tracker has seen its watch end, a request is forwarded and gets the 502 of an
            # unreachable API server: an error, never a stale answer (nothing answered to filter).
            tracker = df.runtime.tracker
            await until(lambda: not tracker.confirmation.confirmed(tracker.clock()), 5)
            started = time.monotonic()
            async with s.get(df.url + "/api/v1/pods") as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                doc = await r.json()
            assert time.monotonic() - started >= 0.5  # it waited for its bound first
            assert (doc["kind"], doc["reason"]) == ("Status", "ServiceUnavailable")
            assert "no namespace LIST confirmed it within 0.5 s" in doc["message"]
        metrics = await _metrics(df)
        assert _value(metrics, "discofilter_membership_refusals_total") == 1
        assert _value(metrics, 'discofilter_membership_wait_seconds_count{outcome="refused"}') == 1
        assert _value(metrics, "discofilter_membership_confirmed") == 0


async def _metrics(df: Running) -> str:
    async with aiohttp.ClientSession() as s, s.get(df.metrics_url) as r:
        return await r.text()


def _value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert m is not None, series
    return float(m.group(1))

"""Server-side exclusion end to end: simapi (which evaluates metadata.namespace field selectors as
kube-apiserver does) -> a real discofilter -> kubernetes-asyncio and kubectl.

What must hold whatever the exclusion does: the client's events are exactly the generator's events of
mesh namespaces, in order, none lost or duplicated, across re-opens of the upstream watch, re-opens
that the API server answers with 410, and membership changes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio import config as aconfig
from kubernetes_asyncio import watch as awatch

from discofilter.core.exclusion import Bounds, excluded_by
from discofilter.exclusion import ServerSideExclusion
from discofilter.settings import ExclusionSettings, Settings
from discofilter.simapi import REQUEST_LOG, SimSettings, Store, build_app
from tests.harness import Running, running_discofilter, write_kubeconfig
from tests.informer import Informer, running

MESH = ("mesh-a", "mesh-b")
PLAIN = tuple(f"plain-{i}" for i in range(6))
INJECT = {"istio-injection": "enabled"}


def pod(name: str, ns: str, gen: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name, "gen": str(gen)}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


@dataclass
class Env:
    store: Store
    sim: web.Application
    df: Running
    kubeconfig: Path

    @property
    def sse(self) -> ServerSideExclusion:
        return self.df.runtime.proxy.exclusion

    def upstream_queries(self, path: str) -> list[str]:
        return [r.query for r in self.sim[REQUEST_LOG] if r.path == path]


def seeded() -> Store:
    store = Store(seed=3)
    for ns in MESH + PLAIN:
        labels = INJECT if ns in MESH else {}
        store.create(
            "namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}},
        )
        for i in range(3):
            store.create("pods", pod(f"p{i}", ns), namespace=ns)
    return store


@contextlib.asynccontextmanager
async def environment(
    tmp_path: Path, exclusion: ExclusionSettings | None = None, namespace_delay: float = 0.0
) -> AsyncIterator[Env]:
    store = seeded()
    delays = {"namespaces": namespace_delay} if namespace_delay else {}
    app = build_app(store, SimSettings(bookmark_interval=0.2, bookmark_lead=0.1, watch_delays=delays))
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sim_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    exclusion = exclusion or ExclusionSettings(
        reopen_min_interval_seconds=0.0, fresh_seconds=30.0, switch_grace_seconds=0.3, replan_seconds=3600
    )
    df_settings = replace(Settings(), exclusion=exclusion)
    try:
        kc = write_kubeconfig(tmp_path / "df.kubeconfig", sim_url)
        async with running_discofilter(kc, settings=df_settings) as df:
            yield Env(store, app, df, write_kubeconfig(tmp_path / "client.kubeconfig", df.url))
    finally:
        await runner.cleanup()


async def api(kubeconfig: Path) -> aclient.ApiClient:
    cfg = aclient.Configuration()
    await aconfig.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return aclient.ApiClient(cfg)


async def settle(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


# A schedule: churn a namespace (n pod updates), choose a new exclusion (K and weights), or make the
# API server forget its history (compact) so that the next re-open is answered 410.
STEP = st.one_of(
    st.tuples(st.just("churn"), st.sampled_from(MESH + PLAIN), st.integers(1, 4)),
    st.tuples(st.just("replan"), st.integers(1, len(PLAIN)), st.permutations(PLAIN)),
    st.tuples(st.just("compact"), st.sampled_from(PLAIN), st.just(0)),
    # A namespace created (in the mesh or not) with a pod in it: with the namespace watch held back,
    # the pod reaches discofilter first and its stream waits for a lookup (core.lifecycle), which a
    # re-open must not cut across.
    st.tuples(st.just("newns"), st.booleans(), st.just(0)),
)


async def run_schedule(
    tmp_path: Path, schedule: list[tuple[Any, ...]], namespace_delay: float = 0.0
) -> tuple[Env, list[tuple[str, ...]], list[tuple[str, ...]]]:
    """Watch pods through discofilter while the schedule runs; return the client's event log and the
    generator's (mesh namespaces only), both as (type, namespace, name, resourceVersion)."""
    async with (
        environment(tmp_path, namespace_delay=namespace_delay) as env,
        await api(env.kubeconfig) as c,
    ):
        v1: Any = aclient.CoreV1Api(c)  # raw answers with _preload_content=False
        listed = await v1.list_pod_for_all_namespaces(_preload_content=False)
        start_rv = (await listed.json())["metadata"]["resourceVersion"]
        got: list[tuple[str, ...]] = []
        bookmarks = 0

        async def watch() -> None:
            nonlocal bookmarks
            w = awatch.Watch()
            async for ev in w.stream(
                v1.list_pod_for_all_namespaces,
                resource_version=start_rv,
                allow_watch_bookmarks=True,
                timeout_seconds=120,
            ):
                meta = ev["raw_object"]["metadata"]
                if ev["type"] == "BOOKMARK":
                    bookmarks += 1
                    continue
                got.append((ev["type"], meta["namespace"], meta["name"], meta["resourceVersion"]))

        task = asyncio.create_task(watch())
        # A first event, so the watch is open and has a resume point (a watch from the head gets
        # no bookmark until its resource changes: watch-pods-no-bookmark-at-head.json).
        first = env.store.patch("pods", "mesh-a", "p0", {"metadata": {"labels": {"gen": "first"}}})
        want: list[tuple[str, ...]] = [("MODIFIED", "mesh-a", "p0", first["metadata"]["resourceVersion"])]
        await settle(lambda: len(got) == 1)
        gen = 0
        for kind, a, b in schedule:
            if kind == "churn":
                for i in range(b):
                    gen += 1
                    obj = env.store.patch("pods", a, f"p{i % 3}", {"metadata": {"labels": {"gen": str(gen)}}})
                    if a in MESH:
                        want.append(("MODIFIED", a, f"p{i % 3}", obj["metadata"]["resourceVersion"]))
            elif kind == "newns":
                gen += 1
                name = f"new-{gen}"
                labels = INJECT if a else {}
                meta = {"name": name, "labels": labels}
                env.store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
                obj = env.store.create("pods", pod("n0", name), namespace=name)
                if a:
                    want.append(("ADDED", name, "n0", obj["metadata"]["resourceVersion"]))
            elif kind == "replan":
                sse = env.sse
                sse.planner.bounds = Bounds(a, 6000)
                sse.planner.tally = {ns.encode(): 1000 * (w + 1) for w, ns in enumerate(b)}
                sse.replan()
            else:
                # An event the watch never sees when ``a`` is excluded, then history forgotten: a
                # re-open from the watch's last resourceVersion is now too old.
                gen += 1
                env.store.patch("pods", a, "p0", {"metadata": {"labels": {"gen": str(gen)}}})
                env.store.compact()
            await asyncio.sleep(0.05)
        last = env.store.create("pods", pod("last", "mesh-a"), namespace="mesh-a")
        want.append(("ADDED", "mesh-a", "last", last["metadata"]["resourceVersion"]))
        await settle(lambda: len(got) >= len(want) or (got and got[-1][2] == "last"))
        await asyncio.sleep(0.2)  # anything duplicated would arrive now
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return env, got, want


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=st.lists(STEP, min_size=3, max_size=10))
def test_a_watch_stays_exact_while_its_exclusion_changes(
    tmp_path: Path, schedule: list[tuple[Any, ...]]
) -> None:
    _env, got, want = asyncio.run(run_schedule(tmp_path, schedule, namespace_delay=0.2))
    assert got == want


def test_new_namespaces_looked_up_while_the_exclusion_changes_lose_nothing(tmp_path: Path) -> None:
    """Issue 14 meets issue 12: a pod of a namespace discofilter does not know yet holds its stream for a
    lookup, and a re-open for a new exclusion must neither cut across that nor lose the held events."""
    schedule = [
        ("newns", True, 0),
        ("replan", 2, PLAIN),
        ("newns", False, 0),
        ("churn", "mesh-a", 2),
        ("replan", 4, PLAIN),
        ("newns", True, 0),
        ("churn", "plain-3", 2),
        ("newns", True, 0),
        ("replan", 1, PLAIN),
        ("churn", "mesh-b", 1),
    ]
    env, got, want = asyncio.run(run_schedule(tmp_path, schedule, namespace_delay=0.3))
    assert got == want
    assert env.df.runtime.proxy.resolver.found >= 3  # the pods came first: their streams did wait
    assert env.sse.reopens["switched"] >= 1


def test_reopens_switch_and_a_410_on_reopen_keeps_the_old_stream(tmp_path: Path) -> None:
    """The schedule test above must not pass vacuously: this fixed schedule re-opens, and is once
    answered 410 (the old stream is kept, nothing is lost)."""
    schedule = [
        ("churn", "mesh-a", 2),
        ("replan", 2, PLAIN),
        ("churn", "plain-5", 2),
        ("churn", "mesh-b", 2),
        ("replan", 4, PLAIN),
        ("churn", "mesh-a", 3),
    ]
    env, got, want = asyncio.run(run_schedule(tmp_path, schedule))
    assert got == want
    assert env.sse.reopens["switched"] >= 1
    queries = env.upstream_queries("/api/v1/pods")
    watches = [q for q in queries if "watch=" in q]
    assert len(watches) >= 2
    assert all("allowwatchbookmarks=true" in q.lower() for q in watches)


def test_a_reopen_answered_410_loses_nothing(tmp_path: Path) -> None:
    schedule = [
        ("replan", 3, PLAIN[::-1]),  # excludes plain-0..2 (highest weights last in the permutation)
        ("churn", "mesh-a", 2),
        ("compact", "plain-0", 0),  # an excluded namespace moves on; its history is forgotten
        ("replan", 6, PLAIN),
        ("churn", "mesh-b", 2),
    ]
    env, got, want = asyncio.run(run_schedule(tmp_path, schedule))
    assert got == want
    assert env.sse.reopens["expired"] >= 1


async def test_an_informer_stays_exact_through_joins_leaves_and_exclusion_changes(tmp_path: Path) -> None:
    async with environment(tmp_path) as env, await api(env.kubeconfig) as c:
        v1: Any = aclient.CoreV1Api(c)  # raw answers with _preload_content=False
        inf = Informer(v1.list_pod_for_all_namespaces)

        def truth() -> set[tuple[str, str, str]]:
            mesh = {
                n["metadata"]["name"]
                for n in env.store.objects("namespaces")
                if n["metadata"].get("labels", {}).get("istio-injection") == "enabled"
            }
            return {
                (o["metadata"]["namespace"], o["metadata"]["name"], o["metadata"]["resourceVersion"])
                for o in env.store.objects("pods")
                if o["metadata"]["namespace"] in mesh
            }

        async with running([inf]):
            await settle(lambda: inf.view() == truth())
            # plain-0 is excluded (all six non-mesh namespaces fit in K), then joins the mesh.
            assert "plain-0" in env.sse.current()
            for step in range(3):
                env.store.patch_labels("namespaces", None, "plain-0", INJECT)
                await settle(lambda: "plain-0" not in env.sse.current())
                await settle(lambda: inf.view() == truth())
                assert {ns for ns, _, _ in inf.view()} >= {"plain-0"}
                env.store.patch("pods", "plain-0", "p1", {"metadata": {"labels": {"gen": f"j{step}"}}})
                await settle(lambda: inf.view() == truth())
                env.store.patch_labels("namespaces", None, "plain-0", {"istio-injection": None})
                await settle(lambda: inf.view() == truth())
                env.store.patch("pods", "plain-0", "p2", {"metadata": {"labels": {"gen": f"l{step}"}}})
                env.store.patch("pods", "mesh-a", "p2", {"metadata": {"labels": {"gen": f"m{step}"}}})
                await settle(lambda: inf.view() == truth())
        # The relists after each join asked the API server without the joined namespace excluded.
        lists = [q for q in env.upstream_queries("/api/v1/pods") if "watch=" not in q]
        assert lists and all("mesh-a" not in excluded_by(_field(q)) for q in lists)


def _field(query: str) -> str:
    from urllib.parse import parse_qs

    return parse_qs(query).get("fieldSelector", [""])[0]


async def test_lists_and_watches_carry_the_exclusion_and_clients_see_the_same(tmp_path: Path) -> None:
    async with environment(tmp_path) as env, await api(env.kubeconfig) as c:
        v1: Any = aclient.CoreV1Api(c)  # raw answers with _preload_content=False
        resp = await v1.list_pod_for_all_namespaces(
            field_selector="status.phase!=Failed", _preload_content=False
        )
        doc = await resp.json()
        assert {i["metadata"]["namespace"] for i in doc["items"]} == set(MESH)
        sent = _field(env.upstream_queries("/api/v1/pods")[-1])
        assert sent.startswith("status.phase!=Failed,")
        assert excluded_by(sent) == set(PLAIN)
        # Paginated: every page carries the same exclusion.
        pages = 0
        token = None
        names: list[str] = []
        while True:
            page = await v1.list_pod_for_all_namespaces(limit=2, _continue=token, _preload_content=False)
            body = await page.json()
            names += [i["metadata"]["name"] for i in body["items"]]
            pages += 1
            token = body["metadata"].get("continue")
            if not token:
                break
        assert len(names) == 3 * len(MESH) and pages >= 3
        page_queries = [q for q in env.upstream_queries("/api/v1/pods") if "limit=2" in q]
        assert len({frozenset(excluded_by(_field(q))) for q in page_queries}) == 1


async def test_a_selector_the_api_server_refuses_falls_back_to_client_side(tmp_path: Path) -> None:
    async with environment(tmp_path) as env, await api(env.kubeconfig) as c:
        env.store.unsupported_field_labels = frozenset({"metadata.namespace"})
        v1: Any = aclient.CoreV1Api(c)  # raw answers with _preload_content=False
        for _ in range(2):
            resp = await v1.list_pod_for_all_namespaces(_preload_content=False)
            doc = await resp.json()
            assert resp.status == 200
            assert {i["metadata"]["namespace"] for i in doc["items"]} == set(MESH)
        svc = await v1.list_service_for_all_namespaces(_preload_content=False)
        assert svc.status == 200
        assert env.sse.unsupported == {"pods", "services"}
        assert env.sse.fallbacks == {"pods": 1, "services": 1}  # then not asked again
        # A watch too, and the client's own bad selector still gets the API server's own 400.
        with pytest.raises(aclient.ApiException) as err:
            await v1.list_pod_for_all_namespaces(field_selector="spec.foo=x")
        assert err.value.status == 400 and "field label not supported: spec.foo" in str(err.value.body)
        metrics = await (await c.rest_client.pool_manager.get(env.df.metrics_url)).text()
        assert 'discofilter_exclusion_fallbacks_total{resource="pods"} 1.0' in metrics


async def test_a_watch_falls_back_on_400(tmp_path: Path) -> None:
    async with environment(tmp_path) as env, await api(env.kubeconfig) as c:
        env.store.unsupported_field_labels = frozenset({"metadata.namespace"})
        v1: Any = aclient.CoreV1Api(c)  # raw answers with _preload_content=False
        listed = await v1.list_pod_for_all_namespaces(_preload_content=False)
        rv = (await listed.json())["metadata"]["resourceVersion"]
        env.store.patch("pods", "mesh-b", "p1", {"metadata": {"labels": {"gen": "w"}}})
        env.store.patch("pods", "plain-1", "p1", {"metadata": {"labels": {"gen": "w"}}})
        w = awatch.Watch()
        seen = []
        async for ev in w.stream(v1.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=1):
            seen.append(ev["raw_object"]["metadata"]["namespace"])
        assert seen and set(seen) <= set(MESH)
        assert env.sse.unsupported == {"pods"}


async def test_kubectl_get_watch_through_exclusion(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        proc = await asyncio.create_subprocess_exec(
            "kubectl", "--kubeconfig", str(env.kubeconfig), "get", "pods", "-A", "-w", "--no-headers",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        lines: list[str] = []

        async def read() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                lines.append(line.decode())

        reader = asyncio.create_task(read())
        try:
            await settle(lambda: len(lines) >= 6)
            env.sse.planner.bounds = Bounds(2, 6000)
            env.sse.replan()
            env.store.patch("pods", "plain-3", "p0", {"metadata": {"labels": {"gen": "x"}}})
            env.store.create("pods", pod("new", "mesh-b"), namespace="mesh-b")
            await settle(lambda: any(" new " in f" {ln} " for ln in lines))
        finally:
            proc.terminate()
            await proc.wait()
            reader.cancel()
        assert {ln.split()[0] for ln in lines} == set(MESH)

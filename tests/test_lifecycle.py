"""Mesh namespaces created and deleted under churn cost real clients no relist (core.lifecycle).

Real clients (kubernetes-asyncio informers of the four kinds, ``kubectl get -w``) through discofilter
against simapi, whose watches are skewed on purpose (``SimSettings.watch_delays``):

- ``namespace_late``: the namespace watch lags, so a new namespace's pods reach the pods watch before
  the namespace reaches discofilter's namespace watch;
- ``contents_late``: the content kinds lag, so a namespace's DELETED reaches discofilter before its
  pods' DELETED events reach the pods watch.

The clients' caches must equal the truth afterwards, with no LIST beyond the first; a label flip of an
existing namespace still costs exactly one relist per watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from discofilter.settings import ServerSettings, Settings
from discofilter.simapi import REQUEST_LOG, SimSettings, build_app
from tests.harness import running_discofilter, write_kubeconfig
from tests.informer import istiod_informers, running
from tests.test_e2e import ADMIN, OWN, Env, api_client, converge, pod, seeded

MESH = {"istio-injection": "enabled"}
CONTENT = ("pods", "services", "endpoints", "endpointslices")
SKEWS: Mapping[str, Mapping[str, float]] = {
    "namespace_late": {"namespaces": 0.4},
    "contents_late": dict.fromkeys(CONTENT, 0.4),
}


@contextlib.asynccontextmanager
async def skewed(
    tmp_path: Path, delays: Mapping[str, float], df_settings: Settings | None = None
) -> AsyncIterator[Env]:
    store = seeded()
    settings = SimSettings(
        bookmark_interval=0.5,
        bookmark_lead=0.2,
        tokens={ADMIN: "admin", OWN: "discofilter"},
        watch_delays=dict(delays),
    )
    app = build_app(store, settings)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sim_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    own_kc = write_kubeconfig(tmp_path / "discofilter.kubeconfig", sim_url, token=OWN)
    try:
        async with running_discofilter(own_kc, settings=df_settings or Settings()) as df:
            client_kc = write_kubeconfig(tmp_path / "client.kubeconfig", df.url, token=ADMIN)
            yield Env(store, sim_url, app, df, client_kc)
    finally:
        await runner.cleanup()


def service(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"port": 80}]},
    }


def populate(env: Env, ns: str, *, labels: Mapping[str, str] = MESH) -> None:
    """A namespace labelled from birth, with objects made in the same breath (a CI run, a preview)."""
    env.store.create("namespaces", {"metadata": {"name": ns, "labels": dict(labels)}})
    for i in range(3):
        env.store.create("pods", pod(f"p{i}", ns))
    env.store.create("services", service("svc", ns))


async def metric(env: Env, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(env.df.metrics_url) as resp:
        text = await resp.text()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}(?:_total)?" + (rf"\{{{re.escape(want)}\}}" if want else "") + r" (\S+)$"
    m = re.search(pattern, text, re.MULTILINE)
    assert m is not None, f"{name} {labels} not in /metrics"
    return float(m.group(1))


@pytest.mark.parametrize("skew", sorted(SKEWS))
async def test_informers_stay_exact_with_no_relist_through_namespace_lifecycles(
    tmp_path: Path, skew: str
) -> None:
    async with skewed(tmp_path, SKEWS[skew]) as env:
        api = await api_client(env.client_kubeconfig)
        informers = istiod_informers(api)
        try:
            async with running(list(informers.values())):
                await converge(env, informers)
                for round_ in range(3):
                    # Churn in existing namespaces, in and out of the mesh, while namespaces come and go.
                    for ns in ("mesh-a", "plain-1"):
                        env.store.create("pods", pod(f"churn-{round_}", ns))
                    populate(env, f"ci-{round_}")
                    populate(env, f"plain-ci-{round_}", labels={"team": "x"})
                    env.store.create("pods", pod(f"late-{round_}", "mesh-b"))
                    if round_:
                        # The previous round's namespaces go, objects and all (the namespace controller).
                        env.store.delete("namespaces", None, f"ci-{round_ - 1}")
                        env.store.delete("namespaces", None, f"plain-ci-{round_ - 1}")
                    await asyncio.sleep(0.1)
                # A namespace re-created under the same name, in the mesh, right after its deletion.
                env.store.delete("namespaces", None, "ci-2")
                populate(env, "ci-2")
                await converge(env, informers, timeout=15)
                assert {"ci-2"} <= {ns for ns, _, _ in informers["pods"].view()}
                assert not {ns for ns, _, _ in informers["pods"].view()} & {"ci-0", "ci-1", "plain-ci-0"}
                for res, inf in informers.items():
                    assert (inf.lists, inf.expired) == (1, 0), res
                assert await metric(env, "discofilter_relists_caused", reason="membership_change") == 0
                assert await metric(env, "discofilter_relists_caused", reason="undecidable") == 0
                for _ in range(100):  # the lagging namespace watch shows the last creation in time
                    if await metric(env, "discofilter_namespace_lifecycle", change="created") >= 7:
                        break
                    await asyncio.sleep(0.05)
                assert await metric(env, "discofilter_namespace_lifecycle", change="created") == 7
                assert await metric(env, "discofilter_namespace_lifecycle", change="deleted") == 5
                if skew == "namespace_late":
                    assert await metric(env, "discofilter_namespaces_resolved", result="found") >= 1
                # A label flip of a namespace that exists keeps today's price: one relist per watch.
                env.store.patch_labels("namespaces", None, "plain-1", MESH)
                await converge(env, informers, timeout=15)
                for res, inf in informers.items():
                    assert (inf.lists, inf.expired) == (2, 1), res
        finally:
            await api.close()


async def test_kubectl_get_watch_sees_a_new_namespace_come_and_go_without_relisting(tmp_path: Path) -> None:
    # kubectl sends no credentials over plain HTTP: discofilter lends its own on loopback (the sidecar).
    sidecar = Settings(server=ServerSettings(upstream_credentials=True))
    async with skewed(tmp_path, {"namespaces": 0.4}, sidecar) as env:
        proc = await asyncio.create_subprocess_exec(
            "kubectl",
            "--kubeconfig",
            str(env.client_kubeconfig),
            "get",
            "pods",
            "-A",
            "-w",
            "--output-watch-events",
            "-o",
            "jsonpath={.type} {.object.metadata.namespace}/{.object.metadata.name}{'\\n'}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        lines: list[str] = []

        async def until(line: str) -> None:
            assert proc.stdout is not None
            while line not in lines:
                raw = await asyncio.wait_for(proc.stdout.readline(), 15)
                if not raw:
                    assert proc.stderr is not None
                    raise AssertionError(f"kubectl get -w ended: {(await proc.stderr.read()).decode()}")
                lines.append(raw.decode().strip())

        try:
            await asyncio.sleep(1.5)  # the initial LIST and the watch are open
            populate(env, "preview")
            await until("ADDED preview/p2")
            env.store.delete("namespaces", None, "preview")
            await until("DELETED preview/p2")
            env.store.create("pods", pod("after", "plain-2"))
            env.store.create("pods", pod("after", "mesh-rev"))
            await until("ADDED mesh-rev/after")
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        assert {f"ADDED preview/p{i}" for i in range(3)} <= set(lines)
        assert {f"DELETED preview/p{i}" for i in range(3)} <= set(lines)
        assert not [line for line in lines if "plain-2/" in line]
        pod_lists = [r for r in env.sim_app[REQUEST_LOG] if r.path == "/api/v1/pods"]
        watches = [r for r in pod_lists if "watch=" in r.query]
        assert len(pod_lists) - len(watches) == 1  # kubectl listed once and never again

"""istiod's own namespace is kept, and gateway namespaces that are not are named at start-up.

A real ``discofilter serve`` (subprocess) runs against simapi with ``POD_NAMESPACE=istio-system`` in its
environment, as the manifests' downward API gives it; kubernetes-asyncio and kubectl connect through it.
istio-system carries no mesh label, as in a stock install.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
from kubernetes_asyncio.client import CoreV1Api

from discofilter.core.membership import Membership
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, SelectorSet, parse_selector
from discofilter.gateways import unkept_gateways
from discofilter.simapi import SimSettings, Store
from tests.deploy.kube import kubectl
from tests.harness import bound_ports, serving_simapi, write_kubeconfig
from tests.test_e2e import ADMIN, OWN, api_client, pod

MESH = {"istio-injection": "enabled"}
UNKEPT = "runs Istio gateway pods but is not kept"


def gateway(name: str, ns: str, **labels: str) -> dict[str, Any]:
    p = pod(name, ns)
    p["metadata"]["labels"] = labels
    return p


def store() -> Store:
    s = Store(seed=11)
    for name, labels in (("istio-system", {}), ("mesh-a", MESH), ("edge", {}), ("plain", {})):
        s.create("namespaces", {"metadata": {"name": name, "labels": labels}})
    # The chart's ingress gateway in istiod's namespace, a Gateway API gateway in a mesh namespace, the
    # chart's egress gateway in a namespace nobody selected, and an ordinary pod.
    s.create("pods", gateway("istio-ingressgateway-1", "istio-system", istio="ingressgateway"))
    s.create("pods", gateway("gw-a-1", "mesh-a", **{"istio.io/gateway-name": "gw-a"}))
    s.create("pods", gateway("istio-egressgateway-1", "edge", istio="egressgateway"))
    s.create("pods", pod("web-1", "plain"))
    for ns in ("istio-system", "mesh-a", "edge", "plain"):
        s.create("services", {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}}, namespace=ns)
    return s


def simapi(s: Store, **settings: Any) -> AbstractAsyncContextManager[str]:
    sim = SimSettings(bookmark_interval=0.5, tokens={ADMIN: "admin", OWN: "discofilter"}, **settings)
    return serving_simapi(s, sim)


class Serve:
    """``discofilter serve`` lending its own token to loopback clients, with the pod's environment."""

    def __init__(self, kubeconfig: Path, log: Path, *flags: str, pod_namespace: str | None) -> None:
        self.argv = [
            sys.executable, "-m", "discofilter", "serve", "--kubeconfig", str(kubeconfig),
            "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--upstream-credentials", *flags,
        ]  # fmt: skip
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("DISCOFILTER_") and k != "POD_NAMESPACE"
        }
        if pod_namespace is not None:
            env["POD_NAMESPACE"] = pod_namespace
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    def text(self) -> str:
        return self.log.read_text()

    async def until(self, text: str, timeout: float = 30.0) -> None:
        for _ in range(int(timeout * 10)):
            assert self.proc is not None
            if text in self.text():
                return
            assert self.proc.returncode is None, f"discofilter exited: {self.text()}"
            await asyncio.sleep(0.1)
        raise AssertionError(f"never logged {text!r}: {self.text()}")

    async def __aenter__(self) -> Serve:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(*self.argv, stdout=out, stderr=out, env=self.env)
        await self.until("discofilter listening")
        ports = bound_ports(self.text())
        assert ports is not None
        self.url = f"http://127.0.0.1:{ports[0]}"
        # The gateway check runs once membership has synced; its first line says what is kept by name.
        await self.until("kept")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 30) == 0, self.text()


async def services_seen(kubeconfig: Path) -> set[str]:
    template = "{range .items[*]}{.metadata.namespace}{'\\n'}{end}"
    proc = await asyncio.create_subprocess_exec(
        kubectl(), "--kubeconfig", str(kubeconfig), "get", "services", "-A", "-o", f"jsonpath={template}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return set(out.decode().split())


async def pods_seen(kubeconfig: Path) -> tuple[set[str], str]:
    """Namespaces of the pods kubernetes-asyncio lists through discofilter, and the list's RV."""
    api = await api_client(kubeconfig)
    try:
        pods = await CoreV1Api(api).list_pod_for_all_namespaces()
        return {p.metadata.namespace for p in pods.items}, pods.metadata.resource_version
    finally:
        await api.close()


async def watched_pods(kubeconfig: Path, rv: str, s: Store, want: str) -> list[str]:
    """Watch pods from ``rv`` through discofilter, create one pod in plain and one in istio-system, and
    return the "namespace/name" of each ADDED event until the istio-system one arrives."""
    api = await api_client(kubeconfig)
    seen: list[str] = []
    try:
        resp = cast(
            aiohttp.ClientResponse,
            await CoreV1Api(api).list_pod_for_all_namespaces(
                watch=True, resource_version=rv, timeout_seconds=20, _preload_content=False
            ),
        )
        async with resp:
            s.create("pods", pod("late", "plain"))
            s.create("pods", pod("late", "istio-system"))
            async with asyncio.timeout(20):
                async for line in resp.content:
                    event = orjson.loads(line)
                    meta = event["object"].get("metadata") or {}
                    if event["type"] == "ADDED":
                        seen.append(f"{meta['namespace']}/{meta['name']}")
                    if seen and seen[-1] == want:
                        break
    finally:
        await api.close()
    return seen


async def test_istiod_namespace_is_kept_from_pod_namespace(tmp_path: Path) -> None:
    s = store()
    async with simapi(s) as url:
        own = write_kubeconfig(tmp_path / "own", url, token=OWN)
        async with Serve(own, tmp_path / "df.log", pod_namespace="istio-system") as df:
            client = write_kubeconfig(tmp_path / "client", df.url)
            assert await services_seen(client) == {"istio-system", "mesh-a"}
            namespaces, rv = await pods_seen(client)
            assert namespaces == {"istio-system", "mesh-a"}
            assert await watched_pods(client, rv, s, "istio-system/late") == ["istio-system/late"]
            await df.until(UNKEPT)
        log = df.text()
    assert "namespace istio-system (istiod's) is kept whatever its labels" in log
    assert f"namespace edge {UNKEPT}" in log
    # Kept ones, by label (mesh-a) or by name (istio-system), are not named.
    assert log.count(UNKEPT) == 1, log


async def test_turned_off_istiod_namespace_is_filtered_and_named(tmp_path: Path) -> None:
    s = store()
    async with simapi(s) as url:
        own = write_kubeconfig(tmp_path / "own", url, token=OWN)
        async with Serve(own, tmp_path / "df.log", "--istiod-namespace=", pod_namespace="istio-system") as df:
            client = write_kubeconfig(tmp_path / "client", df.url)
            assert await services_seen(client) == {"mesh-a"}
            assert (await pods_seen(client))[0] == {"mesh-a"}
            await df.until(f"namespace istio-system {UNKEPT}")
        log = df.text()
    assert "no namespace is kept by name" in log
    assert f"namespace edge {UNKEPT}" in log
    assert "namespace mesh-a" not in log


async def test_a_forbidden_pod_list_is_one_warning_and_not_fatal(tmp_path: Path) -> None:
    s = store()
    async with simapi(s, forbidden_users=frozenset({"discofilter"})) as url:
        own = write_kubeconfig(tmp_path / "own", url, token=OWN)
        async with Serve(own, tmp_path / "df.log", pod_namespace="istio-system") as df:
            await df.until("cannot list gateway pods")
            # Still serving: the namespace watch is what it needs, and it is allowed.
            client = write_kubeconfig(tmp_path / "client", df.url)
            api = await api_client(client)
            try:
                names = {n.metadata.name for n in (await CoreV1Api(api).list_namespace()).items}
            finally:
                await api.close()
            assert "istio-system" in names
        log = df.text()
    lines = [line for line in log.splitlines() if "cannot list gateway pods" in line]
    assert len(lines) == 1 and "403" in lines[0], log
    assert UNKEPT not in log


async def test_a_bad_istiod_namespace_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discofilter", "serve", "--kubeconfig", str(tmp_path / "none"),
        "--istiod-namespace", "Istio_System",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().splitlines() == [
        "discofilter: error: --istiod-namespace 'Istio_System' is not a namespace name (a DNS-1123 label)"
    ]


def test_gateway_lines_name_unkept_namespaces_and_those_istiod_itself_ignores() -> None:
    m = Membership(DEFAULT_MESH_SELECTORS, always_kept="istio-system")
    m.replace(
        [
            {"metadata": {"name": "istio-system"}},
            {"metadata": {"name": "mesh-a", "labels": {**MESH, "team": "a"}}},
            {"metadata": {"name": "mesh-b", "labels": MESH}},
            {"metadata": {"name": "edge"}},
        ],
        "5",
    )
    gateways = ["mesh-b", "edge", "istio-system", "mesh-a", "edge"]
    assert [line.split(" runs")[0] for line in unkept_gateways(gateways, m, None)] == ["namespace edge"]
    team_a = SelectorSet((parse_selector("team=a"),))
    lines = unkept_gateways(gateways, m, team_a)
    assert [line.split(" runs")[0] for line in lines] == [
        "namespace edge",
        "namespace istio-system",
        "namespace mesh-b",
    ]
    assert UNKEPT in lines[0]
    assert "istiod's discoverySelectors (team=a) do not select it" in lines[1]

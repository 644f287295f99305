"""Real clients against the simulated server: kubernetes-asyncio, the official client, kubectl; and HTTPS.

kubectl runs as an asyncio subprocess so that the server, which lives in this test's event loop, keeps
serving while it waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from kubernetes import client as sync_client
from kubernetes_asyncio import client, watch

from discofilter.simapi import SimSettings, Store
from tests import fixtures
from tests.simapi.conftest import FAST, Sim, SimFactory, write_kubeconfig

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


async def kubectl(kubeconfig: Path, *args: str, timeout: float = 20.0) -> str:
    assert KUBECTL is not None
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(kubeconfig.parent)}
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={kubeconfig}",
        f"--cache-dir={kubeconfig.parent / 'cache'}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _configuration(url: str, *, token: str | None = None, ca_file: str | None = None) -> client.Configuration:
    cfg = client.Configuration(host=url)
    if token:
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
    if ca_file:
        cfg.ssl_ca_cert = ca_file
    return cfg


async def _once_watching(sim: Sim, change: Callable[[], object]) -> None:
    """Make ``change`` once the server has received a watch request (so it arrives live, not replayed)."""
    for _ in range(1000):
        if any("watch" in r.query for r in sim.requests):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the request is logged before its handler subscribes
    change()


async def test_kubernetes_asyncio_list_and_watch_with_bookmarks(sim: Sim) -> None:
    async with client.ApiClient(_configuration(sim.url)) as api:
        v1 = client.CoreV1Api(api)
        pods = await v1.list_pod_for_all_namespaces()
        assert len(pods.items) == 18 and pods.metadata.resource_version == "503"
        async with watch.Watch() as stream:
            seen: list[tuple[str, str]] = []
            change = asyncio.create_task(
                _once_watching(
                    sim,
                    lambda: sim.store.patch_labels(
                        "pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"rollout": "green"}
                    ),
                )
            )
            async for event in stream.stream(
                v1.list_namespaced_pod,
                "mesh-a",
                resource_version="503",
                allow_watch_bookmarks=True,
                timeout_seconds=5,
            ):
                if event["type"] == "BOOKMARK":
                    seen.append(("BOOKMARK", event["raw_object"]["metadata"]["resourceVersion"]))
                    break
                seen.append((event["type"], event["object"].metadata.labels["rollout"]))
            await change
            # Live, so a bookmark follows (a replayed change would get none: README fact 6).
            assert seen == [("MODIFIED", "green"), ("BOOKMARK", "504")]
            assert str(stream.resource_version) == "504"
        slices = await client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces(limit=4)
        assert len(slices.items) == 4 and slices.metadata._continue


async def test_official_client_list_in_a_thread(sim: Sim) -> None:
    def list_services() -> Any:
        cfg = sync_client.Configuration(host=sim.url)
        with sync_client.ApiClient(cfg) as api:
            return sync_client.CoreV1Api(api).list_service_for_all_namespaces(label_selector="service")

    services = await asyncio.to_thread(list_services)
    captured = json.loads(fixtures.body("list-services.json"))["items"]
    assert (
        len(services.items) == sum("service" in (i["metadata"].get("labels") or {}) for i in captured) == 10
    )
    assert services.metadata.resource_version == "503"


@needs_kubectl
async def test_kubectl_get_pods_all_namespaces(sim: Sim, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kubeconfig", sim.url)
    out = await kubectl(config, "get", "pods", "-A")
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert len(lines) == 19
    ranker = next(line for line in lines if "ranker" in line).split()
    assert ranker[:4] == ["mesh-rev", "ranker-gzcwmgsbm8-x2wws", "1/2", "CrashLoopBackOff"]
    # kubectl asked for aggregated discovery first and fell back to the legacy documents.
    paths = [r.path for r in sim.requests]
    assert "/api" in paths and "/api/v1" in paths
    api_accept = next(r.header("Accept") for r in sim.requests if r.path == "/api")
    assert api_accept is not None and "as=APIGroupDiscoveryList" in api_accept
    get = next(r for r in sim.requests if r.path == "/api/v1/pods")
    assert "as=Table" in (get.header("Accept") or "")


@needs_kubectl
async def test_kubectl_short_names_and_raw(sim: Sim, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kubeconfig", sim.url)
    svc = await kubectl(config, "get", "svc", "-n", "mesh-b", "-o", "name")
    assert svc.split() == ["service/catalog", "service/legacy-vm", "service/reviews"]
    raw = await kubectl(config, "get", "--raw", "/api/v1/pods")
    assert json.loads(raw) == json.loads(fixtures.body("list-pods.json"))
    slices = await kubectl(config, "get", "endpointslices", "-n", "mesh-b", "-o", "json")
    assert len(json.loads(slices)["items"]) == 3


@needs_kubectl
async def test_kubectl_watch(sim: Sim, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kubeconfig", sim.url)
    assert KUBECTL is not None
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={config}",
        f"--cache-dir={tmp_path / 'cache'}",
        "get",
        "pods",
        "-n",
        "mesh-a",
        "-w",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    assert proc.stdout is not None
    try:
        lines = [await asyncio.wait_for(proc.stdout.readline(), 20) for _ in range(4)]
        assert lines[0].split()[:2] == [b"NAME", b"READY"]
        await _once_watching(sim, lambda: sim.store.delete("pods", "mesh-a", "payments-api-rmw7x22tf8-4zcc5"))
        changes = [await asyncio.wait_for(proc.stdout.readline(), 10) for _ in range(2)]
        assert all(b"payments-api-rmw7x22tf8-4zcc5" in line for line in changes)
        assert b"Terminating" in changes[0]
    finally:
        proc.kill()
        await proc.wait()


@needs_kubectl
async def test_https_with_a_bearer_token(sim_factory: SimFactory, store: Store, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    settings = SimSettings(bookmark_interval=FAST.bookmark_interval, tokens={"s3cret": "admin"})
    sim = await sim_factory(store, settings, ssl_context=server_context)
    assert sim.url.startswith("https://127.0.0.1:")

    config = write_kubeconfig(tmp_path / "kubeconfig", sim.url, token="s3cret", ca_file=str(ca_file))
    out = await kubectl(config, "get", "namespaces", "-o", "name")
    assert "namespace/mesh-a" in out.split()
    assert sim.requests[-1].header("Authorization") == "Bearer s3cret"

    async with client.ApiClient(_configuration(sim.url, token="s3cret", ca_file=str(ca_file))) as api:
        namespaces = await client.CoreV1Api(api).list_namespace()
        assert len(namespaces.items) == 12
    async with client.ApiClient(_configuration(sim.url, token="wrong", ca_file=str(ca_file))) as api:
        with pytest.raises(client.ApiException) as refused:
            await client.CoreV1Api(api).list_namespace()
        assert refused.value.status == 401

"""Multi-cluster: a primary istiod reads each remote cluster through that cluster's discofilter.

Two simulated clusters (two simapi servers with authentication on, different seeds so their objects
differ), each with a real ``discofilter serve`` in front serving TLS, as the standalone flavour does in a
remote cluster. The client holds what ``istioctl create-remote-secret --server https://<discofilter>``
writes: a kubeconfig with the discofilter's address, a CA and the remote cluster's reader token. It is
kubectl (client-go, as istiod), which sends the token only because the server is https.

What must hold: through each remote secret only that cluster's mesh objects come, the token reaches that
cluster's API server byte for byte (its request log), and discofilter never puts its own identity in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from discofilter.bench.procs import Proc, start_discofilter, write_kubeconfig
from discofilter.bench.simproc import seeded_store
from discofilter.bench.workload import Churn, WorkloadSettings
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS
from discofilter.demo.settings import ChurnSettings
from discofilter.demo.simserver import run_churn
from discofilter.simapi import REQUEST_LOG, SimSettings, Store, build_app

READER = "system:serviceaccount:istio-system:istio-reader-service-account"
OWN = "system:serviceaccount:istio-system:discofilter"
FILTERED_PATHS = ("/api/v1/pods", "/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices")


@dataclass
class Cluster:
    name: str
    store: Store
    churn: Churn
    app: web.Application
    reader_token: str
    remote_secret: Path
    """The kubeconfig in the remote secret: discofilter's https address, its CA, the reader token."""
    discofilter: Proc

    def mesh(self) -> set[str]:
        return {
            ns["metadata"]["name"]
            for ns in self.store.objects("namespaces")
            if DEFAULT_MESH_SELECTORS.matches(ns["metadata"].get("labels") or {})
        }

    def mesh_objects(self, resource: str) -> set[tuple[str, str]]:
        mesh = self.mesh()
        return {
            (o["metadata"]["namespace"], o["metadata"]["name"])
            for o in self.store.objects(resource)
            if o["metadata"]["namespace"] in mesh
        }

    def authorizations(self, path: str | None = None) -> set[str | None]:
        """Authorization headers the API server got from clients on ``path`` (default: every path).

        discofilter's own one-off gateway pod LISTs at start-up (gateways.py, a ``labelSelector`` on
        ``istio``) carry its own token by design, and are not client requests: left out here, and
        checked on their own in ``own_reads``."""
        return {
            r.header("Authorization")
            for r in self.app[REQUEST_LOG]
            if path in (None, r.path) and not _gateway_check(r.query)
        }

    def own_reads(self) -> set[str | None]:
        return {r.header("Authorization") for r in self.app[REQUEST_LOG] if _gateway_check(r.query)}


def _gateway_check(query: str) -> bool:
    return "labelSelector=istio" in query and "watch" not in query


def remote_secret_kubeconfig(path: Path, name: str, server: str, ca_pem: bytes, token: str | None) -> Path:
    """The kubeconfig ``istioctl create-remote-secret`` puts in the Secret (``createBearerTokenKubeconfig``):
    one cluster with ``certificate-authority-data``, one user with ``token``, all named after the cluster."""
    user = {"token": token} if token else {}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    "server": server,
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
        "users": [{"name": name, "user": user}],
    }
    path.write_text(json.dumps(doc))
    return path


@contextlib.asynccontextmanager
async def cluster(name: str, seed: int, tmp_path: Path) -> AsyncIterator[Cluster]:
    workload = WorkloadSettings(
        namespaces=6, mesh_fraction=0.5, pods_per_app=1, inflight=2, nodes=2, seed=seed
    )
    store, churn, _ = seeded_store(workload, history_window=10_000)
    reader, own = f"{name}-reader-token", f"{name}-discofilter-token"
    app = build_app(store, SimSettings(tokens={reader: READER, own: OWN}))
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sim_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    # discofilter's own identity, only for its namespace watch (the standalone Deployment's ServiceAccount).
    own_kc = write_kubeconfig(tmp_path / f"{name}-discofilter.kubeconfig", sim_url, token=own)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / f"{name}-tls.crt", tmp_path / f"{name}-tls.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls = ["--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]
    df: Proc | None = None
    try:
        df, url = await start_discofilter(f"{name}-discofilter", own_kc, tmp_path / "logs", extra=tls)
        server = url.replace("http://", "https://", 1)  # start_discofilter names the plain scheme
        secret = remote_secret_kubeconfig(
            tmp_path / f"{name}.remote", name, server, ca.cert_pem.bytes(), reader
        )
        yield Cluster(name, store, churn, app, reader, secret, df)
    finally:
        if df is not None:
            await df.stop()
        await runner.cleanup()


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60
    )


async def kubectl_items(kubeconfig: Path, resource: str) -> set[tuple[str, str]]:
    done = await asyncio.to_thread(kubectl, kubeconfig, "get", resource, "-A", "-o", "json")
    assert done.returncode == 0, done.stderr
    return {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in json.loads(done.stdout)["items"]}


@pytest.fixture
async def clusters(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Cluster]]:
    async with cluster("east", 1, tmp_path) as east, cluster("west", 2, tmp_path) as west:
        yield east, west


async def test_each_remote_secret_sees_only_its_clusters_mesh_with_its_own_token(
    clusters: tuple[Cluster, Cluster],
) -> None:
    for c in clusters:
        for resource in ("pods", "services", "endpointslices"):
            assert await kubectl_items(c.remote_secret, resource) == c.mesh_objects(resource), (
                c.name,
                resource,
            )
        # Everything else of that cluster, unfiltered: the namespaces are all of its own.
        done = await asyncio.to_thread(kubectl, c.remote_secret, "get", "namespaces", "-o", "name")
        assert done.returncode == 0, done.stderr
        names = {n.removeprefix("namespace/") for n in done.stdout.split()}
        assert names == {ns["metadata"]["name"] for ns in c.store.objects("namespaces")}
    east, west = clusters
    assert not east.mesh_objects("pods") & west.mesh_objects("pods")  # the two clusters do differ
    # The reader token reached each API server unchanged, and nothing else did on the filtered paths.
    for c in clusters:
        for path in FILTERED_PATHS:
            assert c.authorizations(path) == {f"Bearer {c.reader_token}"}, (c.name, path)
        # discofilter's own start-up gateway check is the only other reader, with its own token.
        assert c.own_reads() <= {f"Bearer {c.name}-discofilter-token"}, c.name


async def test_watches_through_each_remote_secret_carry_only_that_clusters_mesh_churn(
    clusters: tuple[Cluster, Cluster],
) -> None:
    churns = [asyncio.create_task(run_churn(c.store, c.churn, ChurnSettings(rate=40))) for c in clusters]
    try:
        watches = [await watch_pods(c.remote_secret) for c in clusters]
        await asyncio.sleep(4.0)
        outputs = []
        for w in watches:
            assert w.returncode is None, "kubectl -w ended by itself"
            w.terminate()
            outputs.append((await w.communicate())[0].decode())
    finally:
        for task in churns:
            task.cancel()
    for c, out in zip(clusters, outputs, strict=True):
        seen = [o["metadata"]["namespace"] for o in decode_stream(out)]
        assert len(seen) >= 3, (c.name, out[-500:])
        assert set(seen) <= c.mesh(), c.name
        assert c.authorizations("/api/v1/pods") == {f"Bearer {c.reader_token}"}
        written = c.churn.log.counts(0, c.churn.rv)["pods"]
        assert written["events"] > written["mesh_events"] > 0  # the churn was not only in the mesh


async def watch_pods(kubeconfig: Path) -> asyncio.subprocess.Process:
    argv = [
        "kubectl",
        "--kubeconfig",
        str(kubeconfig),
        "get",
        "pods",
        "-A",
        "-w",
        "--watch-only",
        "-o",
        "json",
    ]
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


def decode_stream(text: str) -> list[dict[str, Any]]:
    """``kubectl -o json -w`` prints one indented JSON object after another; the last may be cut short
    where kubectl was stopped."""
    decoder, pos, out = json.JSONDecoder(), 0, []
    while (pos := len(text) - len(text[pos:].lstrip())) < len(text):
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        out.append(obj)
    return out


async def test_a_token_goes_only_where_it_is_sent_and_discofilter_adds_none(
    clusters: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    east, west = clusters
    # East's token sent to west's discofilter: west's API server gets it unchanged and refuses it.
    west_server = json.loads(west.remote_secret.read_text())["clusters"][0]["cluster"]
    wrong = remote_secret_kubeconfig(
        tmp_path / "wrong.remote",
        "wrong",
        west_server["server"],
        base64.b64decode(west_server["certificate-authority-data"]),
        east.reader_token,
    )
    done = await asyncio.to_thread(kubectl, wrong, "get", "pods", "-A")
    assert done.returncode != 0 and "You must be logged in to the server" in done.stderr, done.stderr
    assert f"Bearer {east.reader_token}" in west.authorizations()  # on discovery, which failed first
    # No token at all (kubectl would prompt for one; a plain HTTPS client here): the API server sees an
    # anonymous request, not discofilter's identity.
    ctx = ssl.create_default_context(
        cadata=base64.b64decode(west_server["certificate-authority-data"]).decode()
    )
    url = f"{west_server['server']}/api/v1/pods"
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx) as resp:
        assert resp.status == 403
        assert 'User "system:anonymous" cannot list' in (await resp.json())["message"]
    assert None in west.authorizations("/api/v1/pods")

"""Real clients through discofilter against the simulated API server, with churn and label flips.

Everything here is real but the API server: discofilter runs as `discofilter serve` wires it (its
namespace watch is kubernetes-asyncio's), and the clients are kubernetes-asyncio, the official
`kubernetes` client and `kubectl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
import yaml
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio import config as aconfig

from discofilter.core.selectors import DEFAULT_MESH_SELECTORS
from discofilter.settings import ServerSettings, Settings
from discofilter.simapi import REQUEST_LOG, SimSettings, Store, build_app
from tests import fixtures
from tests.harness import Running, running_discofilter, write_kubeconfig
from tests.informer import Informer, istiod_informers, running

ADMIN = "admin-token"
OWN = "discofilter-token"
LISTS = {
    "namespaces": "list-namespaces.json",
    "pods": "list-pods.json",
    "services": "list-services.json",
    "endpoints": "list-endpoints.json",
    "endpointslices": "list-endpointslices.json",
}


def seeded() -> Store:
    store = Store(seed=7)
    for resource, name in LISTS.items():
        store.load_list(resource, orjson.loads(fixtures.body(name)))
    return store


@dataclass
class Env:
    store: Store
    sim_url: str
    sim_app: Any
    df: Running
    client_kubeconfig: Path

    def mesh(self) -> set[str]:
        return {
            ns["metadata"]["name"]
            for ns in self.store.objects("namespaces")
            if DEFAULT_MESH_SELECTORS.matches(ns["metadata"].get("labels") or {})
        }

    def truth(self, resource: str) -> set[tuple[str, str, str]]:
        mesh = self.mesh()
        return {
            (o["metadata"]["namespace"], o["metadata"]["name"], o["metadata"]["resourceVersion"])
            for o in self.store.objects(resource)
            if o["metadata"]["namespace"] in mesh
        }


@contextlib.asynccontextmanager
async def environment(tmp_path: Path, mode: str = "plain") -> AsyncIterator[Env]:
    """``mode``: "plain" forwards what clients send; "sidecar" lends discofilter's token on loopback
    (``--upstream-credentials``); "tls" serves HTTPS so kubectl sends its own token."""
    from aiohttp import web

    store = seeded()
    settings = SimSettings(
        bookmark_interval=0.5, bookmark_lead=0.2, tokens={ADMIN: "admin", OWN: "discofilter"}
    )
    app = build_app(store, settings)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sim_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    own_kc = write_kubeconfig(tmp_path / "discofilter.kubeconfig", sim_url, token=OWN)
    df_settings = Settings()
    server_ssl = None
    ca_file = None
    if mode == "sidecar":
        df_settings = replace(df_settings, server=ServerSettings(upstream_credentials=True))
    elif mode == "tls":
        ca = trustme.CA()
        ca_file = str(tmp_path / "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
        df_settings = replace(df_settings, server=ServerSettings(tls_cert_file="x", tls_key_file="x"))
    try:
        async with running_discofilter(own_kc, settings=df_settings, server_ssl=server_ssl) as df:
            client_kc = write_kubeconfig(tmp_path / "client.kubeconfig", df.url, token=ADMIN, ca_file=ca_file)
            yield Env(store, sim_url, app, df, client_kc)
    finally:
        await runner.cleanup()


async def api_client(kubeconfig: Path) -> aclient.ApiClient:
    cfg = aclient.Configuration()
    await aconfig.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return aclient.ApiClient(cfg)


def pod(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


async def converge(env: Env, informers: dict[str, Informer], timeout: float = 10.0) -> None:
    async def check() -> None:
        while any(inf.view() != env.truth(res) for res, inf in informers.items()):
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        for res, inf in informers.items():
            assert inf.view() == env.truth(res), res


async def test_informers_stay_exact_through_churn_and_label_flips(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        api = await api_client(env.client_kubeconfig)
        informers = istiod_informers(api)
        try:
            async with running(list(informers.values())):
                await converge(env, informers)
                assert {ns for ns, _, _ in informers["pods"].view()} == {"mesh-a", "mesh-b", "mesh-rev"}
                # Churn in and out of the mesh, through the API as a controller would.
                for i in range(5):
                    for ns in ("mesh-a", "plain-1", "plain-2", "mesh-b"):
                        env.store.create("pods", pod(f"churn-{i}", ns))
                env.store.patch_labels("pods", "mesh-a", "churn-0", {"version": "v2"})
                env.store.delete("pods", "mesh-b", "churn-1")
                env.store.delete("pods", "plain-1", "churn-1")
                await converge(env, informers)
                # plain-1 joins the mesh, mesh-b leaves it: the clients' views follow without a restart.
                env.store.patch_labels("namespaces", None, "plain-1", {"istio-injection": "enabled"})
                env.store.patch_labels("namespaces", None, "mesh-b", {"istio-injection": None})
                await converge(env, informers)
                assert "plain-1" in {ns for ns, _, _ in informers["pods"].view()}
                assert "mesh-b" not in {ns for ns, _, _ in informers["services"].view()}
                # Churn continues in the new mesh; a new mesh namespace appears with objects.
                env.store.create("pods", pod("after", "plain-1"))
                env.store.create("pods", pod("after", "mesh-b"))
                env.store.create(
                    "namespaces", {"metadata": {"name": "fresh", "labels": {"istio.io/rev": "canary"}}}
                )
                env.store.create("pods", pod("first", "fresh"))
                await converge(env, informers)
                assert ("fresh", "first") in {(ns, n) for ns, n, _ in informers["pods"].view()}
                # Flapping: a label toggled quickly still ends where the truth is.
                for i in range(6):
                    env.store.patch_labels(
                        "namespaces", None, "plain-2", {"istio-injection": "enabled" if i % 2 == 0 else None}
                    )
                await converge(env, informers)
                assert all(inf.expired >= 1 for inf in informers.values())
        finally:
            await api.close()


async def test_passthrough_and_filtered_reads_with_kubernetes_asyncio(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        api = await api_client(env.client_kubeconfig)
        try:
            core = aclient.CoreV1Api(api)
            pods = await core.list_pod_for_all_namespaces()
            assert {p.metadata.namespace for p in pods.items} == {"mesh-a", "mesh-b", "mesh-rev"}
            assert (await core.list_namespaced_pod("plain-1")).items == []
            assert len((await core.list_namespaced_pod("mesh-a")).items) == 3
            # Everything else is the cluster as it is.
            assert len((await core.list_namespace()).items) == 12
            one = await core.read_namespaced_pod(
                pods.items[0].metadata.name, pods.items[0].metadata.namespace
            )
            assert one.metadata.name == pods.items[0].metadata.name
            cm = aclient.V1ConfigMap(metadata=aclient.V1ObjectMeta(name="cm"), data={"a": "b"})
            created = await core.create_namespaced_config_map("plain-1", cm)
            assert created.metadata is not None and created.metadata.name == "cm"
            with pytest.raises(aclient.ApiException) as err:
                await core.read_namespaced_pod("no-such-pod", "mesh-a")
            assert err.value.status == 404
        finally:
            await api.close()
        # The query string reached the API server exactly, and so did the client's own token.
        seen = [r for r in env.sim_app[REQUEST_LOG] if r.path.endswith("/pods")]
        assert seen and all(r.header("Authorization") == f"Bearer {ADMIN}" for r in seen)


async def test_streaming_list_through_discofilter(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        q = (
            "?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
            "&allowWatchBookmarks=true&timeoutSeconds=2"
        )
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession() as s, s.get(env.df.url + "/api/v1/pods" + q, headers=headers) as r:
            body = await r.read()
        events = [orjson.loads(line) for line in body.splitlines()]
        initial = [e for e in events if e["type"] == "ADDED"]
        assert {e["object"]["metadata"]["namespace"] for e in initial} == {"mesh-a", "mesh-b", "mesh-rev"}
        assert len(initial) == 9
        ends = [e for e in events if e["type"] == "BOOKMARK" and e["object"]["metadata"].get("annotations")]
        assert ends[0]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def kubectl(kubeconfig: Path, *args: str, timeout: float = 30) -> str:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("mode", ["sidecar", "tls"])
async def test_kubectl_get_watch_and_raw(tmp_path: Path, mode: str) -> None:
    async with environment(tmp_path, mode) as env:
        kc = env.client_kubeconfig
        out = await asyncio.to_thread(kubectl, kc, "get", "pods", "-A", "-o", "name")
        assert len(out.split()) == 9
        table = await asyncio.to_thread(kubectl, kc, "get", "pods", "-A")
        assert {line.split()[0] for line in table.splitlines()[1:]} == {"mesh-a", "mesh-b", "mesh-rev"}
        raw = json.loads(await asyncio.to_thread(kubectl, kc, "get", "--raw", "/api/v1/services"))
        assert {i["metadata"]["namespace"] for i in raw["items"]} <= {"mesh-a", "mesh-b", "mesh-rev"}
        assert "remainingItemCount" not in raw["metadata"]
        nodes_or_ns = await asyncio.to_thread(kubectl, kc, "get", "namespaces", "-o", "name")
        assert len(nodes_or_ns.split()) == 12
        # get -w: events of mesh namespaces arrive, others never do.
        proc = await asyncio.create_subprocess_exec(
            "kubectl",
            "--kubeconfig",
            str(kc),
            "get",
            "pods",
            "-A",
            "-w",
            "--output-watch-events",
            "-o",
            "json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await asyncio.sleep(1.5)
            env.store.create("pods", pod("watched", "plain-2"))
            env.store.create("pods", pod("watched", "mesh-rev"))
            assert proc.stdout is not None
            buf = b""
            deadline = asyncio.get_running_loop().time() + 10
            while b'"watched"' not in buf and asyncio.get_running_loop().time() < deadline:
                buf += await asyncio.wait_for(proc.stdout.read(65536), 10)
        finally:
            proc.kill()
            await proc.wait()
        text = buf.decode().replace('": "', '":"')  # kubectl indents some versions' output
        assert '"namespace":"mesh-rev"' in text and '"watched"' in text
        assert '"namespace":"plain-2"' not in text
        # Who the API server saw: discofilter lending its identity, or kubectl's own token over TLS.
        users = {r.header("Authorization") for r in env.sim_app[REQUEST_LOG] if "/pods" in r.path}
        assert users == ({f"Bearer {OWN}"} if mode == "sidecar" else {f"Bearer {ADMIN}"})


async def test_official_kubernetes_client_lists_through_discofilter(tmp_path: Path) -> None:
    import kubernetes

    async with environment(tmp_path) as env:

        def list_pods() -> set[str]:
            kc = str(env.client_kubeconfig)
            api = kubernetes.config.new_client_from_config(config_file=kc)  # type: ignore[no-untyped-call]
            try:
                pods = kubernetes.client.CoreV1Api(api).list_pod_for_all_namespaces().items
                return {str(p.metadata.namespace) for p in pods if p.metadata is not None}
            finally:
                api.close()

        assert await asyncio.to_thread(list_pods) == {"mesh-a", "mesh-b", "mesh-rev"}


async def test_istiod_accept_against_a_server_that_answers_json(tmp_path: Path) -> None:
    """istiod prefers protobuf; for types a server only serves as JSON (simapi, like CRDs on a real
    one), the JSON answer is filtered and goes back as JSON, which client-go decodes by Content-Type."""
    async with environment(tmp_path) as env:
        headers = {
            "Authorization": f"Bearer {ADMIN}",
            "Accept": "application/vnd.kubernetes.protobuf,application/json",
        }
        async with aiohttp.ClientSession() as s, s.get(env.df.url + "/api/v1/services", headers=headers) as r:
            assert r.headers["Content-Type"] == "application/json"
            doc = await r.json()
        assert {i["metadata"]["namespace"] for i in doc["items"]} == {"mesh-a", "mesh-b", "mesh-rev"}
        seen = [x for x in env.sim_app[REQUEST_LOG] if x.path == "/api/v1/services"]
        assert seen[-1].header("Accept") == headers["Accept"]


async def test_large_objects_pass_writes_lists_and_watches(tmp_path: Path) -> None:
    mib = 1024 * 1024
    async with environment(tmp_path) as env:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        big = pod("big", "mesh-a")
        big["metadata"]["annotations"] = {"blob": "x" * (5 * mib // 2)}  # under the API server's 3 MiB
        async with aiohttp.ClientSession() as s:
            async with s.get(env.df.url + "/api/v1/pods?limit=1", headers=headers) as r:
                rv = (await r.json())["metadata"]["resourceVersion"]
            # Written through discofilter: a 2.5 MiB body streamed through the pass-through path.
            body = io.BytesIO(orjson.dumps(big))
            post_headers = {**headers, "Content-Type": "application/json"}
            async with s.post(
                env.df.url + "/api/v1/namespaces/mesh-a/pods", data=body, headers=post_headers
            ) as r:
                assert r.status == 201, await r.text()
            # Bigger than any request may be, as an object grown by status writes and managedFields can be.
            huge = pod("huge", "mesh-b")
            huge["metadata"]["annotations"] = {"blob": "y" * (4 * mib)}
            env.store.create("pods", huge)
            url = env.df.url + f"/api/v1/pods?watch=1&resourceVersion={rv}&timeoutSeconds=1"
            async with s.get(url, headers=headers) as r:
                events = [orjson.loads(line) for line in (await r.read()).splitlines()]
            async with s.get(env.df.url + "/api/v1/pods", headers=headers) as r:
                items = (await r.json())["items"]
        sizes = {
            e["object"]["metadata"]["name"]: len(e["object"]["metadata"]["annotations"]["blob"])
            for e in events
        }
        assert sizes == {"big": 5 * mib // 2, "huge": 4 * mib}
        listed = {i["metadata"]["name"] for i in items if "blob" in i["metadata"].get("annotations", {})}
        assert listed == {"big", "huge"}


async def test_exec_plugin_credentials_for_discofilters_own_watch(tmp_path: Path) -> None:
    """kubeconfig exec plugins (EKS, GKE, OIDC helpers) run through kubernetes-asyncio's own loader."""
    from aiohttp import web

    store = seeded()
    app = build_app(store, SimSettings(tokens={"from-exec-plugin": "discofilter"}))
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    plugin = tmp_path / "plugin.sh"
    plugin.write_text(
        '#!/bin/sh\necho \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        '"status":{"token":"from-exec-plugin"}}\'\n'
    )
    plugin.chmod(0o755)
    kc = tmp_path / "kc"
    exec_user = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": str(plugin),
        "interactiveMode": "Never",
    }
    kc.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"exec": exec_user}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    try:
        async with running_discofilter(kc) as df:
            assert df.runtime.membership.members == {"mesh-a", "mesh-b", "mesh-rev"}
        ns_reads = [r for r in app[REQUEST_LOG] if r.path == "/api/v1/namespaces"]
        assert ns_reads and all(r.header("Authorization") == "Bearer from-exec-plugin" for r in ns_reads)
    finally:
        await runner.cleanup()

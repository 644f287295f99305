"""The RBAC in the manifests grants what discofilter's own calls need, and nothing they do not use.

A real ``discofilter serve`` (a subprocess, with the args of the rendered container, only addresses and
file paths swapped for the test's) runs against simapi; every request carrying discofilter's own token
is recorded and checked against the rendered Roles bound to its ServiceAccount. kubectl then connects
through it with the kubeconfig the flavour gives istiod, as istiod would.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import trustme
import yaml
from prometheus_client.parser import text_string_to_metric_families

from discofilter.simapi import REQUEST_LOG, RecordedRequest, Store
from tests.deploy.kube import (
    DATA,
    ISTIOD,
    MANIFESTS,
    Obj,
    build,
    build_component,
    current,
    discofilter_containers,
    flag,
    kubeconfig_of,
    kubectl,
    one,
)
from tests.deploy.rbac import Attributes, Grant, allowed, attributes, grants, rule_allows
from tests.harness import bound_ports, write_kubeconfig
from tests.test_e2e import ADMIN, OWN
from tests.test_meshwatch import simapi

MESH = "discoverySelectors:\n- matchLabels: {istio-injection: enabled}\n"


def store() -> Store:
    s = Store(seed=3)
    s.create("namespaces", {"metadata": {"name": "istio-system"}})
    s.create("namespaces", {"metadata": {"name": "mesh-a", "labels": {"istio-injection": "enabled"}}})
    s.create("namespaces", {"metadata": {"name": "plain-b"}})
    s.create("configmaps", {"metadata": {"name": "istio"}, "data": {"mesh": MESH}}, namespace="istio-system")
    # A second ConfigMap beside it, which discofilter must not need to read.
    s.create(
        "configmaps", {"metadata": {"name": "istio-canary"}, "data": {"mesh": ""}}, namespace="istio-system"
    )
    for ns in ("mesh-a", "plain-b"):
        s.create("services", {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}, namespace=ns)
    # The chart's ingress gateway in istiod's namespace, which carries no mesh label: kept by name.
    gw = {"istio": "ingressgateway"}
    s.create(
        "services",
        {"metadata": {"name": "istio-ingressgateway"}, "spec": {"ports": [{"port": 80}], "selector": gw}},
        namespace="istio-system",
    )
    s.create(
        "pods",
        {
            "metadata": {"name": "istio-ingressgateway-1", "labels": gw},
            "spec": {"containers": [{"name": "istio-proxy", "image": "proxyv2"}]},
        },
        namespace="istio-system",
    )
    return s


def pod_env(c: Obj, namespace: str) -> dict[str, str]:
    """The container's env as kubelet would give it in ``namespace``: values, and the downward API's
    metadata.namespace (the only fieldRef the manifests use)."""
    env = {}
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            assert e["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, e
            env[e["name"]] = namespace
    return env


def container(objs: list[Obj]) -> tuple[Obj, Obj]:
    """(Deployment, discofilter container) of a rendered flavour."""
    (found,) = discofilter_containers(objs)
    return found


def swapped_args(
    args: list[str], listen: int, health: int, metrics: int, tls: tuple[str, str] | None
) -> list[str]:
    """The rendered args with every listener on a loopback port of the test's and the TLS files swapped."""
    swapped = ("--listen", "--health-listen", "--metrics-listen", "--tls-")
    # The manifests write --flag=value, so dropping one argument drops the whole flag.
    assert all("=" in a for a in args if a.startswith(swapped)), args
    assert flag(args, "--metrics-listen")
    keep = [a for a in args if not a.startswith(swapped)]
    out = [*keep, f"--listen=127.0.0.1:{listen}", f"--health-listen=127.0.0.1:{health}"]
    out.append(f"--metrics-listen=127.0.0.1:{metrics}")
    if tls is not None:
        assert flag(args, "--tls-cert-file") and flag(args, "--tls-key-file")
        out += [f"--tls-cert-file={tls[0]}", f"--tls-key-file={tls[1]}"]
    return out


async def list_items(http: aiohttp.ClientSession, url: str, resource: str) -> dict[str, float]:
    """discofilter_list_items_total by outcome for ``resource``, scraped as Prometheus would."""
    async with http.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "discofilter_list_items_total" and sample.labels["resource"] == resource
    }


async def istiod_lists_services(istiod_kubeconfig: Obj, port: int, tmp_path: Path, tls: bool) -> set[str]:
    """kubectl as istiod: with istiod's rendered kubeconfig, only the address and file paths swapped
    (and the TLS server name kept, since the test's discofilter is on 127.0.0.1)."""
    kc = copy.deepcopy(istiod_kubeconfig)
    cluster, user = current(kc)
    url = urlsplit(cluster["server"])
    cluster["server"] = f"{url.scheme}://127.0.0.1:{port}"
    if tls:
        cluster["tls-server-name"] = url.hostname
        cluster["certificate-authority"] = str(tmp_path / "ca.crt")
        (tmp_path / "token").write_text(ADMIN)
        user["tokenFile"] = str(tmp_path / "token")
    path = tmp_path / "istiod.kubeconfig"
    path.write_text(yaml.safe_dump(kc))
    template = "{range .items[*]}{.metadata.namespace}/{.metadata.name}{'\\n'}{end}"
    proc = await asyncio.create_subprocess_exec(
        kubectl(),
        "--kubeconfig",
        str(path),
        "get",
        "services",
        "-A",
        "-o",
        f"jsonpath={template}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return set(out.decode().split())


async def run_discofilter(
    objs: list[Obj], istiod_kubeconfig: Obj, tmp_path: Path, namespace: str
) -> tuple[list[RecordedRequest], int, str]:
    """Runs discofilter as rendered, and kubectl through it as istiod would connect; returns the
    requests simapi saw, discofilter's exit code and its log."""
    dep, c = container(objs)
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    s = store()
    async with simapi(s) as sim:
        url, app = sim.url, sim.app
        kubeconfig = write_kubeconfig(tmp_path / "own.kubeconfig", url, token=OWN)
        tls = None
        if flag(c["args"], "--tls-cert-file"):
            ca = trustme.CA()
            server = urlsplit(current(istiod_kubeconfig)[0]["server"]).hostname
            assert server is not None
            cert = ca.issue_cert(server)
            cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
            cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
            ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
            tls = (str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
        args = swapped_args(c["args"], 0, 0, 0, tls)  # the kernel picks; the start-up line says which
        log = tmp_path / "discofilter.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "discofilter",
                *args,
                "--kubeconfig",
                str(kubeconfig),
                stdout=out,
                stderr=out,
                env={**os.environ, **pod_env(c, namespace)},
            )
        try:

            async def started() -> bool:
                return bound_ports(log.read_text()) is not None

            await wait_for(started, proc, log)
            ports = bound_ports(log.read_text())
            assert ports is not None
            port, hport, mport = ports
            async with aiohttp.ClientSession() as http:
                await wait_for(lambda: ready(http, f"http://127.0.0.1:{hport}/readyz"), proc, log)
                # Make both watches carry events, as a label change and a mesh config edit would.
                ns = s.get("namespaces", "", "plain-b")
                s.update("namespaces", {**ns, "metadata": {**ns["metadata"], "labels": {"team": "b"}}})
                cm = s.get("configmaps", "istio-system", "istio")
                s.update("configmaps", {**cm, "data": {"mesh": MESH + "# edited\n"}})

                async def watching() -> bool:
                    recorded = app[REQUEST_LOG]
                    own = own_attributes(list(recorded))
                    return {("watch", "namespaces"), ("watch", "configmaps"), ("list", "pods")} <= {
                        (a.verb, a.resource) for a in own
                    }

                await wait_for(watching, proc, log)
                # istiod, through discofilter, sees the mesh namespace's Service and its own
                # namespace's gateway (the downward API's POD_NAMESPACE, or the standalone flag).
                seen = await istiod_lists_services(istiod_kubeconfig, port, tmp_path, tls is not None)
                assert seen == {"mesh-a/web", "istio-system/istio-ingressgateway"}
                # ...and the runbook's metric shows what istiod was spared.
                # With server-side exclusion (the default) the non-mesh Service never reaches
                # discofilter: the API server leaves it out, and the upstream LIST says so.
                items = await list_items(http, f"http://127.0.0.1:{mport}/metrics", "services")
                lists = [r.query for r in app[REQUEST_LOG] if r.path == "/api/v1/services"]
                excluded = any("metadata.namespace%21%3Dplain-b" in q for q in lists)
                assert items == ({"kept": 2, "dropped": 0} if excluded else {"kept": 2, "dropped": 1}), lists
                assert excluded, lists
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            # The pod's grace period is what kubelet gives it before SIGKILL.
            try:
                rc = await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                rc = -9
        recorded = app[REQUEST_LOG]
        return list(recorded), rc, log.read_text()


async def ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def wait_for(check: Callable[[], Awaitable[bool]], proc: asyncio.subprocess.Process, log: Path) -> None:
    """Polls ``check`` (a callable returning an awaitable bool) for up to 30 s, failing at once if the
    process ends."""
    for _ in range(300):
        if proc.returncode is not None:
            pytest.fail(f"discofilter exited {proc.returncode}: {log.read_text()}")
        if await check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"discofilter never got there: {log.read_text()}")


def from_kubectl(r: RecordedRequest) -> bool:
    # Debian's kubectl is a dispatcher that first asks /version which kubectl to run.
    return (r.header("User-Agent") or "").startswith(("kubectl/", "kubectl-dispatcher/"))


def own_attributes(log: list[RecordedRequest]) -> list[Attributes]:
    """discofilter's own calls. In the sidecar, istiod's requests (kubectl here) go out with the same
    token, lent; they are istiod's calls, authorized by istiod's own Roles, so they are left out."""
    found = []
    for r in log:
        if r.header("Authorization") == f"Bearer {OWN}" and not from_kubectl(r):
            a = attributes(r.method, r.path, r.query)
            assert a is not None, f"discofilter called a non-resource URL {r.path}"
            found.append(a)
    return found


FLAVOURS = {
    # flavour: (how to render it, the ServiceAccount discofilter runs as)
    "standalone": ("istio-system", "discofilter"),
    "sidecar": ("istio-system", "istiod"),
}


def rendered(flavour: str, tmp_path: Path) -> tuple[list[Obj], Obj]:
    """The flavour's objects, and the kubeconfig it gives istiod."""
    if flavour == "sidecar":
        objs = build_component(MANIFESTS / "sidecar", ISTIOD, tmp_path / "render")
        istiod = objs
    else:
        objs = build(MANIFESTS / flavour)
        istiod = build_component(MANIFESTS / flavour / "istiod-client", ISTIOD, tmp_path / "render")
    kubeconfig, _ = kubeconfig_of(istiod, one(istiod, "Deployment", "istiod"))
    return objs, kubeconfig


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
async def test_rbac_grants_exactly_what_discofilter_calls(flavour: str, tmp_path: Path) -> None:
    objs, istiod_kubeconfig = rendered(flavour, tmp_path)
    namespace, account = FLAVOURS[flavour]
    dep, _ = container(objs)
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == account
    granted = grants(objs, namespace, account)
    log, rc, text = await run_discofilter(objs, istiod_kubeconfig, tmp_path, namespace)
    assert rc == 0, text
    assert "namespace istio-system (istiod's) is kept whatever its labels" in text
    assert "runs Istio gateway pods but is not kept" not in text
    # istiod's own discoverySelectors make no exception for its namespace (istio/istio#33586): said once.
    istiod_ignores = "namespace istio-system runs Istio gateway pods, but istiod's discoverySelectors"
    assert text.count(istiod_ignores) == 1, text
    assert "cannot list gateway pods" not in text
    # istiod's requests carried istiod's credentials: its own token over TLS, the lent one in the sidecar.
    istiod_auth = {r.header("Authorization") for r in log if from_kubectl(r)}
    assert istiod_auth == {f"Bearer {OWN if flavour == 'sidecar' else ADMIN}"}
    own = own_attributes(log)
    assert {(a.verb, a.resource) for a in own} == {
        ("list", "namespaces"),
        ("watch", "namespaces"),
        ("list", "configmaps"),
        ("watch", "configmaps"),
        ("list", "pods"),
    }
    for a in own:
        assert allowed(granted, a), f"{flavour}: discofilter's own {a} is not granted"
    if flavour == "sidecar":
        # Sharing istiod's ServiceAccount adds no privilege: istiod's own chart grants already allow
        # every call discofilter makes.
        chart = [d for d in yaml.safe_load_all((DATA / "istiod-rbac.yaml").read_text()) if d]
        for a in own:
            assert allowed(grants(chart, namespace, account), a), f"istiod's chart does not grant {a}"
    # ...and nothing more: every verb on every resource each rule grants is one discofilter uses (a
    # wildcard never is).
    for g in granted:
        for rule in g.rules:
            for verb in rule["verbs"]:
                for resource in rule["resources"]:
                    used = [
                        a
                        for a in own
                        if (a.verb, a.resource) == (verb, resource)
                        and rule_allows(rule, a)
                        and (not g.namespace or g.namespace == a.namespace)
                    ]
                    assert used, f"{flavour}: {verb} {resource} is granted but discofilter never needs it"


def test_the_matcher_refuses_what_the_roles_do_not_grant() -> None:
    objs = build(MANIFESTS / "standalone")
    granted = grants(objs, "istio-system", "discofilter")
    ok = attributes(
        "GET", "/api/v1/namespaces/istio-system/configmaps", "fieldSelector=metadata.name%3Distio&watch=true"
    )
    assert ok == Attributes("watch", "", "configmaps", "istio-system", "istio")
    assert allowed(granted, ok)
    refused = [
        # another ConfigMap, all ConfigMaps, a get (not granted), another namespace, pods, a write
        ("GET", "/api/v1/namespaces/istio-system/configmaps", "fieldSelector=metadata.name%3Distio-canary"),
        ("GET", "/api/v1/namespaces/istio-system/configmaps", ""),
        ("GET", "/api/v1/namespaces/istio-system/configmaps/istio", ""),
        ("GET", "/api/v1/namespaces/default/configmaps", "fieldSelector=metadata.name%3Distio"),
        ("GET", "/api/v1/pods", "watch=1"),
        ("GET", "/api/v1/namespaces/mesh-a", ""),
        ("PATCH", "/api/v1/namespaces/mesh-a", ""),
        ("GET", "/apis/discovery.k8s.io/v1/endpointslices", ""),
    ]
    for method, path, query in refused:
        a = attributes(method, path, query)
        assert a is not None and not allowed(granted, a), (method, path, query)
    assert allowed(
        granted, attributes("GET", "/api/v1/namespaces", "watch=true") or Attributes("", "", "", "", "")
    )
    gateways = attributes("GET", "/api/v1/pods", "labelSelector=istio.io%2Fgateway-name&limit=500")
    assert gateways == Attributes("list", "", "pods", "", "")
    assert allowed(granted, gateways)
    assert attributes("GET", "/version", "") is None
    assert grants(objs, "istio-system", "istiod") == []
    assert all(isinstance(g, Grant) for g in granted)

"""The sidecar Component applied to istiod's Deployment as the Istio chart renders it: istiod's own
container is untouched apart from the kubeconfig wiring, and the wiring points where discofilter listens.
The same for the standalone's istiod-client Component (the Helm post-renderer: test_helm.py)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.kube import (
    ISTIOD,
    MANIFESTS,
    Obj,
    build,
    build_component,
    current,
    discovery,
    flag,
    kubeconfig_of,
    one,
    without_kubeconfig_wiring,
)

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def stock() -> Obj:
    doc: Obj = yaml.safe_load(ISTIOD.read_text())
    return doc


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    return build_component(MANIFESTS / "sidecar", ISTIOD, tmp_path_factory.mktemp("sidecar"))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    return build_component(MANIFESTS / "standalone" / "istiod-client", ISTIOD, tmp_path_factory.mktemp("cl"))


def test_sidecar_leaves_istiods_container_untouched_but_for_the_kubeconfig(sidecar: list[Obj]) -> None:
    before, after = stock(), one(sidecar, "Deployment", "istiod")
    _, mount = kubeconfig_of(sidecar, after)
    assert without_kubeconfig_wiring(discovery(after), {mount}) == without_kubeconfig_wiring(
        discovery(before), set()
    )
    # Nothing else of istiod's Deployment moved: metadata, selector, strategy, other volumes, the SA.
    assert after["metadata"] == before["metadata"]
    assert {k: v for k, v in after["spec"].items() if k != "template"} == {
        k: v for k, v in before["spec"].items() if k != "template"
    }
    assert after["spec"]["template"]["metadata"] == before["spec"]["template"]["metadata"]
    pod_before, pod_after = before["spec"]["template"]["spec"], after["spec"]["template"]["spec"]
    added = {"initContainers", "terminationGracePeriodSeconds"}
    compared_above = {"volumes", "containers"}
    assert {k: v for k, v in pod_after.items() if k not in added | compared_above} == {
        k: v for k, v in pod_before.items() if k not in compared_above
    }
    assert [v for v in pod_after["volumes"] if v["name"] != mount] == pod_before["volumes"]
    assert [c["name"] for c in pod_after["containers"]] == ["discovery"]


def test_sidecar_kubeconfig_points_at_the_loopback_listener_without_credentials(sidecar: list[Obj]) -> None:
    dep = one(sidecar, "Deployment", "istiod")
    kubeconfig, _ = kubeconfig_of(sidecar, dep)
    cluster, user = current(kubeconfig)
    (df,) = [c for c in dep["spec"]["template"]["spec"]["initContainers"] if c["name"] == "discofilter"]
    # A native sidecar: started before istiod, stopped after it.
    assert df["restartPolicy"] == "Always"
    assert cluster["server"] == f"http://{flag(df['args'], '--listen')}"
    assert urlsplit(cluster["server"]).hostname == "127.0.0.1"
    # istiod sends nothing; discofilter lends the pod's ServiceAccount, which is istiod's own.
    assert user == {}
    assert "--upstream-credentials" in df["args"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "istiod"
    assert df["startupProbe"]["httpGet"]["path"] == "/readyz"


def test_standalone_client_uses_tls_and_istiods_own_token(client: list[Obj], tmp_path: Path) -> None:
    dep = one(client, "Deployment", "istiod")
    kubeconfig, mount = kubeconfig_of(client, dep)
    cluster, user = current(kubeconfig)
    assert user == {"tokenFile": SA_TOKEN}
    server = build(MANIFESTS / "standalone")
    svc = one(server, "Service", "discofilter")
    (port,) = svc["spec"]["ports"]
    url = urlsplit(cluster["server"])
    assert url.scheme == "https"
    assert url.hostname == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    assert url.port == port["port"]
    # The CA file comes from a mounted ConfigMap, in istiod's container.
    ca = cluster["certificate-authority"]
    mounts = {m["mountPath"]: m["name"] for m in discovery(dep)["volumeMounts"]}
    ca_mount = next(name for path, name in mounts.items() if ca.startswith(path.rstrip("/") + "/"))
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == ca_mount)
    assert "configMap" in volume
    assert without_kubeconfig_wiring(discovery(dep), {mount, ca_mount}) == without_kubeconfig_wiring(
        discovery(stock()), set()
    )
    # discofilter serves TLS on the Service's target port, with the mounted serving Secret.
    df = one(server, "Deployment", "discofilter")["spec"]["template"]["spec"]
    (c,) = df["containers"]
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    listen = flag(c["args"], "--listen")
    assert listen is not None and int(listen.rsplit(":", 1)[1]) == named[port["targetPort"]]
    tls = next(m for m in c["volumeMounts"] if m["name"] == "tls")
    for arg in ("--tls-cert-file", "--tls-key-file"):
        value = flag(c["args"], arg)
        assert value is not None and value.startswith(tls["mountPath"] + "/")
    assert "--upstream-credentials" not in c["args"]

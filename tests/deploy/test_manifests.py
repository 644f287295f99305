"""Every manifest renders with kustomize, passes strict schema validation for the newest Kubernetes
kubernetes-validate ships, and carries the pod settings a cluster admin expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.deploy.kube import MANIFESTS, Obj, discofilter_containers, flag, kustomize_dirs, render

DIRS = kustomize_dirs()
K8S_VERSION = kubernetes_validate.latest_version()


def test_the_manifests_are_all_found() -> None:
    # A directory silently dropped from the glob would be a manifest nobody checks.
    names = {str(d.relative_to(MANIFESTS)) for d in DIRS}
    assert {"rbac", "sidecar", "standalone", "standalone/istiod-client"} <= names


@pytest.fixture(scope="module", params=DIRS, ids=lambda d: str(d.relative_to(MANIFESTS)))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    directory: Path = request.param
    objs = render(directory, tmp_path_factory.mktemp("render"))
    assert objs, f"{directory} rendered nothing"
    return objs


def test_every_object_passes_strict_schema_validation(rendered: list[Obj]) -> None:
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} against Kubernetes {K8S_VERSION}: {exc}")


def test_the_validator_rejects_what_it_should() -> None:
    # The schema check above is only worth something if it fails on a typo and on a bad value.
    typo: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "y"},
        "dta": {"a": "b"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    bad: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": "a"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def pods(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(pod spec, container) for every discofilter container."""
    return [(dep["spec"]["template"]["spec"], c) for dep, c in discofilter_containers(objs)]


def effective(pod: Obj, container: Obj, key: str) -> Any:
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    return container.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


def test_discofilter_pods_meet_the_restricted_pod_security_standard(rendered: list[Obj]) -> None:
    for pod, c in pods(rendered):
        sc = c["securityContext"]
        assert effective(pod, c, "runAsNonRoot") is True
        assert isinstance(effective(pod, c, "runAsUser"), int) and effective(pod, c, "runAsUser") > 0
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert effective(pod, c, "seccompProfile") == {"type": "RuntimeDefault"}
        assert not sc.get("privileged", False)


def test_discofilter_pods_have_resources_probes_and_a_grace_period(rendered: list[Obj]) -> None:
    for pod, c in pods(rendered):
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
        health = flag(c["args"], "--health-listen")
        assert health is not None
        host, port = health.rsplit(":", 1)
        # kubelet probes the pod IP: a loopback-only health listener would fail every probe.
        assert host == "0.0.0.0", host
        ports = {p["containerPort"]: p.get("name") for p in c["ports"]}
        probes = [c[k] for k in ("livenessProbe", "readinessProbe", "startupProbe") if k in c]
        for probe in probes:
            target = probe["httpGet"]["port"]
            assert target == int(port) or ports.get(int(port)) == target, probe
        # Liveness asks only whether the process runs; /readyz (membership synced) gates traffic: the
        # standalone's readiness, or, in istiod's pod, istiod's start (startup probe of a native sidecar).
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        gate = c.get("readinessProbe") or c["startupProbe"]
        assert gate["httpGet"]["path"] == "/readyz"
        if c.get("restartPolicy") == "Always":
            assert "readinessProbe" not in c, "a sidecar's readiness would decide istiod's pod readiness"
        metrics = flag(c["args"], "--metrics-listen")
        assert metrics is not None, "operators scrape /metrics"
        mhost, mport = metrics.rsplit(":", 1)
        # Prometheus scrapes the pod IP too.
        assert mhost == "0.0.0.0" and int(mport) in ports, metrics
        # discofilter gives in-flight requests 10 s after SIGTERM (ServerSettings.shutdown_grace_seconds).
        assert pod["terminationGracePeriodSeconds"] > 10
        assert c["args"][0] == "serve"


def test_no_manifest_lends_credentials_off_loopback(rendered: list[Obj]) -> None:
    for _, c in pods(rendered):
        if "--upstream-credentials" in c["args"]:
            listen = flag(c["args"], "--listen")
            assert listen is not None and listen.startswith("127.0.0.1:"), listen
            assert flag(c["args"], "--tls-cert-file") is None


@pytest.mark.parametrize("flavour", ["sidecar", "standalone"])
def test_each_way_of_running_it_has_one_discofilter_container(
    flavour: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The pod checks above go over every discofilter container; here is proof there is one to check.
    assert len(pods(render(MANIFESTS / flavour, tmp_path_factory.mktemp(flavour)))) == 1

"""Server-side defaults of the types served here, as Kubernetes 1.28 fills them in.

``apply_defaults`` adds what the defaulting functions and the default admission plugins add
(``SetDefaults_Pod``/``PodSpec``/``Container``/``Service``, Priority, DefaultTolerationSeconds), matching
the server the captures were taken on (``watch-pods-during-ns-changes.json``'s minimal pod ``web-0``), which
ran without ServiceAccount admission. ``initial_status`` is the status a create starts from, and the
ClusterIP allocator hands out addresses from the default 10.96.0.0/12 service range.

Rule: nothing here does I/O.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable
from typing import Any, Final

from discofilter.simapi.encoding import deep_copy

JsonObj = dict[str, Any]

_SERVICE_CIDR: Final = ipaddress.ip_network("10.96.0.0/12")


def _image_pull_policy(image: str) -> str:
    # SetDefaults_Container: ":latest" or no tag (and no digest) pulls always.
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def _default_probe(probe: JsonObj) -> None:
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    http_get = probe.get("httpGet")
    if isinstance(http_get, dict):
        http_get.setdefault("path", "/")
        http_get.setdefault("scheme", "HTTP")


def _default_container(container: JsonObj) -> None:
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    container.setdefault("resources", {})
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("imagePullPolicy", _image_pull_policy(str(container.get("image", ""))))
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(probe_name)
        if isinstance(probe, dict):
            _default_probe(probe)


def _qos_class(spec: JsonObj) -> str:
    """``qos.GetPodQOS`` for the common cases: no requests/limits anywhere is BestEffort; limits equal to
    requests for cpu and memory in every container is Guaranteed; anything else Burstable."""
    containers = [
        c for c in (spec.get("containers") or []) + (spec.get("initContainers") or []) if isinstance(c, dict)
    ]
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        requests = dict(res.get("requests") or {})
        limits = res.get("limits") or {}
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            limit = limits.get(name)
            if limit is None or requests.get(name, limit) != limit:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


_DEFAULT_TOLERATIONS: Final = (
    {
        "key": "node.kubernetes.io/not-ready",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
    {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
)


def _default_pod(obj: JsonObj) -> None:
    spec = obj.setdefault("spec", {})
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if isinstance(container, dict):
            _default_container(container)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    # DefaultTolerationSeconds admission: tolerate not-ready/unreachable nodes for 5 minutes.
    tolerations = spec.setdefault("tolerations", [])
    if isinstance(tolerations, list):
        present = {(t.get("key"), t.get("effect")) for t in tolerations if isinstance(t, dict)}
        for toleration in _DEFAULT_TOLERATIONS:
            if (toleration["key"], toleration["effect"]) not in present:
                tolerations.append(dict(toleration))
    # Priority admission: no priorityClassName means priority 0 and the default preemption policy.
    spec.setdefault("priority", 0)
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")


def _default_service(obj: JsonObj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "targetPort" not in port and "port" in port:
                port["targetPort"] = port["port"]
    if spec["type"] != "ExternalName":
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec["type"] == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)


def apply_defaults(resource: str, obj: JsonObj) -> None:
    """Fill in server-side defaults in place (create and update both run them, as the real server does)."""
    if resource == "pods":
        _default_pod(obj)
    elif resource == "services":
        _default_service(obj)
    elif resource == "namespaces":
        name = str((obj.get("metadata") or {}).get("name", ""))
        labels = obj.setdefault("metadata", {}).setdefault("labels", {})
        # Since 1.22 the apiserver pins this label to the namespace's name (NamespaceDefaultLabelName).
        labels["kubernetes.io/metadata.name"] = name
        spec = obj.setdefault("spec", {})
        spec.setdefault("finalizers", ["kubernetes"])
    elif resource == "secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
    elif resource in ("endpoints", "endpointslices"):
        ports: list[Any] = []
        if resource == "endpoints":
            for subset in obj.get("subsets") or []:
                if isinstance(subset, dict):
                    ports.extend(subset.get("ports") or [])
        else:
            ports = list(obj.get("ports") or [])
        for port in ports:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


def initial_status(resource: str, obj: JsonObj) -> None:
    """The status a create starts from: the registry strategies reset what clients send (PrepareForCreate)."""
    if resource == "pods":
        obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj.get("spec") or {})}
    elif resource == "services":
        obj["status"] = {"loadBalancer": {}}
    elif resource == "namespaces":
        obj["status"] = {"phase": "Active"}


def allocate_cluster_ip(obj: JsonObj, others: Iterable[JsonObj]) -> None:
    """Give a new Service a free ClusterIP (and NodePorts for NodePort/LoadBalancer), like the allocators."""
    spec = obj.setdefault("spec", {})
    if spec.get("type") == "ExternalName":
        return
    others = list(others)
    if not spec.get("clusterIP"):
        used = {str((o.get("spec") or {}).get("clusterIP")) for o in others}
        for offset in range(10, _SERVICE_CIDR.num_addresses - 1):
            candidate = str(_SERVICE_CIDR.network_address + offset)
            if candidate not in used:
                spec["clusterIP"] = candidate
                break
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        used_ports = {p.get("nodePort") for o in others for p in (o.get("spec") or {}).get("ports") or []}
        next_port = 30000
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and not port.get("nodePort"):
                while next_port in used_ports:
                    next_port += 1
                port["nodePort"] = next_port
                used_ports.add(next_port)


def keep_cluster_ip(current: JsonObj, new: JsonObj) -> None:
    """An update that leaves out the ClusterIP keeps the allocated one (it is immutable)."""
    cur_spec = current.get("spec") or {}
    spec = new.setdefault("spec", {})
    for name in ("clusterIP", "clusterIPs"):
        if name in cur_spec and not spec.get(name):
            spec[name] = deep_copy(cur_spec[name])

"""Table cells of the types served here: kubectl's printers as kube-apiserver runs them (1.28).

``pkg/printers/internalversion/printers.go`` prints each object into the cells of a Table row; the server
always includes the wide (priority 1) columns. Pods are in podprinter.py. The cells here match kubectl's;
the column descriptions (OpenAPI field docs in the real server) are abridged except Name and Age.

Rule: nothing here does I/O; ``now`` is passed in.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

JsonObj = dict[str, Any]
Row = list[Any]
Column = tuple[str, str, int, str]
"""(name, format, priority, description) of a column definition."""
Printer = Callable[[Mapping[str, Any], float], Row]

NAME_DOC: Final = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources "
    "may allow a client to request the generation of an appropriate name automatically. Name is primarily "
    "intended for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
AGE_DOC: Final = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not "
    "guaranteed to be set in happens-before order across separate operations. Clients may not set this "
    "value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null "
    "for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)


def parse_time(text: Any) -> float | None:
    """An RFC 3339 timestamp (seconds precision, as the API prints them) as epoch seconds."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """apimachinery ``duration.HumanDuration``: ``9m31s``, ``2m27s``, ``5h``, ``3d4h``..."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 60 * 2:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 8 * 24:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 365 * 24 * 2:
        return f"{hours // 24}d"
    if hours < 365 * 24 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def since(timestamp: Any, now: float) -> str:
    when = parse_time(timestamp)
    return "<unknown>" if when is None else human_duration(now - when)


def _labels_text(labels: Mapping[str, str] | None) -> str:
    if not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _service_cells(svc: Mapping[str, Any], now: float) -> Row:
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    external_ips = list(spec.get("externalIPs") or [])
    if kind == "ExternalName":
        external = str(spec.get("externalName") or "<none>")
    elif kind == "LoadBalancer":
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        found = [str(i.get("ip") or i.get("hostname") or "") for i in ingress] + external_ips
        external = ",".join(x for x in found if x) or "<pending>"
    else:
        external = ",".join(external_ips) or "<none>"
    ports = []
    for port in spec.get("ports") or []:
        protocol = port.get("protocol") or "TCP"
        if port.get("nodePort"):
            ports.append(f"{port.get('port')}:{port['nodePort']}/{protocol}")
        else:
            ports.append(f"{port.get('port')}/{protocol}")
    return [
        meta.get("name", ""),
        kind,
        spec.get("clusterIP") or "<none>",
        external,
        ",".join(ports) or "<none>",
        since(meta.get("creationTimestamp"), now),
        _labels_text(spec.get("selector")),
    ]


def _endpoints_text(ep: Mapping[str, Any]) -> str:
    subsets = ep.get("subsets") or []
    if not subsets:
        return "<none>"
    shown: list[str] = []
    count = 0
    more = False
    for subset in subsets:
        addresses = subset.get("addresses") or []
        ports = subset.get("ports") or [None]
        for port in ports:
            count += len(addresses)
            for address in addresses:
                if len(shown) == 3:
                    more = True
                    break
                ip = str(address.get("ip", ""))
                if port is None:
                    shown.append(ip)
                else:
                    host = f"[{ip}]" if ":" in ip else ip
                    shown.append(f"{host}:{port.get('port')}")
    text = ",".join(shown)
    return f"{text} + {count - 3} more..." if more else text


def _three(items: Sequence[str], empty: str) -> str:
    if not items:
        return empty
    if len(items) > 3:
        return ",".join(items[:3]) + f" + {len(items) - 3} more..."
    return ",".join(items)


def _slice_cells(eps: Mapping[str, Any], now: float) -> Row:
    meta = eps.get("metadata") or {}
    ports = [str(p.get("port")) if p.get("port") is not None else "<unset>" for p in eps.get("ports") or []]
    addresses = [str(a) for e in eps.get("endpoints") or [] for a in e.get("addresses") or []]
    return [
        meta.get("name", ""),
        eps.get("addressType", ""),
        _three(ports, "<unset>"),
        _three(addresses, "<unset>"),
        since(meta.get("creationTimestamp"), now),
    ]


def _node_cells(node: Mapping[str, Any], now: float) -> Row:
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    state = "Unknown"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            state = "Ready" if condition.get("status") == "True" else "NotReady"
    if spec.get("unschedulable"):
        state += ",SchedulingDisabled"
    roles = sorted(
        k.split("/", 1)[1]
        for k in (meta.get("labels") or {})
        if k.startswith("node-role.kubernetes.io/") and "/" in k
    )
    info = status.get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [
        meta.get("name", ""),
        state,
        ",".join(r for r in roles if r) or "<none>",
        since(meta.get("creationTimestamp"), now),
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP") or "<none>",
        addresses.get("ExternalIP") or "<none>",
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _simple(*extra: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any], float], Row]:
    def cells(obj: Mapping[str, Any], now: float) -> Row:
        meta = obj.get("metadata") or {}
        return [meta.get("name", ""), *(f(obj) for f in extra), since(meta.get("creationTimestamp"), now)]

    return cells


PRINTERS: Final[
    Mapping[str, tuple[tuple[tuple[str, str, int, str], ...], Callable[[Mapping[str, Any], float], Row]]]
] = {
    "namespaces": (
        (
            ("Name", "name", 0, NAME_DOC),
            ("Status", "", 0, "The status of the namespace"),
            ("Age", "", 0, AGE_DOC),
        ),
        lambda o, now: [
            (o.get("metadata") or {}).get("name", ""),
            (o.get("status") or {}).get("phase", ""),
            since((o.get("metadata") or {}).get("creationTimestamp"), now),
        ],
    ),
    "services": (
        (
            ("Name", "name", 0, NAME_DOC),
            ("Type", "", 0, "type determines how the Service is exposed."),
            ("Cluster-IP", "", 0, "clusterIP is the IP address of the service."),
            (
                "External-IP",
                "",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept "
                "traffic for this service.",
            ),
            ("Port(s)", "", 0, "The list of ports that are exposed by this service."),
            ("Age", "", 0, AGE_DOC),
            (
                "Selector",
                "",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ),
        _service_cells,
    ),
    "endpoints": (
        (
            ("Name", "name", 0, NAME_DOC),
            ("Endpoints", "", 0, "Endpoints of the service"),
            ("Age", "", 0, AGE_DOC),
        ),
        lambda o, now: [
            (o.get("metadata") or {}).get("name", ""),
            _endpoints_text(o),
            since((o.get("metadata") or {}).get("creationTimestamp"), now),
        ],
    ),
    "endpointslices": (
        (
            ("Name", "name", 0, NAME_DOC),
            (
                "AddressType",
                "",
                0,
                "addressType specifies the type of address carried by this EndpointSlice.",
            ),
            (
                "Ports",
                "",
                0,
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ),
            ("Endpoints", "", 0, "endpoints is a list of unique endpoints in this slice."),
            ("Age", "", 0, AGE_DOC),
        ),
        _slice_cells,
    ),
    "nodes": (
        (
            ("Name", "name", 0, NAME_DOC),
            ("Status", "", 0, "The status of the node"),
            ("Roles", "", 0, "The roles of the node"),
            ("Age", "", 0, AGE_DOC),
            ("Version", "", 0, "Kubelet Version reported by the node."),
            ("Internal-IP", "", 1, "List of addresses reachable to the node."),
            ("External-IP", "", 1, "List of addresses reachable to the node."),
            (
                "OS-Image",
                "",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            (
                "Kernel-Version",
                "",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            (
                "Container-Runtime",
                "",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. "
                "containerd://1.4.2).",
            ),
        ),
        _node_cells,
    ),
    "configmaps": (
        (
            ("Name", "name", 0, NAME_DOC),
            ("Data", "", 0, "Data contains the configuration data."),
            ("Age", "", 0, AGE_DOC),
        ),
        _simple(lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
    ),
    "secrets": (
        (
            ("Name", "name", 0, NAME_DOC),
            ("Type", "", 0, "Used to facilitate programmatic handling of secret data."),
            ("Data", "", 0, "Data contains the secret data."),
            ("Age", "", 0, AGE_DOC),
        ),
        _simple(lambda o: o.get("type", ""), lambda o: len(o.get("data") or {})),
    ),
    "serviceaccounts": (
        (
            ("Name", "name", 0, NAME_DOC),
            (
                "Secrets",
                "string",
                0,
                "Secrets is a list of the secrets in the same namespace that pods running using this "
                "ServiceAccount are allowed to use.",
            ),
            ("Age", "", 0, AGE_DOC),
        ),
        _simple(lambda o: str(len(o.get("secrets") or []))),
    ),
    "leases": (
        (
            ("Name", "name", 0, NAME_DOC),
            ("Holder", "", 0, "holderIdentity contains the identity of the holder of a current lease."),
            ("Age", "", 0, AGE_DOC),
        ),
        _simple(lambda o: (o.get("spec") or {}).get("holderIdentity") or ""),
    ),
    "events": (
        (
            ("Name", "name", 0, NAME_DOC),
            ("Type", "", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
            (
                "Reason",
                "",
                0,
                "This should be a short, machine understandable string that gives the reason for the "
                "transition into the object's current status.",
            ),
            ("Message", "", 0, "A human-readable description of the status of this operation."),
            ("Age", "", 0, AGE_DOC),
        ),
        _simple(lambda o: o.get("type", ""), lambda o: o.get("reason", ""), lambda o: o.get("message", "")),
    ),
}

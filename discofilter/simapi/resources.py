"""The resource types the simulated API server serves, with what discovery and the handlers need of each.

The set is what istiod and discofilter touch: the four filtered collections (pods, services, endpoints,
``discovery.k8s.io/v1`` endpointslices), namespaces, and the generic ones that pass through discofilter
untouched (nodes, configmaps, secrets, serviceaccounts, core events, ``coordination.k8s.io/v1`` leases).
Verbs, short names and categories are those of kube-apiserver 1.28's discovery documents, so ``kubectl``
resolves ``po``, ``svc`` and ``ep`` here as it does against a real cluster.

Rule: nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

JsonObj = dict[str, Any]

ALL_VERBS: Final = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
# Fields every type accepts in a fieldSelector (apimachinery's DefaultClusterScopedAttr/NamespaceScopedAttr).
_META_FIELDS: Final = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One served collection. ``name`` (the plural) is the key the store and the handlers use."""

    name: str
    kind: str
    group: str
    version: str
    namespaced: bool
    singular: str
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[str, ...] = ()
    """Subresources listed in discovery (``pods/status``...); the handlers serve status, binding and log."""
    field_labels: frozenset[str] = _META_FIELDS
    """Fields a fieldSelector may use; anything else is ``field label not supported`` (400)."""
    bookmark_body: Mapping[str, Any] = field(default_factory=dict)
    """The zero-valued fields Go prints after ``metadata`` in a BOOKMARK object of this kind (README fact 5:
    a bookmark is a ``new(Pod)`` with only the resourceVersion set, so non-omitempty fields show up)."""
    has_status: bool = False
    """Whether ``status`` is a subresource: writes to the main resource keep the stored status."""
    has_generation: bool = False
    """Whether the registry maintains ``metadata.generation`` (of this set, only EndpointSlices in 1.28)."""
    returns_deleted_object: bool = False
    """Whether DELETE answers with the object (``ReturnDeletedObject`` in the registry) or a Status."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def path_prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def with_type_meta(self, obj: Mapping[str, Any]) -> JsonObj:
        """The object as a watch event or a GET carries it: ``kind`` and ``apiVersion`` first."""
        out: JsonObj = {"kind": self.kind, "apiVersion": self.api_version}
        for key, value in obj.items():
            if key not in ("kind", "apiVersion"):
                out[key] = value
        return out

    def bookmark(self, resource_version: int, annotations: Mapping[str, str] | None = None) -> JsonObj:
        """A BOOKMARK object exactly as the real server prints it (watch-*.json, watchlist-pods.json)."""
        meta: JsonObj = {"resourceVersion": str(resource_version), "creationTimestamp": None}
        if annotations:
            meta["annotations"] = dict(annotations)
        out: JsonObj = {"kind": self.kind, "apiVersion": self.api_version, "metadata": meta}
        for key, value in self.bookmark_body.items():
            out[key] = _fresh(value)
        return out


def _fresh(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _fresh(v) for k, v in value.items()}
    return value


_POD_FIELDS: Final = _META_FIELDS | {
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
}
_EVENT_FIELDS: Final = _META_FIELDS | {
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
}

_ALL: Final = (
    ResourceType(
        "namespaces",
        "Namespace",
        "",
        "v1",
        namespaced=False,
        singular="namespace",
        short_names=("ns",),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
        subresources=("status",),
        field_labels=frozenset({"metadata.name", "status.phase"}),
        bookmark_body={"spec": {}, "status": {}},
        has_status=True,
        returns_deleted_object=True,
    ),
    ResourceType(
        "pods",
        "Pod",
        "",
        "v1",
        namespaced=True,
        singular="pod",
        short_names=("po",),
        categories=("all",),
        subresources=("binding", "log", "status"),
        field_labels=_POD_FIELDS,
        bookmark_body={"spec": {"containers": None}, "status": {}},
        has_status=True,
        returns_deleted_object=True,
    ),
    ResourceType(
        "services",
        "Service",
        "",
        "v1",
        namespaced=True,
        singular="service",
        short_names=("svc",),
        categories=("all",),
        verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"),
        subresources=("status",),
        bookmark_body={"spec": {}, "status": {"loadBalancer": {}}},
        has_status=True,
        returns_deleted_object=True,
    ),
    ResourceType(
        "endpoints", "Endpoints", "", "v1", namespaced=True, singular="endpoints", short_names=("ep",)
    ),
    ResourceType(
        "endpointslices",
        "EndpointSlice",
        "discovery.k8s.io",
        "v1",
        namespaced=True,
        singular="endpointslice",
        bookmark_body={"addressType": "", "endpoints": None, "ports": None},
        has_generation=True,
    ),
    ResourceType(
        "nodes",
        "Node",
        "",
        "v1",
        namespaced=False,
        singular="node",
        short_names=("no",),
        subresources=("status",),
        field_labels=frozenset({"metadata.name", "spec.unschedulable"}),
        bookmark_body={
            "spec": {},
            "status": {
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                "nodeInfo": {
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kernelVersion": "",
                    "osImage": "",
                    "containerRuntimeVersion": "",
                    "kubeletVersion": "",
                    "kubeProxyVersion": "",
                    "operatingSystem": "",
                    "architecture": "",
                },
            },
        },
        has_status=True,
    ),
    ResourceType(
        "configmaps", "ConfigMap", "", "v1", namespaced=True, singular="configmap", short_names=("cm",)
    ),
    ResourceType(
        "secrets",
        "Secret",
        "",
        "v1",
        namespaced=True,
        singular="secret",
        field_labels=_META_FIELDS | {"type"},
    ),
    ResourceType(
        "serviceaccounts",
        "ServiceAccount",
        "",
        "v1",
        namespaced=True,
        singular="serviceaccount",
        short_names=("sa",),
    ),
    ResourceType(
        "events",
        "Event",
        "",
        "v1",
        namespaced=True,
        singular="event",
        short_names=("ev",),
        field_labels=_EVENT_FIELDS,
        bookmark_body={
            "involvedObject": {},
            "reason": "",
            "message": "",
            "source": {},
            "firstTimestamp": None,
            "lastTimestamp": None,
            "type": "",
            "eventTime": None,
            "reportingComponent": "",
            "reportingInstance": "",
        },
    ),
    ResourceType(
        "leases",
        "Lease",
        "coordination.k8s.io",
        "v1",
        namespaced=True,
        singular="lease",
        bookmark_body={"spec": {}},
    ),
)

RESOURCES: Final[Mapping[str, ResourceType]] = MappingProxyType({rt.name: rt for rt in _ALL})
"""Every served resource by plural name (unique across the served groups)."""

FILTERED_RESOURCES: Final = frozenset({"pods", "services", "endpoints", "endpointslices"})
"""The collections discofilter filters; ``SimSettings.forbidden_users`` are refused exactly these."""


def group_versions() -> dict[str, list[ResourceType]]:
    """Served resources by group/version (``v1``, ``discovery.k8s.io/v1``...), in registry order."""
    out: dict[str, list[ResourceType]] = {}
    for rt in _ALL:
        out.setdefault(rt.api_version, []).append(rt)
    return out


def lookup(group: str, version: str, name: str) -> ResourceType | None:
    """The resource served at ``/api[s]/{group}/{version}/{name}``, or None (404 unknown resource)."""
    rt = RESOURCES.get(name)
    if rt is None or rt.group != group or rt.version != version:
        return None
    return rt

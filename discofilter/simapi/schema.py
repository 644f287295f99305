"""Objects as the real server prints them: Go field order, sorted maps, no nil fields.

kube-apiserver decodes every write into a Go struct and encodes it back, so whatever order a client sends
fields in, every answer lists them in the struct's declaration order, prints map keys sorted, and leaves
out nil/omitempty fields. A simulated server that echoed the client's JSON would be detectably different
(and a byte-for-byte proxy test would pass against it for the wrong reason). ``normalize`` reorders the
types served here by the declaration order of ``k8s.io/api`` 1.28; ``tests/simapi`` checks these tables
against every object of the real captures. Fields this table does not know keep their place after the
known ones (the real server would drop them: a documented difference).

Defaults live in defaults.py.

Rule: nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

JsonObj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Struct:
    """A Go struct: its JSON field names in declaration order, with the schema of each."""

    fields: tuple[tuple[str, Schema], ...]
    keep_null: frozenset[str] = frozenset()
    """Fields without ``omitempty``: Go prints them even when nil."""


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Schema


@dataclass(frozen=True, slots=True)
class MapOf:
    """A Go map: encoding/json sorts its keys."""

    value: Schema = None


@dataclass(frozen=True, slots=True)
class Scalar:
    """A Go string or integer: checked where clients slip (names, label values) and where the server
    computes with the value (ports, counts, exit codes)."""

    go_type: str = "string"

    def accepts(self, value: Any) -> bool:
        if self.go_type == "string":
            return isinstance(value, str)
        return isinstance(value, int) and not isinstance(value, bool)


Schema = Struct | ListOf | MapOf | Scalar | None


def _s(*fields: tuple[str, Schema] | str, keep_null: frozenset[str] = frozenset()) -> Struct:
    return Struct(tuple((f, None) if isinstance(f, str) else f for f in fields), keep_null)


STR: Final = Scalar()
INT: Final = Scalar("int32")
STRINGS: Final = MapOf(STR)
"""map[string]string: labels, annotations, selectors, data."""
QUANTITIES: Final = MapOf()
"""map[ResourceName]resource.Quantity: a quantity may be a JSON number or string."""
OWNER_REF: Final = _s("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")
MANAGED_FIELDS: Final = _s(
    "manager", "operation", "apiVersion", "time", "fieldsType", "fieldsV1", "subresource"
)
OBJECT_META: Final = _s(
    ("name", STR),
    ("generateName", STR),
    ("namespace", STR),
    "selfLink",
    ("uid", STR),
    ("resourceVersion", STR),
    ("generation", INT),
    "creationTimestamp",
    "deletionTimestamp",
    ("deletionGracePeriodSeconds", INT),
    ("labels", STRINGS),
    ("annotations", STRINGS),
    ("ownerReferences", ListOf(OWNER_REF)),
    ("finalizers", ListOf(STR)),
    ("managedFields", ListOf(MANAGED_FIELDS)),
    keep_null=frozenset({"creationTimestamp"}),
)
OBJECT_REF: Final = _s("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
KEY_SELECTOR: Final = _s("name", "key", "optional")
ENV_VAR: Final = _s(
    "name",
    "value",
    (
        "valueFrom",
        _s(
            ("fieldRef", _s("apiVersion", "fieldPath")),
            ("resourceFieldRef", _s("containerName", "resource", "divisor")),
            ("configMapKeyRef", KEY_SELECTOR),
            ("secretKeyRef", KEY_SELECTOR),
        ),
    ),
)
RESOURCES: Final = _s(("limits", QUANTITIES), ("requests", QUANTITIES), "claims")
HTTP_GET: Final = _s("path", "port", "host", "scheme", "httpHeaders")
PROBE: Final = _s(
    "exec",
    ("httpGet", HTTP_GET),
    "tcpSocket",
    "grpc",
    "initialDelaySeconds",
    "timeoutSeconds",
    "periodSeconds",
    "successThreshold",
    "failureThreshold",
    "terminationGracePeriodSeconds",
)
CONTAINER: Final = _s(
    ("name", STR),
    ("image", STR),
    "command",
    "args",
    "workingDir",
    ("ports", ListOf(_s("name", "hostPort", ("containerPort", INT), "protocol", "hostIP"))),
    "envFrom",
    ("env", ListOf(ENV_VAR)),
    ("resources", RESOURCES),
    "resizePolicy",
    "restartPolicy",
    (
        "volumeMounts",
        ListOf(_s("name", "readOnly", "mountPath", "subPath", "mountPropagation", "subPathExpr")),
    ),
    "volumeDevices",
    ("livenessProbe", PROBE),
    ("readinessProbe", PROBE),
    ("startupProbe", PROBE),
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
    "tty",
)
TOLERATION: Final = _s("key", "operator", "value", "effect", "tolerationSeconds")
POD_SPEC: Final = _s(
    "volumes",
    ("initContainers", ListOf(CONTAINER)),
    ("containers", ListOf(CONTAINER)),
    "ephemeralContainers",
    "restartPolicy",
    ("terminationGracePeriodSeconds", INT),
    "activeDeadlineSeconds",
    "dnsPolicy",
    ("nodeSelector", STRINGS),
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "nodeName",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "shareProcessNamespace",
    "securityContext",
    "imagePullSecrets",
    "hostname",
    "subdomain",
    "affinity",
    "schedulerName",
    ("tolerations", ListOf(TOLERATION)),
    "hostAliases",
    "priorityClassName",
    "priority",
    "dnsConfig",
    "readinessGates",
    "runtimeClassName",
    "enableServiceLinks",
    "preemptionPolicy",
    ("overhead", QUANTITIES),
    "topologySpreadConstraints",
    "setHostnameAsFQDN",
    "os",
    "hostUsers",
    "schedulingGates",
    "resourceClaims",
    keep_null=frozenset({"containers"}),
)
CONTAINER_STATE: Final = _s(
    ("waiting", _s("reason", "message")),
    ("running", _s("startedAt", keep_null=frozenset({"startedAt"}))),
    (
        "terminated",
        _s(
            ("exitCode", INT),
            ("signal", INT),
            "reason",
            "message",
            "startedAt",
            "finishedAt",
            "containerID",
            keep_null=frozenset({"startedAt", "finishedAt"}),
        ),
    ),
)
CONTAINER_STATUS: Final = _s(
    "name",
    ("state", CONTAINER_STATE),
    ("lastState", CONTAINER_STATE),
    "ready",
    ("restartCount", INT),
    "image",
    "imageID",
    "containerID",
    "started",
    ("allocatedResources", QUANTITIES),
    ("resources", RESOURCES),
)
# metav1.Time is a struct: omitempty never drops it, and a zero one prints as null.
CONDITION: Final = _s(
    "type",
    "status",
    "lastProbeTime",
    "lastTransitionTime",
    "reason",
    "message",
    keep_null=frozenset({"lastProbeTime", "lastTransitionTime"}),
)
POD_STATUS: Final = _s(
    "phase",
    ("conditions", ListOf(CONDITION)),
    "message",
    "reason",
    "nominatedNodeName",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    ("initContainerStatuses", ListOf(CONTAINER_STATUS)),
    ("containerStatuses", ListOf(CONTAINER_STATUS)),
    "qosClass",
    ("ephemeralContainerStatuses", ListOf(CONTAINER_STATUS)),
    "resize",
    "resourceClaimStatuses",
)
SERVICE_SPEC: Final = _s(
    ("ports", ListOf(_s("name", "protocol", "appProtocol", ("port", INT), "targetPort", ("nodePort", INT)))),
    ("selector", STRINGS),
    ("clusterIP", STR),
    ("clusterIPs", ListOf(STR)),
    ("type", STR),
    ("externalIPs", ListOf(STR)),
    "sessionAffinity",
    "loadBalancerIP",
    ("loadBalancerSourceRanges", ListOf(STR)),
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "publishNotReadyAddresses",
    "sessionAffinityConfig",
    ("ipFamilies", ListOf(STR)),
    "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts",
    "loadBalancerClass",
    "internalTrafficPolicy",
)
ENDPOINT_ADDRESS: Final = _s("ip", "hostname", "nodeName", ("targetRef", OBJECT_REF))
SLICE_ENDPOINT: Final = _s(
    ("addresses", ListOf(STR)),
    ("conditions", _s("ready", "serving", "terminating")),
    "hostname",
    ("targetRef", OBJECT_REF),
    ("deprecatedTopology", STRINGS),
    "nodeName",
    "zone",
    "hints",
)
NODE_STATUS: Final = _s(
    ("capacity", QUANTITIES),
    ("allocatable", QUANTITIES),
    "phase",
    ("conditions", ListOf(CONDITION)),
    ("addresses", ListOf(_s("type", "address"))),
    "daemonEndpoints",
    (
        "nodeInfo",
        _s(
            "machineID",
            "systemUUID",
            "bootID",
            "kernelVersion",
            "osImage",
            "containerRuntimeVersion",
            "kubeletVersion",
            "kubeProxyVersion",
            "operatingSystem",
            "architecture",
        ),
    ),
    "images",
    "volumesInUse",
    "volumesAttached",
    "config",
)

TOP_LEVEL: Final[Mapping[str, Struct]] = {
    "pods": _s(("metadata", OBJECT_META), ("spec", POD_SPEC), ("status", POD_STATUS)),
    "services": _s(
        ("metadata", OBJECT_META),
        ("spec", SERVICE_SPEC),
        (
            "status",
            _s(
                ("loadBalancer", _s(("ingress", ListOf(_s("ip", "hostname", "ipMode", "ports"))))),
                ("conditions", ListOf(CONDITION)),
            ),
        ),
    ),
    "namespaces": _s(
        ("metadata", OBJECT_META),
        ("spec", _s("finalizers")),
        ("status", _s("phase", ("conditions", ListOf(CONDITION)))),
    ),
    "endpoints": _s(
        ("metadata", OBJECT_META),
        (
            "subsets",
            ListOf(
                _s(
                    ("addresses", ListOf(ENDPOINT_ADDRESS)),
                    ("notReadyAddresses", ListOf(ENDPOINT_ADDRESS)),
                    ("ports", ListOf(_s("name", ("port", INT), "protocol", "appProtocol"))),
                )
            ),
        ),
    ),
    "endpointslices": _s(
        ("metadata", OBJECT_META),
        "addressType",
        ("endpoints", ListOf(SLICE_ENDPOINT)),
        ("ports", ListOf(_s("name", "protocol", ("port", INT), "appProtocol"))),
        keep_null=frozenset({"endpoints", "ports"}),
    ),
    "nodes": _s(
        ("metadata", OBJECT_META),
        (
            "spec",
            _s("podCIDR", "podCIDRs", "providerID", "unschedulable", "taints", "configSource", "externalID"),
        ),
        ("status", NODE_STATUS),
    ),
    "configmaps": _s(("metadata", OBJECT_META), "immutable", ("data", STRINGS), ("binaryData", STRINGS)),
    "secrets": _s(("metadata", OBJECT_META), "immutable", ("data", STRINGS), ("stringData", STRINGS), "type"),
    "serviceaccounts": _s(
        ("metadata", OBJECT_META),
        ("secrets", ListOf(OBJECT_REF)),
        "imagePullSecrets",
        "automountServiceAccountToken",
    ),
    "events": _s(
        ("metadata", OBJECT_META),
        ("involvedObject", OBJECT_REF),
        "reason",
        "message",
        "source",
        "firstTimestamp",
        "lastTimestamp",
        "count",
        "type",
        "eventTime",
        "series",
        "action",
        ("related", OBJECT_REF),
        "reportingComponent",
        "reportingInstance",
        keep_null=frozenset({"firstTimestamp", "lastTimestamp", "eventTime"}),
    ),
    "leases": _s(
        ("metadata", OBJECT_META),
        (
            "spec",
            _s("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions"),
        ),
    ),
}


def _normalize(value: Any, schema: Schema) -> Any:
    if schema is None or isinstance(schema, Scalar):
        return value
    if isinstance(schema, ListOf):
        if isinstance(value, list):
            return [_normalize(_zero(schema.item) if item is None else item, schema.item) for item in value]
        return value
    if not isinstance(value, dict):
        return value
    if isinstance(schema, MapOf):
        return {key: _normalize(value[key], schema.value) for key in sorted(value)}
    out: JsonObj = {}
    for name, sub in schema.fields:
        if name in value:
            item = value[name]
            if item is None and name not in schema.keep_null:
                continue
            if isinstance(sub, MapOf) and item == {}:
                continue  # an empty map is omitempty's "empty"
            out[name] = _normalize(item, sub)
    for name, item in value.items():
        if name not in out and item is not None and all(name != known for known, _ in schema.fields):
            out[name] = item
    return out


def _zero(schema: Schema) -> Any:
    # Go decodes a null list element into the element type's zero value.
    if isinstance(schema, Struct):
        return {}
    if isinstance(schema, Scalar):
        return "" if schema.go_type == "string" else 0
    return None


def normalize(resource: str, obj: JsonObj) -> JsonObj:
    """``obj`` (without kind/apiVersion) re-serialized the way Go would print the type of ``resource``."""
    schema = TOP_LEVEL.get(resource)
    if schema is None:
        meta = obj.get("metadata")
        out = dict(obj)
        if isinstance(meta, dict):
            out["metadata"] = _normalize(meta, OBJECT_META)
        return out
    result: JsonObj = _normalize(obj, schema)
    return result


def normalize_meta(meta: JsonObj) -> JsonObj:
    """``metadata`` alone in ObjectMeta order (for types whose other fields are left as they are)."""
    result: JsonObj = _normalize(meta, OBJECT_META)
    return result


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _shape_problem(value: Any, schema: Schema, path: str) -> tuple[str, str, str] | None:
    """(JSON type found, Go type wanted, field path) of the first mismatch, or None."""
    if schema is None or value is None:
        return None
    if isinstance(schema, Scalar):
        return None if schema.accepts(value) else (_json_type(value), schema.go_type, path)
    if isinstance(schema, ListOf):
        if not isinstance(value, list):
            return _json_type(value), "array", path
        for item in value:
            if item is None:
                continue  # becomes the zero value
            problem = _shape_problem(item, schema.item, path)
            if problem is not None:
                return problem
        return None
    if not isinstance(value, dict):
        return _json_type(value), "map" if isinstance(schema, MapOf) else "object", path
    if isinstance(schema, MapOf):
        for item in value.values():
            problem = _shape_problem(item, schema.value, path)
            if problem is not None:
                return problem
        return None
    for name, sub in schema.fields:
        if name in value:
            problem = _shape_problem(value[name], sub, f"{path}.{name}")
            if problem is not None:
                return problem
    return None


def shape_problem(resource: str, kind: str, obj: JsonObj) -> str | None:
    """Why Go's decoder would refuse ``obj`` as a ``kind`` (``json: cannot unmarshal ...``), or None.

    Only the structure this module knows is checked: objects where structs are, arrays where lists are,
    strings where names and labels are. The message follows Go's wording; the type names are simplified."""
    schema = TOP_LEVEL.get(resource) or Struct((("metadata", OBJECT_META),))
    problem = _shape_problem(obj, schema, kind)
    if problem is None:
        return None
    found, wanted, path = problem
    return f"json: cannot unmarshal {found} into Go struct field {path} of type {wanted}"

"""Builders of the churn's objects, from the real objects in ``templates.py``, without I/O.

Every object is in the API server's stored form (Go field order, no kind/apiVersion, managedFields kept),
and shares the template's unchanged parts (the store copies what it keeps, nothing here mutates them).
One pod's life goes through the stages ``watch-pods.json`` shows: created (Pending, unscheduled), bound
(the scheduler's binding), initializing (the kubelet's first status) and running (podIP, ready).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from discofilter.bench import templates

JsonObj = dict[str, Any]
MESH_LABEL: Final = "istio-injection"
_META_ORDER: Final = (
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)
_APP_WORDS: Final = (
    "checkout", "payments", "catalog", "reviews", "ranker", "search", "cart", "ledger", "notify", "auth",
    "profile", "orders", "billing", "gateway", "inventory", "shipping", "pricing", "metrics", "ingest",
    "audit",
)  # fmt: skip
_HASH_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
_ZONES: Final = ("us-east-1a", "us-east-1b", "us-east-1c")


def ordered_meta(base: Mapping[str, Any], **updates: Any) -> JsonObj:
    """ObjectMeta in Go field order; an update to None drops the key."""
    merged = {**base, **updates}
    return {k: merged[k] for k in _META_ORDER if merged.get(k) is not None}


def replaced(base: Mapping[str, Any], **updates: Any) -> JsonObj:
    """A copy of ``base`` keeping its key order, with values replaced (None drops the key)."""
    out = {k: updates.get(k, v) for k, v in base.items()}
    return {k: v for k, v in out.items() if v is not None}


@dataclass(slots=True)
class Pod:
    name: str
    uid: str
    ip: str
    node: str
    zone: str
    host_ip: str
    obj: JsonObj = field(default_factory=dict)
    terminating: bool = False


@dataclass(slots=True)
class App:
    """A Deployment's pods and the Service, Endpoints and EndpointSlice that follow them."""

    namespace: str
    name: str
    pod_hash: str
    rs_uid: str
    service_uid: str
    slice_name: str
    mesh_pods: bool
    """Pods built from the mesh template (the namespace was in the mesh when the app was made)."""
    pods: list[Pod] = field(default_factory=list)
    service: JsonObj = field(default_factory=dict)
    endpoints: JsonObj = field(default_factory=dict)
    endpoint_slice: JsonObj = field(default_factory=dict)


class Objects:
    """Builds objects; names, uids and node choices come from the seeded ``rng``."""

    def __init__(self, rng: random.Random, nodes: int, clock: Callable[[], float] = time.time) -> None:
        self._rng = rng
        self._nodes = nodes
        self._clock = clock
        self._ip = 0
        self._services = 0
        self._mesh_pod = templates.load("MESH_POD")
        self._plain_pod = templates.load("PLAIN_POD")

    def word(self) -> str:
        return self._rng.choice(_APP_WORDS)

    def suffix(self, n: int) -> str:
        return "".join(self._rng.choices(_HASH_ALPHABET, k=n))

    def uid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def now(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock()))

    def namespace(self, ns: str, mesh: bool, old: JsonObj | None) -> JsonObj:
        t = templates.load("NAMESPACE")
        labels = {k: v for k, v in t["metadata"]["labels"].items() if k != MESH_LABEL}
        labels["kubernetes.io/metadata.name"] = ns
        if mesh:
            labels[MESH_LABEL] = "enabled"
        uid = old["metadata"]["uid"] if old else self.uid()
        created = old["metadata"]["creationTimestamp"] if old else self.now()
        meta = ordered_meta(
            t["metadata"],
            name=ns,
            uid=uid,
            creationTimestamp=created,
            labels=dict(sorted(labels.items())),
        )
        return replaced(t, metadata=meta)

    def app(self, ns: str, mesh: bool) -> App:
        """A new app in ``ns`` with its Service (Endpoints and EndpointSlice come with its pods)."""
        name = f"{self.word()}-{self.suffix(3)}"
        app = App(ns, name, self.suffix(10), self.uid(), self.uid(), f"{name}-{self.suffix(5)}", mesh)
        t = templates.load("SERVICE")
        labels = {"app": name, "service": name}
        meta = ordered_meta(
            t["metadata"],
            name=name,
            namespace=ns,
            uid=app.service_uid,
            creationTimestamp=self.now(),
            labels=labels,
        )
        self._services += 1
        n = self._services
        ip = f"10.96.{(n >> 8) & 255}.{n & 255}"
        spec = replaced(t["spec"], selector={"app": name}, clusterIP=ip, clusterIPs=[ip])
        app.service = replaced(t, metadata=meta, spec=spec)
        return app

    def pod(self, app: App) -> Pod:
        self._ip += 1
        n = self._ip
        node = self._rng.randrange(self._nodes)
        subnet, host = node // 250 + 1, node % 250 + 10
        return Pod(
            name=f"{app.name}-{app.pod_hash}-{self.suffix(5)}",
            uid=self.uid(),
            ip=f"10.{244 + (n >> 16) % 8}.{(n >> 8) & 255}.{n & 255}",
            node=f"ip-10-0-{subnet}-{host}.ec2.internal",
            zone=_ZONES[node % len(_ZONES)],
            host_ip=f"10.0.{subnet}.{host}",
        )

    def pod_obj(self, app: App, pod: Pod, stage: str) -> JsonObj:
        t = self._mesh_pod if app.mesh_pods else self._plain_pod
        tmeta = t["metadata"]
        labels = replaced(tmeta["labels"], app=app.name, **{"pod-template-hash": app.pod_hash})
        owner = [replaced(tmeta["ownerReferences"][0], name=f"{app.name}-{app.pod_hash}", uid=app.rs_uid)]
        managed = (
            tmeta["managedFields"] if stage in ("initializing", "running") else tmeta["managedFields"][:1]
        )
        created = pod.obj["metadata"]["creationTimestamp"] if pod.obj else self.now()
        meta = ordered_meta(
            tmeta,
            name=pod.name,
            generateName=f"{app.name}-{app.pod_hash}-",
            namespace=app.namespace,
            uid=pod.uid,
            creationTimestamp=created,
            labels=labels,
            ownerReferences=owner,
            managedFields=managed,
        )
        if stage == "created":
            spec = {k: v for k, v in t["spec"].items() if k != "nodeName"}
        else:
            spec = replaced(t["spec"], nodeName=pod.node)
        return {"metadata": meta, "spec": spec, "status": self._pod_status(t["status"], pod, stage)}

    def _pod_status(self, running: Mapping[str, Any], pod: Pod, stage: str) -> JsonObj:
        qos = running["qosClass"]
        now = self.now()
        scheduled = {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }
        if stage == "created":
            return {"phase": "Pending", "qosClass": qos}
        if stage == "bound":
            return {"phase": "Pending", "conditions": [scheduled], "qosClass": qos}
        host_ip = pod.host_ip
        if stage == "running":
            return replaced(running, hostIP=host_ip, podIP=pod.ip, podIPs=[{"ip": pod.ip}])
        # initializing: the kubelet's first status, as at RV 507 of watch-pods.json.
        waiting = {"waiting": {"reason": "PodInitializing"}}

        def unready(c: Mapping[str, Any]) -> JsonObj:
            return {
                "name": c["name"], "state": waiting, "lastState": {}, "ready": False, "restartCount": 0,
                "image": c["image"], "imageID": "", "started": False,
            }  # fmt: skip

        conditions = [
            {"type": t, "status": "False", "lastProbeTime": None, "lastTransitionTime": now}
            for t in ("Initialized", "Ready", "ContainersReady")
        ]
        status: JsonObj = {"phase": "Pending", "conditions": [*conditions, scheduled], "hostIP": host_ip}
        status["startTime"] = now
        if running.get("initContainerStatuses"):
            status["initContainerStatuses"] = [unready(c) for c in running["initContainerStatuses"]]
        status["containerStatuses"] = [unready(c) for c in running["containerStatuses"]]
        status["qosClass"] = qos
        return status

    def _target(self, app: App, pod: Pod) -> JsonObj:
        return {"kind": "Pod", "namespace": app.namespace, "name": pod.name, "uid": pod.uid}

    def endpoints(self, app: App) -> JsonObj:
        t = templates.load("ENDPOINTS")
        ready = [p for p in app.pods if not p.terminating and p.obj.get("status", {}).get("podIP")]
        old = app.endpoints.get("metadata") or {}
        meta = ordered_meta(
            t["metadata"],
            name=app.name,
            namespace=app.namespace,
            uid=old.get("uid") or self.uid(),
            creationTimestamp=old.get("creationTimestamp") or self.now(),
            labels={"app": app.name, "service": app.name},
            annotations={"endpoints.kubernetes.io/last-change-trigger-time": self.now()},
        )
        addresses = [{"ip": p.ip, "nodeName": p.node, "targetRef": self._target(app, p)} for p in ready]
        if not addresses:
            return {"metadata": meta}  # Go's omitempty: no subsets at all
        return {"metadata": meta, "subsets": [{"addresses": addresses, "ports": t["subsets"][0]["ports"]}]}

    def endpoint_slice(self, app: App) -> JsonObj:
        t = templates.load("ENDPOINT_SLICE")
        old = app.endpoint_slice.get("metadata") or {}
        tmeta = t["metadata"]
        labels = replaced(tmeta["labels"], app=app.name, service=app.name)
        labels["kubernetes.io/service-name"] = app.name
        owner = [replaced(tmeta["ownerReferences"][0], name=app.name, uid=app.service_uid)]
        meta = ordered_meta(
            tmeta,
            name=app.slice_name,
            generateName=f"{app.name}-",
            namespace=app.namespace,
            uid=old.get("uid") or self.uid(),
            generation=int(old.get("generation", 0)) + 1,
            creationTimestamp=old.get("creationTimestamp") or self.now(),
            labels=labels,
            annotations={"endpoints.kubernetes.io/last-change-trigger-time": self.now()},
            ownerReferences=owner,
        )
        endpoints = [
            {
                "addresses": [p.ip],
                "conditions": {"ready": not p.terminating, "serving": True, "terminating": p.terminating},
                "targetRef": self._target(app, p),
                "nodeName": p.node,
                "zone": p.zone,
            }
            for p in app.pods
            if p.obj.get("status", {}).get("podIP")
        ]
        return replaced(t, metadata=meta, endpoints=endpoints)

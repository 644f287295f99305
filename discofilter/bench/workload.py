"""The churn model: a seeded generator of the writes a busy cluster makes, without I/O.

Every object is built from the real objects in ``templates.py`` (kube-apiserver 1.28 captures, see
``objects.py``), so event sizes are those of a real cluster: a mesh pod is ~20 KB of JSON, a plain pod
~11 KB, both with managedFields.

One pod life is the sequence ``watch-pods.json`` shows, plus the controllers that follow pods:

1. pod ADDED (Pending, not scheduled), 2. pod MODIFIED (bound to a node: the scheduler's binding),
3. pod MODIFIED (kubelet: initializing, hostIP, waiting containers), 4. pod MODIFIED (kubelet: Running,
podIP, ready), 5. Endpoints MODIFIED (address added), 6. EndpointSlice MODIFIED (endpoint added); then,
keeping each app at its size, an older pod of the same app goes: 7. pod MODIFIED (deletionTimestamp),
8. Endpoints MODIFIED (address removed), 9. EndpointSlice MODIFIED (endpoint terminating),
10. pod DELETED, 11. EndpointSlice MODIFIED (endpoint removed).

That is ``EVENTS_PER_POD_LIFE`` (11) events per pod created and deleted. ``inflight`` lives progress at
once, interleaved at random, as pods of many apps do in a real cluster. Namespace label flips move a
namespace in or out of the mesh. The generator hands out resourceVersions itself (the simulated API
server stores each write verbatim with ``Store.apply``), and logs every write with whether its
namespace was in the mesh at that moment: that log, not any proxy's output, is what the benchmark
checks the proxies against.

Rule 1: no I/O, no asyncio. Same settings and seed, same sequence of writes.
"""

from __future__ import annotations

import random
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from discofilter.bench.objects import App, Objects, ordered_meta, replaced

JsonObj = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]

WATCHED: Final = ("pods", "services", "endpoints", "endpointslices")
"""What istiod watches among the filtered resources (core/v1 Endpoints only before Istio 1.19)."""
EVENTS_PER_POD_LIFE: Final = 11
MARKER_ANNOTATION: Final = "bench.discofilter.io/marker"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSettings:
    namespaces: int = 500
    """500 namespaces: a mid-size multi-tenant cluster (the scalability limit is 10k). Membership tracking
    and per-namespace filtering cost grow with it."""
    mesh_fraction: float = 0.1
    """10% of namespaces in the mesh: the share at which istiod's wasted work is the story of
    istio/istio#41658 and #50084, and the share the benchmark's NET goal (<= 0.3) is stated for."""
    apps_per_namespace: int = 2
    """Two apps (Deployment + Service + Endpoints + EndpointSlice) per namespace, as in the captures."""
    pods_per_app: int = 2
    """Two replicas per app: with 500 namespaces, 2,000 pods and ~30 MB of pod JSON, which every
    relist moves, and which keeps the whole run within minutes on 2 cores."""
    nodes: int = 100
    """Node names pods are bound to; only their length and variety matter."""
    inflight: int = 16
    """Pod lives in progress at once: events of different pods interleave as under a rollout."""
    seed: int = 1
    """Everything random (uids, names, which namespaces are in the mesh, the interleaving) follows it."""

    def __post_init__(self) -> None:
        # Plain ValueError: the CLI turns it into a one-line ConfigError; no I/O module owns this one.
        if self.namespaces < 2:
            raise ValueError("--namespaces must be at least 2 (one mesh and one plain namespace)")
        if not 0.0 < self.mesh_fraction < 1.0:
            raise ValueError("--mesh-fraction must be strictly between 0 and 1")
        if self.apps_per_namespace < 1 or self.pods_per_app < 1:
            raise ValueError("--apps-per-namespace and --pods-per-app must be at least 1")
        if self.inflight < 1 or self.nodes < 1:
            raise ValueError("inflight and nodes must be at least 1")

    @property
    def mesh_namespaces(self) -> int:
        return max(1, min(self.namespaces - 1, round(self.namespaces * self.mesh_fraction)))


@dataclass(frozen=True, slots=True)
class Write:
    """One write to apply to the store: ``obj`` already carries its resourceVersion ``rv``."""

    resource: str
    type: EventType
    obj: JsonObj
    rv: int
    namespace: str
    mesh: bool


class EventLog:
    """Every write of the watched resources: resourceVersion, resource and mesh flag, compactly."""

    __slots__ = ("mesh", "resource", "rv")

    def __init__(self) -> None:
        self.rv = array("q")
        self.resource = array("b")
        self.mesh = array("b")

    def add(self, write: Write) -> None:
        if write.resource in WATCHED:
            self.rv.append(write.rv)
            self.resource.append(WATCHED.index(write.resource))
            self.mesh.append(1 if write.mesh else 0)

    def counts(self, after_rv: int, upto_rv: int) -> dict[str, dict[str, int]]:
        """Per watched resource: events with ``after_rv < rv <= upto_rv``, all and in the mesh."""
        out = {r: {"events": 0, "mesh_events": 0} for r in WATCHED}
        for rv, res, mesh in zip(self.rv, self.resource, self.mesh, strict=True):
            if after_rv < rv <= upto_rv:
                entry = out[WATCHED[res]]
                entry["events"] += 1
                entry["mesh_events"] += mesh
        return out


class Churn:
    """The generator. ``initial_state`` first, then ``step`` for each write, ``flip`` and ``markers``."""

    def __init__(
        self, settings: WorkloadSettings, *, first_rv: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.log = EventLog()
        self._rng = random.Random(settings.seed)
        self._objects = Objects(self._rng, settings.nodes, clock)
        self._rv = first_rv - 1
        names = [f"{self._objects.word()}-{i:04d}" for i in range(settings.namespaces)]
        mesh = set(self._rng.sample(names, settings.mesh_namespaces))
        self.namespaces: dict[str, bool] = {n: n in mesh for n in names}
        """Namespace -> in the mesh now (the generator's own view, which the log records)."""
        self.marker_namespace = sorted(mesh)[0]
        """A mesh namespace never flipped: end-of-stream markers are written there."""
        self._flippable = sorted(set(names) - mesh)
        self._flipped: str | None = None
        self._namespace_objs: dict[str, JsonObj] = {}
        self._apps: list[App] = []
        self._lanes: list[Iterator[Write]] = []
        self._markers = 0
        self._created = 0
        self._lifecycle_apps: dict[str, App] = {}

    # --- setup --------------------------------------------------------------------------------------------

    def initial_state(self) -> dict[str, list[JsonObj]]:
        """The cluster before the churn: namespaces, apps with their Service, Endpoints, EndpointSlice
        and Running pods. Objects carry resourceVersions; ``rv`` is the newest. Not logged as events."""
        s = self.settings
        out: dict[str, list[JsonObj]] = {r: [] for r in ("namespaces", *WATCHED)}
        for ns, mesh in self.namespaces.items():
            obj = self._stamp(self._objects.namespace(ns, mesh, None))
            self._namespace_objs[ns] = obj
            out["namespaces"].append(obj)
            for _ in range(s.apps_per_namespace):
                app = self._objects.app(ns, mesh)
                self._apps.append(app)
                app.service = self._stamp(app.service)
                out["services"].append(app.service)
                for _ in range(s.pods_per_app):
                    pod = self._objects.pod(app)
                    app.pods.append(pod)
                    pod.obj = self._stamp(self._objects.pod_obj(app, pod, "running"))
                    out["pods"].append(pod.obj)
                app.endpoints = self._stamp(self._objects.endpoints(app))
                app.endpoint_slice = self._stamp(self._objects.endpoint_slice(app))
                out["endpoints"].append(app.endpoints)
                out["endpointslices"].append(app.endpoint_slice)
        return out

    @property
    def rv(self) -> int:
        """The newest resourceVersion handed out."""
        return self._rv

    # --- churn --------------------------------------------------------------------------------------------

    def step(self) -> Write:
        """The next write of the churn: one stage of one of ``inflight`` interleaved pod lives."""
        while True:
            while len(self._lanes) < self.settings.inflight:
                self._lanes.append(self._pod_life(self._rng.choice(self._apps)))
            i = self._rng.randrange(len(self._lanes))
            write = next(self._lanes[i], None)
            if write is not None:
                return write
            self._lanes.pop(i)

    def flip(self) -> Write:
        """Move a plain namespace into the mesh, or the last one moved back out (label flips alternate)."""
        if self._flipped is None:
            ns = self._rng.choice(self._flippable)
            self._flipped, joining = ns, True
        else:
            ns, self._flipped, joining = self._flipped, None, False
        return self.relabel(ns, joining)

    def relabel(self, ns: str, joining: bool) -> Write:
        """The label flip of an existing namespace ``ns`` into (or out of) the mesh."""
        self.namespaces[ns] = joining
        old = self._namespace_objs.get(ns)
        write = self._write("namespaces", "MODIFIED", self._objects.namespace(ns, joining, old), ns)
        self._namespace_objs[ns] = write.obj
        return write

    def plain_namespace(self) -> str:
        """A namespace out of the mesh that no flip has touched: the next to join (deterministic)."""
        return next(n for n in self._flippable if not self.namespaces[n] and n != self._flipped)

    # --- namespace lifecycle ------------------------------------------------------------------------------

    def create_namespace(self) -> list[Write]:
        """A new mesh namespace, labelled from birth, then one app in it (Service, Running pods, Endpoints,
        EndpointSlice), in the order a ``kubectl apply`` of a namespace and a Deployment writes them.
        The app stays out of the churn, so ``delete_namespace`` can take everything away again."""
        self._created += 1
        ns = f"{self._objects.word()}-new{self._created:02d}"
        self.namespaces[ns] = True
        out = [self._write("namespaces", "ADDED", self._objects.namespace(ns, True, None), ns)]
        self._namespace_objs[ns] = out[0].obj
        app = self._objects.app(ns, True)
        app.service = (w := self._write("services", "ADDED", app.service, ns)).obj
        out.append(w)
        for _ in range(self.settings.pods_per_app):
            pod = self._objects.pod(app)
            app.pods.append(pod)
            pod.obj = (w := self._write("pods", "ADDED", self._objects.pod_obj(app, pod, "running"), ns)).obj
            out.append(w)
        app.endpoints = (w := self._write("endpoints", "ADDED", self._objects.endpoints(app), ns)).obj
        out.append(w)
        app.endpoint_slice = (
            w := self._write("endpointslices", "ADDED", self._objects.endpoint_slice(app), ns)
        ).obj
        out.append(w)
        self._lifecycle_apps[ns] = app
        return out

    def delete_namespace(self, ns: str) -> list[Write]:
        """Delete a namespace made by ``create_namespace`` as the namespace controller does: the namespace
        MODIFIED (deletionTimestamp, Terminating), every object in it DELETED, then the namespace DELETED
        once its finalizer is done; each DELETED carries the object as last stored."""
        app = self._lifecycle_apps.pop(ns)
        old = self._namespace_objs.pop(ns)
        meta = ordered_meta(old["metadata"], deletionTimestamp=self._objects.now())
        terminating = replaced(old, metadata=meta, status={"phase": "Terminating"})
        out = [ending := self._write("namespaces", "MODIFIED", terminating, ns)]
        for pod in app.pods:
            out.append(self._write("pods", "DELETED", pod.obj, ns))
        for resource, obj in (
            ("endpointslices", app.endpoint_slice),
            ("endpoints", app.endpoints),
            ("services", app.service),
        ):
            out.append(self._write(resource, "DELETED", obj, ns))
        out.append(self._write("namespaces", "DELETED", ending.obj, ns))
        del self.namespaces[ns]
        return out

    @property
    def lifecycle_namespaces(self) -> list[str]:
        """Namespaces ``create_namespace`` made that are not deleted yet, oldest first."""
        return list(self._lifecycle_apps)

    def markers(self) -> dict[str, Write]:
        """One MODIFIED per watched resource in the marker namespace: the last event of a stream, kept by
        every proxy, so a client knows the stream before it has fully arrived."""
        self._markers += 1
        app = next(a for a in self._apps if a.namespace == self.marker_namespace)
        out: dict[str, Write] = {}
        ann = {MARKER_ANNOTATION: str(self._markers)}
        pod = next(p for p in app.pods if not p.terminating)
        current: dict[str, JsonObj] = {
            "pods": pod.obj,
            "services": app.service,
            "endpoints": app.endpoints,
            "endpointslices": app.endpoint_slice,
        }
        for resource, obj in current.items():
            meta = obj["metadata"]
            annotations = {**(meta.get("annotations") or {}), **ann}
            new = replaced(obj, metadata=ordered_meta(meta, annotations=annotations))
            write = out[resource] = self._write(resource, "MODIFIED", new, app.namespace)
            if resource == "pods":
                pod.obj = write.obj
            elif resource == "services":
                app.service = write.obj
            elif resource == "endpoints":
                app.endpoints = write.obj
            else:
                app.endpoint_slice = write.obj
        return out

    def _pod_life(self, app: App) -> Iterator[Write]:
        pod = self._objects.pod(app)
        app.pods.append(pod)
        stages: tuple[tuple[str, EventType], ...] = (
            ("created", "ADDED"),
            ("bound", "MODIFIED"),
            ("initializing", "MODIFIED"),
            ("running", "MODIFIED"),
        )
        for stage, etype in stages:
            write = self._write("pods", etype, self._objects.pod_obj(app, pod, stage), app.namespace)
            pod.obj = write.obj
            yield write
        yield self._update_endpoints(app)
        yield self._update_slice(app)
        live = [p for p in app.pods if not p.terminating]
        if len(live) <= self.settings.pods_per_app:
            return
        old = live[0]
        old.terminating = True
        meta = old.obj["metadata"]
        deleting = ordered_meta(meta, deletionTimestamp=self._objects.now(), deletionGracePeriodSeconds=30)
        marked = replaced(old.obj, metadata=deleting)
        write = self._write("pods", "MODIFIED", marked, app.namespace)
        old.obj = write.obj
        yield write
        yield self._update_endpoints(app)
        yield self._update_slice(app)
        app.pods.remove(old)
        yield self._write("pods", "DELETED", old.obj, app.namespace)
        yield self._update_slice(app)

    def _update_endpoints(self, app: App) -> Write:
        write = self._write("endpoints", "MODIFIED", self._objects.endpoints(app), app.namespace)
        app.endpoints = write.obj
        return write

    def _update_slice(self, app: App) -> Write:
        write = self._write("endpointslices", "MODIFIED", self._objects.endpoint_slice(app), app.namespace)
        app.endpoint_slice = write.obj
        return write

    def _write(self, resource: str, etype: EventType, obj: JsonObj, namespace: str) -> Write:
        # Every stored state carries the resourceVersion of the write that produced it, a DELETED the
        # deletion's (simapi history.py, ``_remove``).
        obj = self._stamp(obj)
        write = Write(resource, etype, obj, self._rv, namespace, self.namespaces.get(namespace, False))
        self.log.add(write)
        return write

    def _stamp(self, obj: JsonObj) -> JsonObj:
        self._rv += 1
        return replaced(obj, metadata=replaced(obj["metadata"], resourceVersion=str(self._rv)))

"""Property: namespaces created, deleted and relabelled on any schedule, with any skew between the
namespace stream and the pods stream, leave a client exact, and it relists once per label flip of a
namespace that existed (for discofilter: whose creation the namespace stream had shown), never for a
creation or a deletion.

The world is simulated here, apart from the code under test: one etcd revision counter, a history per
namespace, and two streams (namespaces, pods) that each keep their own order but are delivered in any
interleaving (hypothesis draws it). discofilter's side is the real core: ``Membership`` fed by the
namespace stream, a ``WatchFilter`` on the pods stream, a ``ListStream`` for the client's relists, and
the resolver's two facts, simulated: a lookup reads a namespace at the server's current revision, and
waiting for the namespace watch delivers the namespace stream. The client is a client-go-like cache.

A name deleted and created again keeps its membership here: created again with the other one, the
re-creation is a flip only when the namespace stream showed the deletion before anything looked the
new one up (``Membership._reborn_other``), which depends on timing; ``test_lifecycle.py`` pins it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discofilter.core.liststream import ListStream
from discofilter.core.membership import Membership
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS
from discofilter.core.watchfilter import NamespaceDecisions, WatchFilter

NAMES = ("n0", "n1", "n2")
MESH = {"istio-injection": "enabled"}


def member(labels: dict[str, str] | None) -> bool:  # the reference: Istio's default selector, by hand
    return labels is not None and labels.get("istio-injection") == "enabled"


@dataclass
class World:
    rv: int = 1
    ns: dict[str, dict[str, str]] = field(default_factory=dict)
    history: dict[str, list[tuple[int, dict[str, str] | None]]] = field(default_factory=dict)
    pods: dict[tuple[str, str], int] = field(default_factory=dict)
    ns_stream: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    pod_stream: list[tuple[int, bytes]] = field(default_factory=list)
    last_membership: dict[str, bool] = field(default_factory=dict)
    """Membership the name had when it was last deleted (a re-creation keeps it: module docstring)."""
    serial: int = 0

    def _tick(self) -> int:
        self.rv += 1
        return self.rv

    def _ns_event(self, etype: str, name: str, labels: dict[str, str]) -> None:
        rv = self._tick()
        self.history.setdefault(name, []).append((rv, None if etype == "DELETED" else labels))
        obj: dict[str, object] = {"metadata": {"name": name, "resourceVersion": str(rv), "labels": labels}}
        self.ns_stream.append((etype, obj))

    def _pod_event(self, etype: str, ns: str, name: str) -> None:
        rv = self._tick()
        line = orjson.dumps(
            {
                "type": etype,
                "object": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv)},
                },
            }
        )
        self.pod_stream.append((rv, line + b"\n"))
        if etype == "DELETED":
            del self.pods[(ns, name)]
        else:
            self.pods[(ns, name)] = rv

    def create(self, name: str, mesh: bool, npods: int) -> None:
        mesh = self.last_membership.get(name, mesh)
        self.last_membership[name] = mesh
        labels = dict(MESH) if mesh else {"team": "x"}
        self.ns[name] = labels
        self._ns_event("ADDED", name, labels)
        for _ in range(npods):
            self.add_pod(name)

    def add_pod(self, name: str) -> None:
        self.serial += 1
        self._pod_event("ADDED", name, f"p{self.serial}")

    def delete(self, name: str) -> None:
        for ns, pod in [k for k in self.pods if k[0] == name]:
            self._pod_event("DELETED", ns, pod)
        labels = self.ns.pop(name)
        self.last_membership[name] = member(labels)
        self._ns_event("DELETED", name, labels)

    def relabel(self, name: str, mesh: bool) -> bool:
        """Returns whether membership changed."""
        before = member(self.ns[name])
        labels = dict(MESH) if mesh else {"team": "y"}
        self.ns[name] = labels
        self._ns_event("MODIFIED", name, labels)
        return before != member(labels)

    def state_at(self, name: str, rv: int) -> dict[str, str] | None:
        labels: dict[str, str] | None = None
        for at, lab in self.history.get(name, []):
            if at <= rv:
                labels = lab
        return labels

    def truth(self) -> set[tuple[str, str]]:
        return {k for k in self.pods if member(self.ns.get(k[0]))}


class Undecidable(Exception):
    pass


class Sim:
    """discofilter (the real core) between the world's streams and one client."""

    def __init__(self, world: World, synced_rv: int) -> None:
        self.w = world
        self.m = Membership(DEFAULT_MESH_SELECTORS)
        self.m.replace(
            [{"metadata": {"name": n, "labels": lab}} for n, lab in world.ns.items()], str(synced_rv)
        )
        self.ns_pos = len(world.ns_stream)
        self.pod_pos = len(world.pod_stream)
        self.delivered = synced_rv
        self.relists = 0
        self.seen_created: set[str] = set(world.ns)
        """Namespaces whose current incarnation's creation the namespace stream has shown."""
        self.cache: set[tuple[str, str]] = set()
        self.relist()

    def lookup(self, name: str) -> None:
        at = self.w.rv  # a lookup reads the present
        labels = self.w.state_at(name, at)
        obj = None if labels is None else {"metadata": {"name": name, "labels": labels}}
        self.m.learn(name, obj, str(at))

    def resolve(self, ns: str, rv: int | None) -> None:
        """The resolver: a lookup, then the namespace watch until it can decide (or relist)."""
        if self.m.decide_at(ns, rv) is not None:
            return
        self.lookup(ns)
        while self.m.decide_at(ns, rv) is None:
            if self.ns_pos == len(self.w.ns_stream):
                raise Undecidable(ns)
            if self.deliver_ns():
                return  # relisted: the stream that waited is gone

    def relist(self) -> None:
        items = [
            {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv)}}
            for (ns, name), rv in self.w.pods.items()
        ]
        # The world is ahead of ``delivered`` only by undelivered events; a LIST reads the world now,
        # so the watch resumes after everything the LIST saw.
        at = self.w.rv
        self.delivered = max(self.delivered, at)
        body = orjson.dumps({"kind": "PodList", "metadata": {"resourceVersion": str(at)}, "items": items})
        stream = ListStream(self.m)
        out = stream.feed(body)
        while stream.blocked is not None:
            self.resolve(stream.blocked.namespace, stream.blocked.rv)
            out += stream.feed(b"")
        last, _ = stream.finish()
        doc = orjson.loads(out + last)
        self.cache = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in doc["items"]}
        while self.pod_pos < len(self.w.pod_stream) and self.w.pod_stream[self.pod_pos][0] <= at:
            self.pod_pos += 1
        self.filter = WatchFilter(self.m, decisions=NamespaceDecisions())

    def deliver_ns(self) -> bool:
        """One namespace event to the tracker. Returns whether it made the client relist."""
        etype, obj = self.w.ns_stream[self.ns_pos]
        self.ns_pos += 1
        meta = obj["metadata"]
        assert isinstance(meta, dict)
        self.delivered = max(self.delivered, int(meta["resourceVersion"]))
        if etype == "ADDED":
            self.seen_created.add(meta["name"])
        elif etype == "DELETED":
            self.seen_created.discard(meta["name"])
        if self.m.apply(etype, obj):
            self.relists += 1
            self.relist()
            return True
        return False

    def deliver_pod(self) -> None:
        rv, line = self.w.pod_stream[self.pod_pos]
        self.pod_pos += 1
        self.delivered = max(self.delivered, rv)
        self.take(self.filter.feed_joined(line))
        while self.filter.blocked is not None:
            filt = self.filter
            assert filt.blocked is not None
            self.resolve(filt.blocked.namespace, filt.blocked.rv)
            if self.filter is not filt:
                return  # a flip made the client relist meanwhile
            self.take(filt.resume())

    def take(self, kept: bytes) -> None:
        for line in kept.splitlines():
            ev = orjson.loads(line)
            meta = ev["object"]["metadata"]
            key = (meta["namespace"], meta["name"])
            if ev["type"] == "DELETED":
                self.cache.discard(key)
            else:
                self.cache.add(key)


OPS = st.lists(
    st.tuples(
        st.sampled_from(("create", "delete", "relabel", "pod", "deliver_ns", "deliver_pod")),
        st.sampled_from(NAMES),
        st.booleans(),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.lists(st.booleans(), min_size=0, max_size=2), ops=OPS, tail=st.lists(st.booleans()))
def test_any_lifecycle_schedule_under_any_skew_leaves_the_client_exact(
    initial: list[bool], ops: list[tuple[str, str, bool, int]], tail: list[bool]
) -> None:
    w = World()
    for i, mesh in enumerate(initial):
        w.create(NAMES[i], mesh, 1)
    sim = Sim(w, w.rv)
    flips = 0
    for op, name, flag, n in ops:
        if op == "create" and name not in w.ns:
            w.create(name, flag, n)
        elif op == "delete" and name in w.ns:
            w.delete(name)
        elif op == "relabel" and name in w.ns and name in sim.seen_created:
            # Only a namespace discofilter has seen exists for it: its flip is today's relist.
            flips += w.relabel(name, flag)
        elif op == "pod" and name in w.ns:
            w.add_pod(name)
        elif op == "deliver_ns" and sim.ns_pos < len(w.ns_stream):
            sim.deliver_ns()
        elif op == "deliver_pod" and sim.pod_pos < len(w.pod_stream):
            sim.deliver_pod()
    # Drain both streams in a drawn interleaving, then whatever is left.
    for ns_first in [*tail, *[True] * len(w.ns_stream), *[False] * len(w.pod_stream)]:
        if ns_first and sim.ns_pos < len(w.ns_stream):
            sim.deliver_ns()
        elif not ns_first and sim.pod_pos < len(w.pod_stream):
            sim.deliver_pod()
    assert sim.ns_pos == len(w.ns_stream) and sim.pod_pos == len(w.pod_stream)
    assert sim.filter.blocked is None
    assert sim.cache == w.truth()
    assert sim.relists == flips

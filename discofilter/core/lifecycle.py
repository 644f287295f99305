"""Namespace lifecycle: deciding the events of namespaces that are being created or were deleted.

A namespace created in the mesh, or a mesh namespace deleted, must cost no relist: nothing of a new
namespace was ever withheld from a client, and a deleted namespace's objects are all deleted (and
those DELETED events reach the client) before it is. The hard part is that the namespace watch and
the pods watch are not ordered against each other:

- a pod ADDED in a new namespace can reach the pods watch before the namespace's ADDED reaches the
  namespace watch (istio ``pkg/kube/namespace/filter.go`` says the same of istiod's own informers);
- a pod DELETED of a namespace being deleted can arrive after the namespace's own DELETED.

resourceVersions are etcd revisions, one counter for every kind, so they order events across streams:
an object of a namespace has an RV above the namespace's creation, and every DELETED of its contents
comes before the namespace's final DELETED.

The rules (``core.membership`` applies them; nothing here guesses):

1. A namespace known to be alive is decided by its labels, as before. A label or selector change of a
   namespace that exists is a *flip*: the affected watches end with 410 and clients relist.
2. A namespace's first appearance is not a flip. Its events are never decided before it is known: an
   event of a namespace membership has not seen stops its stream until the namespace is resolved
   (``discofilter.resolver``: a LIST of that one namespace with discofilter's own credentials, single
   flight, shared by every watch; the found state is taken as the namespace watch's would have been).
3. A namespace's DELETED is not a flip. It leaves a ``Tombstone`` (deleted at D, was or was not a
   member): an event of that name with RV < D belongs to the departed namespace and is decided by the
   tombstone; one with RV > D belongs to a new namespace of the same name (rule 2).
4. When none of this can decide an event (the namespace is gone, and the namespace watch never showed
   it, or a tombstone was forgotten), the watch ends with 410, as for a flip: the client relists rather
   than discofilter guessing.

Rule 1 of the core: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

# Tombstones must outlive the API server's watch history (about 5 minutes, etcd compaction): a client
# may resume from any RV still in it and be replayed the late DELETED events of a departed namespace.
# A namespace is deleted at most a few times a second even in CI-heavy clusters, so 65,536 tombstones
# (a few MB) cover hours; one forgotten early only makes its late events end their watch with a 410.
DEFAULT_MAX_TOMBSTONES: Final = 65_536


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A namespace deleted at resourceVersion ``rv``; ``member``: was it in the mesh then."""

    rv: int
    member: bool


class Tombstones:
    """name -> the last deletion of a namespace of that name, an LRU of ``limit`` entries.

    ``forgotten_rv`` is the newest deletion RV evicted: an event older than it of a namespace without a
    tombstone may belong to a departed namespace that was forgotten, so it is never decided from that.
    """

    __slots__ = ("_entries", "forgotten_rv", "limit")

    def __init__(self, limit: int = DEFAULT_MAX_TOMBSTONES) -> None:
        self._entries: OrderedDict[str, Tombstone] = OrderedDict()
        self.limit = limit
        self.forgotten_rv = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> Tombstone | None:
        return self._entries.get(name)

    def put(self, name: str, rv: int, member: bool) -> None:
        self._entries[name] = Tombstone(rv, member)
        self._entries.move_to_end(name)
        while len(self._entries) > self.limit:
            _, old = self._entries.popitem(last=False)
            self.forgotten_rv = max(self.forgotten_rv, old.rv)


@runtime_checkable
class Decider(Protocol):
    """What the filters ask of a live membership beyond ``in`` (``core.membership.Membership``)."""

    def undecided(self, namespace: str) -> bool: ...

    def decide_at(self, namespace: str, rv: int | None) -> bool | None: ...


def decider_of(members: Container[str]) -> Decider | None:
    """``members`` as a Decider, or None for a plain set (tests, the keep-nothing set): then ``in``
    alone decides, as it always did."""
    return members if isinstance(members, Decider) else None


class Undecided(Exception):
    """A filter met an event it cannot decide yet: its stream waits here until ``namespace`` is resolved
    (``rv``: the event's resourceVersion, None when it has none)."""

    def __init__(self, namespace: str, rv: int | None) -> None:
        super().__init__(f"namespace {namespace!r} not known yet (event rv {rv})")
        self.namespace = namespace
        self.rv = rv


def decide(decider: Decider, namespace: str, rv: int | None) -> bool:
    """Keep an event of ``namespace`` at ``rv``? Raises ``Undecided`` when membership cannot tell yet."""
    verdict = decider.decide_at(namespace, rv)
    if verdict is None:
        raise Undecided(namespace, rv)
    return verdict


class ByName:
    """A Container for filters that decide by name only (a JSON list taken whole): ``in`` raises
    ``Undecided`` for a namespace membership cannot decide by its name."""

    __slots__ = ("_decider", "_members")

    def __init__(self, members: Container[str]) -> None:
        self._members = members
        self._decider = decider_of(members)

    def __contains__(self, namespace: object) -> bool:
        if self._decider is not None and isinstance(namespace, str) and self._decider.undecided(namespace):
            return decide(self._decider, namespace, None)
        return namespace in self._members


__all__ = [
    "DEFAULT_MAX_TOMBSTONES",
    "ByName",
    "Decider",
    "Tombstone",
    "Tombstones",
    "Undecided",
    "decide",
    "decider_of",
]

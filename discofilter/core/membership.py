"""Membership: which namespaces are in the mesh, and when that last changed.

A namespace is in the mesh when its labels match any of the selectors (Istio's
``meshConfig.discoverySelectors`` semantics: ORed selectors, ANDed requirements inside one).
A Terminating namespace stays a member while its labels match, so the DELETED events of its objects
still reach istiod; it leaves when the namespace itself is DELETED.

The set is fed from a namespace LIST (``replace``) and WATCH events (``apply``); both return the
namespaces whose membership flipped. Every flip bumps ``generation`` and is remembered per namespace
with the resourceVersion at which it was seen, so the proxy can tell whether a client's state predates
a change (``resume_is_current``).

One namespace can be kept by name whatever its labels (``always_kept``: istiod's own, where its
ingress gateway usually runs). It is a member from construction on, before it exists, while it
exists and after it is deleted, so it never flips: a namespace watch and a pod watch are not ordered
(istio ``pkg/kube/namespace/filter.go`` notes objects can arrive before their namespace), and a flip
at its creation would end every cluster-wide watch with a 410 for nothing. Its objects' DELETED events
reach istiod as a Terminating member's do. Only ``len`` leaves it out while it does not exist, so
"N mesh namespaces of M known" never counts a namespace that is not there.

A namespace's creation and deletion are not flips (``core.lifecycle`` gives the rules): a namespace
not known yet is ``undecided`` until the namespace watch or an on-demand lookup (``learn``) tells its
labels, and a deleted one leaves a tombstone that decides its late events by resourceVersion
(``decide_at``). Only a label or selector change of a namespace that exists flips.

Rule 1: no I/O. ``synced`` is False until the first LIST: filtered reads must fail closed until then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from discofilter.core.lifecycle import Tombstones
from discofilter.core.selectors import SelectorSet

_NEVER: Final = 0
# A selectors change (Istio's discoverySelectors edited) happens at no resourceVersion: it is newer than
# every RV handed out before it, and which later RVs were filtered under it is unknown. Stamping it
# beyond every real etcd revision makes a resume from an RV the ledger does not know (a watch that broke
# off, a restart) relist, until a later namespace flip brings a real RV.
_AFTER_EVERY_RV: Final = 1 << 62


# apimachinery ValidateNamespaceName: a DNS-1123 label, lowercase alphanumerics and '-', at most 63.
_NAMESPACE_NAME: Final = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")


def is_namespace_name(name: str) -> bool:
    """Could ``name`` be a namespace's name (so a typo in a flag is refused, not kept forever)?"""
    return _NAMESPACE_NAME.fullmatch(name) is not None


def parse_rv(rv: str | None) -> int | None:
    """resourceVersions are opaque strings by contract, but etcd-backed ones are integer revisions of
    one store, so pods' and namespaces' RVs compare. A value that is not an integer compares as unknown."""
    if rv is None:
        return None
    try:
        return int(rv)
    except ValueError:
        return None


class Membership:
    """The live set of mesh namespaces. Supports ``ns in membership``."""

    __slots__ = (
        "_changed_gen",
        "_changed_rv",
        "_known_at",
        "_labels",
        "_last_change_gen",
        "_last_change_rv",
        "_members",
        "always_kept",
        "created",
        "deleted",
        "generation",
        "last_rv",
        "revision",
        "selectors",
        "synced",
        "synced_rv",
        "tombstones",
        "version",
    )

    def __init__(self, selectors: SelectorSet, *, always_kept: str | None = None) -> None:
        self.selectors = selectors
        self.always_kept = always_kept
        """A namespace in the mesh by name, whatever the selectors and its labels (None: none)."""
        self.synced = False
        self.generation = 0
        self.synced_rv: int | None = None
        """The namespace LIST resourceVersion of the first sync: changes before it are unknown here."""
        self.last_rv: int | None = None
        self.revision = 0
        """Bumped on every LIST or namespace event taken, member or not: lets a reader skip rechecks."""
        self.version = 0
        """Bumped whenever the member set changes, first sync included: a cache of answers to ``in``
        (the watch filters' shared namespace decisions) is valid exactly while it stands still. The set
        changes nowhere but in ``_recompute``, so no future way of changing membership can miss it."""
        self._labels: dict[str, Mapping[str, str]] = {}
        self._members: set[str] = {always_kept} if always_kept is not None else set()
        self._changed_gen: dict[str, int] = {}
        self._changed_rv: dict[str, int] = {}
        self._last_change_gen = _NEVER
        self._last_change_rv: int | None = None
        self.tombstones = Tombstones()
        """Deleted namespaces, for their late events (``decide_at``)."""
        self._known_at: dict[str, int] = {}
        """Namespaces learned by a lookup (``learn``) at a LIST RV the namespace watch has not reached:
        its events up to that RV are older than what is known, and are not taken."""
        self.created = 0
        """Namespaces that appeared after the first sync (no flip)."""
        self.deleted = 0
        """Namespaces deleted after the first sync (no flip)."""

    def __contains__(self, namespace: object) -> bool:
        return namespace in self._members

    def __len__(self) -> int:
        """Mesh namespaces that exist (the always-kept one is a member even before it exists)."""
        absent = self.always_kept is not None and self.always_kept not in self._labels
        return len(self._members) - absent

    def exists(self, namespace: str) -> bool:
        """Is ``namespace`` known from the namespace LIST and WATCH (mesh or not)?"""
        return namespace in self._labels

    @property
    def members(self) -> frozenset[str]:
        """What ``in`` admits: the always-kept namespace included, even while it does not exist."""
        return frozenset(self._members)

    @property
    def known(self) -> int:
        """How many namespaces are known, members or not."""
        return len(self._labels)

    def replace(self, namespaces: Iterable[Mapping[str, object]], list_rv: str | None) -> frozenset[str]:
        """Take a full namespace LIST. Returns the namespaces whose membership changed.

        After the first sync, a namespace missing from the LIST was deleted (a tombstone at the LIST's
        RV: its objects were all deleted before it, so the late ones are older) and a namespace new in
        it was created: neither is a flip, as on the watch. Only label changes of namespaces in both flip.
        """
        labels: dict[str, Mapping[str, str]] = {}
        for obj in namespaces:
            name, lab = _name_and_labels(obj)
            labels[name] = lab
        rv = parse_rv(list_rv)
        self.revision += 1
        if not self.synced:
            # The first sync establishes the set; nothing a client could hold flipped.
            self._labels = labels
            self._recompute(rv)
            self.synced = True
            self.synced_rv = rv
            return frozenset()
        old = self._labels
        for name, at in list(self._known_at.items()):
            if rv is not None and at > rv and name in old and name not in labels:
                labels[name] = old[name]  # a lookup newer than this LIST told it
            else:
                del self._known_at[name]
        self._labels = labels
        stamp = rv if rv is not None else self.last_rv
        for name in old.keys() - labels.keys():
            self._departed(name, stamp)
        reborn = {name for name in labels.keys() - old.keys() if self._reborn_other(name, labels[name])}
        for name in labels.keys() - old.keys() - reborn:
            self._arrived(name)
        return self._recompute(rv, names=(old.keys() & labels.keys()) | reborn)

    def apply(self, event_type: str, obj: Mapping[str, object]) -> frozenset[str]:
        """Take one namespace WATCH event. Returns the namespaces whose membership changed.

        Creation and deletion return nothing (``core.lifecycle``): only a namespace that exists before
        and after the event can flip.
        """
        name, lab = _name_and_labels(obj)
        meta = obj.get("metadata")
        rv = parse_rv(meta.get("resourceVersion") if isinstance(meta, dict) else None)
        self.revision += 1
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return frozenset()
        at = self._known_at.get(name)
        if at is not None:
            if rv is not None and rv <= at:
                # A lookup already told a newer state: this event is history the decisions already
                # count (taking it would undo, then redo, what the lookup told).
                self._note_rv(rv)
                return frozenset()
            del self._known_at[name]
        if event_type == "DELETED":
            if name in self._labels:
                del self._labels[name]
                self._departed(name, rv if rv is not None else self.last_rv)
            self._note_rv(rv)
            return frozenset()
        if name not in self._labels and not self._reborn_other(name, lab):
            self._labels[name] = lab
            self._arrived(name)
            self._note_rv(rv)
            return frozenset()
        self._labels[name] = lab
        return self._recompute(rv, names=(name,))

    def learn(self, name: str, obj: Mapping[str, object] | None, list_rv: str | None) -> bool:
        """Take an on-demand lookup of one namespace (a LIST of it at ``list_rv``; ``obj`` None when it
        does not exist). Returns whether it told something new: a namespace the namespace watch has not
        shown yet becomes known as of ``list_rv`` (not a flip: nothing of it was decided before)."""
        if obj is None or name in self._labels:
            return False
        at = parse_rv(list_rv)
        if at is None:
            return False  # without the LIST's RV, the namespace watch's older events could not be told apart
        _, lab = _name_and_labels(obj)
        if self._reborn_other(name, lab):
            return False  # a flip: the namespace watch's ADDED must make it, so watches end (apply)
        self.revision += 1
        self._labels[name] = lab
        self._known_at[name] = at
        self._arrived(name)
        return True

    def undecided(self, namespace: str) -> bool:
        """Can an event of ``namespace`` not be decided by its name alone? True while the namespace is
        not known (its stream waits for a lookup), and while it has a tombstone whose membership
        differs from the live namespace's (then the event's resourceVersion decides)."""
        if namespace == self.always_kept:
            return False
        if namespace not in self._labels:
            return True
        tomb = self.tombstones.get(namespace)
        return tomb is not None and tomb.member != (namespace in self._members)

    def decide_at(self, namespace: str, rv: int | None) -> bool | None:
        """Is an object of ``namespace`` whose event carries ``rv`` kept? None when membership cannot
        tell yet (the namespace is not known: look it up; or it cannot be known: relist)."""
        if namespace == self.always_kept:
            return True
        tomb = self.tombstones.get(namespace)
        if tomb is not None and rv is not None and rv < tomb.rv:
            return tomb.member  # the departed namespace's late events
        if namespace in self._labels:
            if tomb is not None and rv is None and tomb.member != (namespace in self._members):
                return None
            return namespace in self._members
        return None

    def _reborn_other(self, name: str, labels: Mapping[str, str]) -> bool:
        """Is ``name`` a namespace created again, with the other membership than its tombstone's?

        Then it is a flip after all: until the namespace watch showed the deletion, events of the new
        namespace (RV above the deletion) were decided by the old one's labels, as if it still lived,
        and nothing tells whether a stream met one. Created again with the same membership, every such
        decision was the right one.
        """
        tomb = self.tombstones.get(name)
        if tomb is None or name == self.always_kept or tomb.member == self.selectors.matches(labels):
            return False
        if tomb.member:  # the baseline _recompute compares against: what the old one's events were
            self._members.add(name)
        return True

    def _note_rv(self, rv: int | None) -> None:
        if rv is not None and (self.last_rv is None or rv > self.last_rv):
            self.last_rv = rv

    def _departed(self, name: str, rv: int | None) -> None:
        """``name`` was deleted at ``rv``: a tombstone, no flip (its objects' DELETED events came first)."""
        member = name in self._members
        if rv is not None:
            self.tombstones.put(name, rv, member)
        if name != self.always_kept:
            self._members.discard(name)
        self.deleted += self.synced
        self.version += 1  # shared decisions of this name must not outlive it

    def _arrived(self, name: str) -> None:
        """``name`` appeared (watch, LIST or lookup): decided from now on, no flip."""
        lab = self._labels[name]
        if name == self.always_kept or self.selectors.matches(lab):
            self._members.add(name)
        self.created += self.synced
        self.version += 1

    def set_selectors(self, selectors: SelectorSet) -> frozenset[str]:
        """Swap the selectors (e.g. Istio's discoverySelectors changed). Returns what changed."""
        self.selectors = selectors
        return self._recompute(None, names=set(self._labels) | self._members, stamp=_AFTER_EVERY_RV)

    def matching(self, selectors: SelectorSet) -> frozenset[str]:
        """The known namespaces that ``selectors`` would admit (e.g. istiod's own discoverySelectors).

        Selectors alone, without ``always_kept``: istiod's discovery filter makes no exception for its
        own namespace (istio ``pkg/kube/namespace/filter.go``: ``Filter`` admits only namespaces the
        selectors match; istio/istio#33586 and #39520, gateways in istio-system lost their config
        until istio-system was labelled). discofilter keeping it costs istiod nothing it would not
        filter itself.
        """
        return frozenset(name for name, lab in self._labels.items() if selectors.matches(lab))

    def changed_since(self, generation: int, namespace: str | None) -> bool:
        """Has membership of ``namespace`` (or of any namespace, for None) changed after ``generation``?"""
        if namespace is None:
            return self._last_change_gen > generation
        return self._changed_gen.get(namespace, _NEVER) > generation

    def resume_is_current(self, rv: str, namespace: str | None) -> bool:
        """Can a client that holds state at ``rv`` (from anywhere) resume watching without a relist?

        Only if no membership change in scope is newer than ``rv``, and ``rv`` is not older than what
        this process has seen from its first sync on (changes before that are unknown to it).
        """
        at = parse_rv(rv)
        if at is None or self.synced_rv is None or at < self.synced_rv:
            return False
        if at < self.tombstones.forgotten_rv:
            return False  # a departed namespace's late events may come, and its tombstone is gone
        last = self._last_change_rv if namespace is None else self._changed_rv.get(namespace)
        return last is None or at >= last

    def _recompute(
        self, rv: int | None, names: Iterable[str] | None = None, stamp: int | None = None
    ) -> frozenset[str]:
        self._note_rv(rv)
        if names is None:
            names = set(self._labels) | self._members
        changed: set[str] = set()
        for name in names:
            lab = self._labels.get(name)
            member = name == self.always_kept or (lab is not None and self.selectors.matches(lab))
            if member != (name in self._members):
                changed.add(name)
                if member:
                    self._members.add(name)
                else:
                    self._members.discard(name)
        if changed:
            self.version += 1
        if changed and self.synced:
            self.generation += 1
            if stamp is None:
                stamp = rv if rv is not None else self.last_rv
            for name in changed:
                self._changed_gen[name] = self.generation
                if stamp is not None:
                    self._changed_rv[name] = stamp
            self._last_change_gen = self.generation
            if stamp is not None:
                self._last_change_rv = stamp
        return frozenset(changed)


def _name_and_labels(obj: Mapping[str, object]) -> tuple[str, Mapping[str, str]]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise ValueError("namespace object without metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("namespace object without a name")
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError(f"namespace {name!r} has malformed labels")
    return name, labels

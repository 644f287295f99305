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

Rule 1: no I/O. ``synced`` is False until the first LIST: filtered reads must fail closed until then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

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
        "_labels",
        "_last_change_gen",
        "_last_change_rv",
        "_members",
        "always_kept",
        "generation",
        "last_rv",
        "revision",
        "selectors",
        "synced",
        "synced_rv",
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
        """Take a full namespace LIST. Returns the namespaces whose membership changed."""
        labels: dict[str, Mapping[str, str]] = {}
        for obj in namespaces:
            name, lab = _name_and_labels(obj)
            labels[name] = lab
        rv = parse_rv(list_rv)
        self._labels = labels
        self.revision += 1
        changed = self._recompute(rv)
        if not self.synced:
            # The first sync establishes the set; nothing a client could hold flipped.
            self.synced = True
            self.synced_rv = rv
            return frozenset()
        return changed

    def apply(self, event_type: str, obj: Mapping[str, object]) -> frozenset[str]:
        """Take one namespace WATCH event. Returns the namespaces whose membership changed."""
        name, lab = _name_and_labels(obj)
        meta = obj.get("metadata")
        rv = parse_rv(meta.get("resourceVersion") if isinstance(meta, dict) else None)
        self.revision += 1
        if event_type == "DELETED":
            self._labels.pop(name, None)
        elif event_type in ("ADDED", "MODIFIED"):
            self._labels[name] = lab
        else:
            return frozenset()
        return self._recompute(rv, only=name)

    def set_selectors(self, selectors: SelectorSet) -> frozenset[str]:
        """Swap the selectors (e.g. Istio's discoverySelectors changed). Returns what changed."""
        self.selectors = selectors
        return self._recompute(None, stamp=_AFTER_EVERY_RV)

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
        last = self._last_change_rv if namespace is None else self._changed_rv.get(namespace)
        return last is None or at >= last

    def _recompute(self, rv: int | None, only: str | None = None, stamp: int | None = None) -> frozenset[str]:
        if rv is not None and (self.last_rv is None or rv > self.last_rv):
            self.last_rv = rv
        names: Iterable[str] = (only,) if only is not None else set(self._labels) | self._members
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

"""How objects leave the simulated API server: graceful deletion, finalizers, the namespace controller.

These follow kube-apiserver 1.28's registry and kube-controller-manager's namespace controller:

* every pod DELETE first writes ``deletionTimestamp`` and ``deletionGracePeriodSeconds`` (a MODIFIED), then,
  with a grace period of 0, the DELETED (``watch-pods.json``: MODIFIED at 548, DELETED at 549). The grace
  period is the request's or the spec's, and 0 for pods never scheduled or already terminal
  (``podStrategy.CheckGracefulDelete``);
* an object with finalizers is only marked, and goes when an update removes the last one;
* a deleted namespace turns Terminating (MODIFIED), its content is deleted, the controller writes its
  "all content removed" conditions (MODIFIED), and the namespace goes (DELETED): ``watch-namespaces.json``
  and ``watch-pods-during-ns-changes.json``.

Rule: nothing here does I/O; time comes from the injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from discofilter.simapi import errors as err
from discofilter.simapi import schema
from discofilter.simapi.encoding import deep_copy
from discofilter.simapi.history import Collection, History, object_key
from discofilter.simapi.printers import parse_time
from discofilter.simapi.resources import RESOURCES

JsonObj = dict[str, Any]

# What the namespace controller of 1.28 writes once a namespace's content is gone (watch-namespaces.json).
_NAMESPACE_DONE_CONDITIONS: Final = (
    ("NamespaceDeletionDiscoveryFailure", "ResourcesDiscovered", "All resources successfully discovered"),
    (
        "NamespaceDeletionGroupVersionParsingFailure",
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        "NamespaceDeletionContentFailure",
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    ("NamespaceContentRemaining", "ContentRemoved", "All content successfully removed"),
    ("NamespaceFinalizersRemaining", "ContentHasNoFinalizers", "All content-preserving finalizers finished"),
)


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What a DELETE did: ``deleted`` is False while the object waits for a grace period or finalizers."""

    object: JsonObj
    deleted: bool


class Lifecycle(History):
    """``History`` plus the deletion flows; ``Store`` builds the API verbs on it."""

    def __init__(
        self,
        *,
        history_window: int,
        clock: Callable[[], float],
        graceful_pod_deletion: bool,
        finalize_namespaces: bool,
    ) -> None:
        super().__init__(history_window=history_window)
        self.clock = clock
        self.graceful_pod_deletion = graceful_pod_deletion
        self.finalize_namespaces = finalize_namespaces

    def _now(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))

    def finalize_namespace(self, name: str) -> None:
        """Run the namespace controller for a Terminating namespace: delete its content, then it."""
        coll = self._coll("namespaces")
        current = coll.objects.get(name)
        if current is None or not (current.get("metadata") or {}).get("deletionTimestamp"):
            raise err.not_found("namespaces", "", name)
        for rt in RESOURCES.values():
            if not rt.namespaced:
                continue
            content = self._coll(rt.name)
            for obj in list(self.objects(rt.name, name)):
                obj_name = str(obj["metadata"]["name"])
                if object_key(rt, name, obj_name) in content.objects:
                    self._delete_object(rt.name, name, obj_name)
        self._maybe_finish_namespace(name)

    def _marked_for_deletion(self, current: JsonObj, grace: int, *, since: float | None = None) -> JsonObj:
        out = deep_copy(current)
        meta = out["metadata"]
        when = (self.clock() if since is None else since) + grace
        meta["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        meta["deletionGracePeriodSeconds"] = grace
        return _reorder_meta(out)

    def _delete_pod(self, coll: Collection, key: str, current: JsonObj, grace: int | None) -> DeleteResult:
        # podStrategy.CheckGracefulDelete (1.28): the spec's grace period unless the request gives one; 0 for
        # pods never scheduled or already terminal.
        spec = current.get("spec") or {}
        phase = (current.get("status") or {}).get("phase")
        period = grace if grace is not None else int(spec.get("terminationGracePeriodSeconds") or 0)
        if not spec.get("nodeName") or phase in ("Succeeded", "Failed") or not self.graceful_pod_deletion:
            period = 0
        if period < 0:
            period = 1  # as Go does: a negative grace period means "as soon as possible"
        meta = current.get("metadata") or {}
        pending = meta.get("deletionGracePeriodSeconds")
        marked = current
        if meta.get("deletionTimestamp") is None or (pending is not None and period < int(pending)):
            since = None
            if meta.get("deletionTimestamp") is not None and pending is not None:
                # A shorter grace period counts from the first request (rest/delete.go BeforeDelete).
                since = (parse_time(meta["deletionTimestamp"]) or self.clock()) - int(pending)
            marked = self._commit(
                coll, "MODIFIED", key, self._marked_for_deletion(current, period, since=since), current
            ).object
        if period == 0 and not meta.get("finalizers"):
            return DeleteResult(deep_copy(self._remove(coll, key, marked).object), True)
        return DeleteResult(deep_copy(marked), False)

    def _delete_namespace(self, coll: Collection, key: str, current: JsonObj) -> DeleteResult:
        if (current.get("metadata") or {}).get("deletionTimestamp"):
            return DeleteResult(deep_copy(current), False)
        terminating = self._marked_for_deletion(current, 0)
        terminating["metadata"].pop("deletionGracePeriodSeconds", None)
        terminating.setdefault("status", {})["phase"] = "Terminating"
        event = self._commit(coll, "MODIFIED", key, schema.normalize("namespaces", terminating), current)
        if self.finalize_namespaces:
            self.finalize_namespace(key)
        gone = key not in coll.objects
        return DeleteResult(deep_copy(event.object), gone)

    def _removed(self, resource: str, key: str) -> None:
        # The namespace controller: the last object of a Terminating namespace lets it go.
        if not RESOURCES[resource].namespaced:
            return
        namespace = key.partition("/")[0]
        ns_obj = self._coll("namespaces").objects.get(namespace)
        if (
            ns_obj is not None
            and (ns_obj.get("metadata") or {}).get("deletionTimestamp")
            and self.finalize_namespaces
        ):
            self._maybe_finish_namespace(namespace)

    def _maybe_finish_namespace(self, name: str) -> None:
        coll = self._coll("namespaces")
        current = coll.objects.get(name)
        if current is None:
            return
        for rt in RESOURCES.values():
            if rt.namespaced and next(self.objects(rt.name, name), None) is not None:
                return  # content still there (graceful pods, finalizers): the controller waits
        now = self._now()
        done = deep_copy(current)
        done.setdefault("status", {})["conditions"] = [
            {"type": t, "status": "False", "lastTransitionTime": now, "reason": r, "message": m}
            for t, r, m in _NAMESPACE_DONE_CONDITIONS
        ]
        event = self._commit(coll, "MODIFIED", name, schema.normalize("namespaces", done), current)
        self._remove(coll, name, event.object)

    def _delete_object(self, resource: str, namespace: str, name: str) -> None:
        """Delete one object of a namespace being finalized (``Store.delete`` in practice)."""
        raise NotImplementedError


def _reorder_meta(obj: JsonObj) -> JsonObj:
    obj["metadata"] = schema.normalize_meta(obj.get("metadata") or {})
    return obj

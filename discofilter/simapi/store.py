"""The simulated API server's state and write semantics, without I/O and without asyncio.

``Store`` stacks three layers: ``History`` (history.py: objects, the global resourceVersion, per-resource
event history and listeners), ``Lifecycle`` (lifecycle.py: graceful deletion, finalizers, the namespace
controller) and, here, what the API server's registry does on top: LIST with selectors, pages and
resourceVersion semantics; create, update, patch, delete and pods/binding, with decoding checks, defaults,
validation and optimistic concurrency. The async HTTP shell (``server.py``) is a thin layer over it.

Invariants:
- Rule 1: no I/O, no asyncio; the clock and the uid source are injected. Not thread-safe: call it from one
  thread (the event loop's, when served).
- A committed object is never mutated again: watch events, history and list answers share it. Methods that
  return one object return a copy; ``list`` and ``objects`` return the stored objects, read-only.
- resourceVersions grow strictly, globally. Per resource, the history holds every event newer than
  ``floor``: a watch or an exact list from an older resourceVersion is 410 Expired, as after an etcd
  compaction. ``compact`` moves the floor on demand; ``history_window`` bounds the history.
- A write that changes nothing stores nothing (no resourceVersion, no event), like etcd's GuaranteedUpdate.
"""

from __future__ import annotations

import bisect
import builtins
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from discofilter.simapi import defaults, schema, validation
from discofilter.simapi import errors as err
from discofilter.simapi.encoding import deep_copy
from discofilter.simapi.history import (
    Collection,
    EventType,
    Listener,
    StoreEvent,
    Subscription,
    object_key,
    strip_type_meta,
    with_resource_version,
)
from discofilter.simapi.lifecycle import DeleteResult, Lifecycle
from discofilter.simapi.listing import ListResult, decode_continue, encode_continue
from discofilter.simapi.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from discofilter.simapi.resources import ResourceType
from discofilter.simapi.selection import ObjectFilter, make_filter
from discofilter.simapi.validation import parse_resource_version

__all__ = [
    "DeleteResult",
    "EventType",
    "Listener",
    "Store",
    "StoreEvent",
    "Subscription",
    "object_key",
    "parse_resource_version",
    "with_resource_version",
]

JsonObj = dict[str, Any]

# utilrand.String: the alphabet of generateName suffixes (no vowels, no look-alikes).
_NAME_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"


class Store(Lifecycle):
    """An in-memory API server. See the module docstrings of this module and of history.py."""

    def __init__(
        self,
        *,
        history_window: int = 10_000,
        clock: Callable[[], float] = time.time,
        uid_factory: Callable[[], str] | None = None,
        seed: int | None = None,
        require_namespace: bool = True,
        graceful_pod_deletion: bool = False,
        finalize_namespaces: bool = True,
    ) -> None:
        """
        ``history_window``: events kept per resource; older ones expire (410) as after an etcd compaction.
        Each kept event holds its object versions: 10,000 events of 20 KB pods are about 200 MB.
        ``clock``: seconds since the epoch, for creation/deletion timestamps and table ages (tests pin it).
        ``uid_factory``/``seed``: uids and generateName suffixes, deterministic when tests want them.
        ``require_namespace``: refuse creates in a missing (404) or terminating (403) namespace, as the
        NamespaceLifecycle admission plugin does. Seeding with ``load_list`` is never checked.
        ``graceful_pod_deletion``: when True, deleting a scheduled, running pod only marks it
        (deletionTimestamp and grace period) and a second delete with ``grace_period_seconds=0`` finishes it,
        as the kubelet does for real. When False (default; no kubelet runs here) every pod deletion completes
        at once, still as MODIFIED (deletionTimestamp) followed by DELETED.
        ``finalize_namespaces``: when True (default) a namespace deletion runs the namespace controller at
        once (content deleted, then the namespace); when False it stays Terminating until
        ``finalize_namespace``.
        """
        super().__init__(
            history_window=history_window,
            clock=clock,
            graceful_pod_deletion=graceful_pod_deletion,
            finalize_namespaces=finalize_namespaces,
        )
        self.require_namespace = require_namespace
        self.unsupported_field_labels: frozenset[str] = frozenset()
        """Field labels answered with the real server's 400 (``field label not supported: F``), as an
        API server (or aggregated API) that cannot select on them would: tests of clients' fallbacks."""
        self._random = random.Random(seed)
        self._uid_factory = uid_factory or (
            lambda: str(uuid.UUID(int=self._random.getrandbits(128), version=4))
        )

    # --- reading ------------------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> JsonObj:
        """A copy of one object; 404 ``ApiError`` when absent."""
        rt = self._rt(resource)
        obj = self._coll(resource).objects.get(object_key(rt, namespace, name))
        if obj is None:
            raise err.not_found(rt.name, rt.group, name)
        result: JsonObj = deep_copy(obj)
        return result

    def list(
        self,
        resource: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> ListResult:
        """A LIST as kube-apiserver 1.28 answers it (etcd3 store + watch cache). Raises ``ApiError``.

        Items are the stored objects (read-only). ``limit`` is ignored with ``resourceVersion=0`` (served
        from the watch cache, which did not paginate before 1.31's consistent-list-from-cache)."""
        rt = self._rt(resource)
        coll = self._coll(resource)
        flt = make_filter(rt, label_selector, field_selector, self.unsupported_field_labels)
        validation.validate_list_options(resource_version, resource_version_match, continue_token)
        if resource_version == "0":
            limit = None
        if limit is not None and limit <= 0:
            limit = None
        start = ""
        at = self._rv
        prefix = f"{namespace}/" if (rt.namespaced and namespace) else ""
        if continue_token:
            if resource_version not in (None, "", "0"):
                raise err.bad_request("specifying resource version is not allowed when using continue")
            start_rel, token_rv = decode_continue(continue_token)
            start = prefix + start_rel
            if token_rv > 0:
                if token_rv < coll.floor:
                    raise err.expired(
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter, or use the continue token "
                        "in this response to retrieve the remainder of the results. Continuing with the "
                        "provided token results in an inconsistent list - objects that were created, "
                        "modified, or deleted between the time the first chunk was returned and now may "
                        "show up in the list.",
                        continue_token=encode_continue(-1, start_rel),
                    )
                at = token_rv
        elif resource_version not in (None, "", "0"):
            requested = validation.parse_resource_version(rt, resource_version)
            if requested > self._rv:
                raise err.too_large_resource_version(requested, self._rv)
            if resource_version_match == "Exact":
                if requested < coll.floor:
                    raise err.expired("The resourceVersion for the provided list is too old.")
                at = requested
        objects, keys = self._state_at(coll, at)
        lo, hi = self._key_range(rt, keys, namespace)
        if start:
            lo = max(lo, bisect.bisect_left(keys, start))
        items: builtins.list[JsonObj] = []
        last_key = ""
        has_more = False
        for key in keys[lo:hi]:
            if limit is not None and len(items) >= limit:
                has_more = True
                break
            last_key = key
            obj = objects[key]
            if flt.everything or flt.matches(obj):
                items.append(obj)
        token = None
        remaining = None
        if has_more:
            token = encode_continue(at, last_key[len(prefix) :] + "\x00")
            if flt.everything:
                # etcd counts the keys after the page; with a predicate it cannot, so the field stays unset.
                remaining = hi - bisect.bisect_right(keys, last_key, lo, hi)
        return ListResult(rt, items, at, token, remaining)

    def filter(self, resource: str, label_selector: str | None, field_selector: str | None) -> ObjectFilter:
        """Parse selectors for ``resource`` (400 ``ApiError`` on bad ones)."""
        return make_filter(self._rt(resource), label_selector, field_selector, self.unsupported_field_labels)

    # --- writing ------------------------------------------------------------------------------------------

    def create(self, resource: str, obj: Mapping[str, Any], *, namespace: str | None = None) -> JsonObj:
        """POST: store a new object with uid, creationTimestamp, resourceVersion and the server's defaults."""
        rt = self._rt(resource)
        coll = self._coll(resource)
        new = self._decode(rt, obj)
        meta = validation.metadata(new)
        ns = validation.namespace_of(rt, meta, namespace)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + "".join(self._random.choices(_NAME_ALPHABET, k=5))
        name = str(meta.get("name") or "")
        validation.validate_name(rt, name, meta)
        key = object_key(rt, ns, name)
        if rt.namespaced and self.require_namespace:
            self._check_namespace_open(rt, ns, name)
        if key in coll.objects:
            raise err.already_exists(rt.name, rt.group, name)
        for drop in ("selfLink", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(drop, None)
        meta["uid"] = self._uid_factory()
        meta["resourceVersion"] = "0"
        meta["creationTimestamp"] = self._now()
        if rt.has_generation:
            meta["generation"] = 1
        defaults.initial_status(resource, new)
        defaults.apply_defaults(resource, new)
        if resource == "services":
            defaults.allocate_cluster_ip(new, coll.objects.values())
        stored = schema.normalize(resource, new)
        bisect.insort(coll.keys, key)
        event = self._commit(coll, "ADDED", key, stored, None)
        result: JsonObj = deep_copy(event.object)
        return result

    def update(
        self,
        resource: str,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JsonObj:
        """PUT (optionally of the ``status`` subresource), with the optimistic-concurrency check on
        ``metadata.resourceVersion`` when the client sends one. A write that changes nothing is not stored
        (no new resourceVersion, no event), as etcd's GuaranteedUpdate skips it."""
        rt = self._rt(resource)
        coll = self._coll(resource)
        new = self._decode(rt, obj)
        meta = validation.metadata(new)
        ns = validation.namespace_of(rt, meta, namespace)
        name = str(meta.get("name") or "")
        if not name:
            raise err.invalid(
                rt.group,
                rt.kind,
                "",
                [err.FieldError("Required", "metadata.name", "name or generateName is required")],
            )
        key = object_key(rt, ns, name)
        current = coll.objects.get(key)
        if current is None:
            if resource == "endpoints" and subresource is None:
                return self.create(resource, new, namespace=ns)  # Endpoints allow create-on-update
            raise err.not_found(rt.name, rt.group, name)
        validation.check_preconditions(rt, current, meta.get("uid"), meta.get("resourceVersion"))
        return self._replace(rt, coll, key, current, new, subresource)

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> JsonObj:
        """PATCH with ``patch_type`` ``merge`` (RFC 7386), ``strategic`` or ``json`` (RFC 6902)."""
        rt = self._rt(resource)
        coll = self._coll(resource)
        key = object_key(rt, namespace, name)
        current = coll.objects.get(key)
        if current is None:
            raise err.not_found(rt.name, rt.group, name)
        try:
            if patch_type == "json":
                patched = json_patch(current, patch)
            elif patch_type == "strategic":
                patched = strategic_merge_patch(current, patch)
            elif patch_type == "merge":
                patched = merge_patch(current, patch)
            else:
                raise err.unsupported_media_type(patch_type)
        except PatchError as exc:
            raise err.ApiError(422, "Invalid", exc.message) from exc
        if not isinstance(patched, dict):
            raise err.bad_request("the patch did not produce an object")
        patched = self._decode(rt, patched)
        meta = validation.metadata(patched)
        if meta.get("name") != name or (rt.namespaced and meta.get("namespace") != namespace):
            raise err.bad_request("the name of the object and the name in the patch do not match")
        # A patch carries a resourceVersion precondition only if it sets one itself.
        sent_rv = _patch_rv(patch) if patch_type != "json" else None
        validation.check_preconditions(rt, current, None, sent_rv)
        return self._replace(rt, coll, key, current, patched, subresource)

    def patch_labels(
        self, resource: str, namespace: str | None, name: str, labels: Mapping[str, str | None]
    ) -> JsonObj:
        """``kubectl label`` as a merge patch; a None value removes the label."""
        return self.patch(resource, namespace, name, {"metadata": {"labels": dict(labels)}})

    def bind(self, namespace: str, name: str, node_name: str) -> JsonObj:
        """POST ``pods/{name}/binding`` (what the scheduler does): nodeName and the PodScheduled condition."""
        rt = self._rt("pods")
        coll = self._coll("pods")
        key = object_key(rt, namespace, name)
        current = coll.objects.get(key)
        if current is None:
            raise err.not_found("pods", "", name)
        if (current.get("metadata") or {}).get("deletionTimestamp"):
            raise err.conflict("pods", "", name, f"pod {name} is being deleted, cannot be assigned to a host")
        assigned = (current.get("spec") or {}).get("nodeName")
        if assigned:
            raise err.conflict(
                "pods", "", name, f"pod {name} is already assigned to node {err.go_quote(assigned)}"
            )
        new = deep_copy(current)
        new.setdefault("spec", {})["nodeName"] = node_name
        status = new.setdefault("status", {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        conditions.insert(
            0,
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": self._now(),
            },
        )
        status["conditions"] = conditions
        stored = schema.normalize("pods", new)
        return deep_copy(self._commit(coll, "MODIFIED", key, stored, current).object)

    def delete(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> DeleteResult:
        """DELETE, with the registry's graceful deletion for pods, finalizers, and namespace finalization."""
        rt = self._rt(resource)
        coll = self._coll(resource)
        key = object_key(rt, namespace, name)
        current = coll.objects.get(key)
        if current is None:
            raise err.not_found(rt.name, rt.group, name)
        validation.check_preconditions(rt, current, uid, resource_version)
        meta = current.get("metadata") or {}
        if resource == "namespaces":
            return self._delete_namespace(coll, key, current)
        if resource == "pods":
            return self._delete_pod(coll, key, current, grace_period_seconds)
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return DeleteResult(deep_copy(current), False)
            marked = self._marked_for_deletion(current, 0)
            return DeleteResult(deep_copy(self._commit(coll, "MODIFIED", key, marked, current).object), False)
        return DeleteResult(deep_copy(self._remove(coll, key, current).object), True)

    # --- internals ----------------------------------------------------------------------------------------

    @staticmethod
    def _decode(rt: ResourceType, obj: Mapping[str, Any]) -> JsonObj:
        """A private copy of a client's object, refused (400) where Go's decoder would refuse it."""
        copied: JsonObj = deep_copy(strip_type_meta(obj))
        problem = schema.shape_problem(rt.name, rt.kind, copied)
        if problem is not None:
            raise err.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {problem}'
            )
        # Decoding into Go structs turns null into "absent": drop nulls before defaults look at fields.
        return schema.normalize(rt.name, copied)

    def _delete_object(self, resource: str, namespace: str, name: str) -> None:
        self.delete(resource, namespace, name)

    def _check_namespace_open(self, rt: ResourceType, namespace: str | None, name: str) -> None:
        ns_obj = self._coll("namespaces").objects.get(str(namespace))
        if ns_obj is None:
            raise err.not_found("namespaces", "", str(namespace))
        if (ns_obj.get("metadata") or {}).get("deletionTimestamp"):
            refusal = err.forbidden(
                rt.name,
                rt.group,
                name,
                f"unable to create new content in namespace {namespace} because it is being terminated",
            )
            assert refusal.details is not None
            refusal.details["causes"] = [
                {
                    "reason": "NamespaceTerminating",
                    "message": f"namespace {namespace} is being terminated",
                    "field": "metadata.namespace",
                }
            ]
            raise refusal

    def _replace(
        self,
        rt: ResourceType,
        coll: Collection,
        key: str,
        current: JsonObj,
        new: JsonObj,
        subresource: str | None,
    ) -> JsonObj:
        cur_meta = current.get("metadata") or {}
        if subresource == "status":
            status = new.get("status")
            new = deep_copy(current)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif subresource is not None:
            raise err.unknown_resource()
        elif rt.has_status and "status" in current:
            new["status"] = deep_copy(current["status"])
        meta = validation.metadata(new)
        for keep in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if keep in cur_meta:
                meta[keep] = cur_meta[keep]
            else:
                meta.pop(keep, None)
        meta.pop("selfLink", None)
        if "managedFields" not in meta and "managedFields" in cur_meta:
            meta["managedFields"] = deep_copy(cur_meta["managedFields"])
        meta["resourceVersion"] = cur_meta.get("resourceVersion", "0")
        if rt.name == "namespaces":
            # A namespace's labels always include its name; a namespace being deleted stays Terminating.
            defaults.apply_defaults(rt.name, new)
            if cur_meta.get("deletionTimestamp"):
                new.setdefault("status", {})["phase"] = "Terminating"
        else:
            defaults.apply_defaults(rt.name, new)
        if rt.has_generation:
            meta["generation"] = cur_meta.get("generation", 1)
            if _without_meta(new) != _without_meta(current):
                meta["generation"] = int(cur_meta.get("generation", 1)) + 1
        if rt.name == "services":
            defaults.keep_cluster_ip(current, new)
        stored = schema.normalize(rt.name, new)
        if stored == current:
            return deep_copy(current)
        new_meta = stored.get("metadata") or {}
        if (
            new_meta.get("deletionTimestamp")
            and not new_meta.get("finalizers")
            and rt.name != "namespaces"  # the namespace controller finishes those
            and not new_meta.get("deletionGracePeriodSeconds")  # a pod still in its grace period waits
        ):
            # The last finalizer is gone from an object being deleted: the update becomes the deletion
            # (the registry's shouldDeleteDuringUpdate).
            return deep_copy(self._remove(coll, key, current).object)
        event = self._commit(coll, "MODIFIED", key, stored, current)
        return deep_copy(event.object)


def _without_meta(obj: Mapping[str, Any]) -> JsonObj:
    return {k: v for k, v in obj.items() if k != "metadata"}


def _patch_rv(patch: Any) -> str | None:
    if isinstance(patch, dict):
        meta = patch.get("metadata")
        if isinstance(meta, dict) and meta.get("resourceVersion"):
            return str(meta["resourceVersion"])
    return None

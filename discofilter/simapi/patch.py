"""The three PATCH flavours kube-apiserver accepts: JSON merge patch, strategic merge patch, JSON patch.

* ``application/merge-patch+json`` is RFC 7386 (``kubectl label`` and ``annotate`` send it).
* ``application/strategic-merge-patch+json`` is merge patch plus list merging by each field's
  ``patchMergeKey`` (kubelet status patches merge ``conditions`` by ``type``). This is a reduction of
  apimachinery's ``strategicpatch``: merge keys are chosen by field name (the table below covers the types
  served here), the ``$patch`` (delete/replace/merge), ``$deleteFromPrimitiveList/`` and ``$retainKeys``
  directives are honoured, and the ordering directives (``$setElementOrder/``) are dropped, so merged lists
  keep the stored order with new items appended.
* ``application/json-patch+json`` is RFC 6902 with RFC 6901 pointers.

Every failure raises ``PatchError`` (a 422 or 400 for the HTTP shell). Rule: nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from discofilter.errors import DiscofilterError
from discofilter.simapi.encoding import deep_copy


class PatchError(DiscofilterError):
    """A patch that cannot be applied; ``status_hint`` is the HTTP status the real server answers."""

    status_hint = 422
    reason = "Invalid"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return deep_copy(patch)
    out: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# patchMergeKey by field name, for the lists of the types served here (k8s.io/api 1.28 struct tags).
_MERGE_KEYS: Final[Mapping[str, str]] = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "ephemeralContainerStatuses": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "podIPs": "ip",
    "hostIPs": "ip",
    "readinessGates": "conditionType",
    "topologySpreadConstraints": "topologyKey",
    "addresses": "type",
    "taints": "key",
    "secrets": "name",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
# Lists of scalars with patchStrategy "merge": merged as sets.
_MERGED_SCALAR_LISTS: Final = frozenset({"finalizers"})


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        # ContainerPort merges by containerPort, ServicePort by port (EndpointPorts have no strategy).
        sample = next((i for i in items if isinstance(i, dict)), None)
        if sample is None:
            return None
        if "containerPort" in sample:
            return "containerPort"
        return None
    return _MERGE_KEYS.get(field)


def _strategic_list(field: str, target: Any, patch: list[Any]) -> Any:
    if field in _MERGED_SCALAR_LISTS and isinstance(target, list):
        merged = list(target)
        for item in patch:
            if item not in merged:
                merged.append(deep_copy(item))
        return merged
    key = _merge_key(field, patch)
    if key is None or not isinstance(target, list):
        return [_strip_directives(deep_copy(item)) for item in patch if not _is_delete(item)]
    out = [deep_copy(item) for item in target]
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"unable to find api field in struct for {field}: list items must be objects")
        if item.get("$patch") == "replace":
            return [
                _strip_directives(deep_copy(i)) for i in patch if isinstance(i, dict) and "$patch" not in i
            ]
        ident = item.get(key)
        index = next(
            (n for n, cur in enumerate(out) if isinstance(cur, dict) and cur.get(key) == ident), None
        )
        if _is_delete(item):
            if index is not None:
                del out[index]
        elif index is None:
            out.append(_strip_directives(deep_copy(item)))
        else:
            out[index] = strategic_merge_patch(out[index], item)
    return out


def _is_delete(item: Any) -> bool:
    return isinstance(item, dict) and item.get("$patch") == "delete"


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch, reduced as the module docstring says."""
    if not isinstance(patch, dict):
        return deep_copy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return _strip_directives(deep_copy(patch))
    out: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(out.get(field), list) and isinstance(value, list):
                out[field] = [v for v in out[field] if v not in value]
            continue
        if key.startswith("$"):
            continue  # $patch handled above; $setElementOrder and $retainKeys are ordering/pruning hints
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list):
            out[key] = _strategic_list(key, out.get(key), value)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(out.get(key), value)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = value
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    if not parts:
        raise PatchError(f"cannot operate on the whole document: {path!r}")
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return node, parts[-1]


def _get(doc: Any, path: str) -> Any:
    node = doc
    for part in _pointer(path):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return node


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"index out of range: {path!r}")
    else:
        raise PatchError(f"doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, _pointer(path), path)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"doc is missing path: {path!r}")


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of ``target``."""
    if not isinstance(operations, list):
        raise PatchError("json patch must be a list of operations")
    doc = deep_copy(target)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise PatchError(f"invalid json patch operation: {op!r}")
        kind, path = op.get("op"), op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"missing value for {kind} operation at {path!r}")
        if kind == "add":
            doc = _add(doc, path, deep_copy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            if _pointer(path):
                _remove(doc, path)
            doc = _add(doc, path, deep_copy(op["value"]))
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise PatchError(f"missing from for {kind} operation at {path!r}")
            value = _remove(doc, source) if kind == "move" else deep_copy(_get(doc, source))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"testing value {path} failed")
        else:
            raise PatchError(f"unexpected kind of json patch operation: {kind!r}")
    return doc

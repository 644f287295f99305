"""A small RBAC authorizer: is one API request allowed by the rendered Roles and bindings?

Request attributes follow kube-apiserver's RequestInfoFactory (k8s.io/apiserver/pkg/endpoints/request/
requestinfo.go): GET of a collection is list, with watch=true (or the legacy /watch/ prefix) watch; a
list or watch with fieldSelector metadata.name=NAME carries NAME, so resourceNames apply to it (1.19+).
Rules match as in k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac (RuleAllows): verbs, apiGroups,
resources ("*" matches any; "res/sub" for subresources), resourceNames when the rule has any. Non-resource
URLs are refused: discofilter's identity has no reason to call any.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from tests.deploy.kube import Obj

_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
# Query booleans are read with Go's strconv.ParseBool (kubernetes-asyncio sends watch=True).
_PARSE_BOOL_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str
    namespace: str
    name: str
    subresource: str = ""


def attributes(method: str, path: str, query: str) -> Attributes | None:
    """The RBAC attributes of a request, or None for a non-resource URL."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None  # discovery of one group version
    qs = parse_qs(query)
    watch = False
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in _NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if rest[0] == "namespaces" and len(rest) == 2:
        namespace = name  # a namespace object is addressed within itself
    if method == "GET":
        watch = watch or qs.get("watch", [""])[0] in _PARSE_BOOL_TRUE
        verb = "watch" if watch else "get" if name else "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        if verb == "delete" and not name:
            verb = "deletecollection"
    if verb in ("list", "watch") and not name:
        for selector in qs.get("fieldSelector", []):
            for term in selector.split(","):
                key, sep, value = term.partition("=")
                if sep and key == "metadata.name":
                    name = value.lstrip("=")
    return Attributes(verb, group, resource, namespace, name, subresource)


def _has(values: list[str], wanted: str) -> bool:
    return "*" in values or wanted in values


def rule_allows(rule: Obj, a: Attributes) -> bool:
    resource = a.resource + (f"/{a.subresource}" if a.subresource else "")
    return (
        _has(rule.get("verbs", []), a.verb)
        and _has(rule.get("apiGroups", []), a.group)
        and _has(rule.get("resources", []), resource)
        and (not rule.get("resourceNames") or a.name in rule["resourceNames"])
    )


@dataclass(frozen=True)
class Grant:
    namespace: str  # "" for cluster-wide
    rules: tuple[Obj, ...]


def grants(objs: list[Obj], namespace: str, service_account: str) -> list[Grant]:
    """The rules bound to one ServiceAccount in the rendered objects."""
    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs}
    found = []
    for binding in objs:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == service_account and s["namespace"] == namespace
            for s in binding.get("subjects", [])
        ):
            continue
        ref = binding["roleRef"]
        where = binding["metadata"].get("namespace", "") if binding["kind"] == "RoleBinding" else ""
        role = roles.get((ref["kind"], "" if ref["kind"] == "ClusterRole" else where, ref["name"]))
        if role is not None:
            found.append(Grant(where, tuple(role.get("rules", []))))
    return found


def allowed(granted: list[Grant], a: Attributes) -> bool:
    return any(
        (not g.namespace or g.namespace == a.namespace) and any(rule_allows(r, a) for r in g.rules)
        for g in granted
    )

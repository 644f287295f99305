"""Discovery documents: ``/version``, ``/api``, ``/apis``, ``/api/v1`` and ``/apis/{group}/{version}``.

kubectl (and client-go's discovery client) reads these before anything else to map ``po`` to ``pods`` and to
learn whether a resource is namespaced. Since 1.26 clients first ask for *aggregated* discovery
(``Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,...,application/json``);
a server that answers plain ``application/json`` (the legacy documents below) makes them fall back to the
per-group-version documents, which is what this server does (checked with the real kubectl in the tests).

Rule: nothing here does I/O.
"""

from __future__ import annotations

from typing import Any, Final

from discofilter.simapi.resources import ResourceType, group_versions

JsonObj = dict[str, Any]

VERSION_INFO: Final[JsonObj] = {
    "major": "1",
    "minor": "28",
    "gitVersion": "v1.28.7",
    "gitCommit": "c8dcb00be9961ec36d141d2e4103f85f92bcf291",
    "gitTreeState": "clean",
    "buildDate": "2024-02-14T10:32:39Z",
    "goVersion": "go1.21.7",
    "compiler": "gc",
    "platform": "linux/amd64",
}
"""What ``/version`` says: the release the captures in tests/data/apiserver-1.28 were taken from."""

_SUBRESOURCE_VERBS: Final = {
    "status": ("get", "patch", "update"),
    "binding": ("create",),
    "log": ("get",),
    "finalize": ("update",),
}
_SUBRESOURCE_KIND: Final = {"binding": "Binding"}


def _resource_entries(rt: ResourceType) -> list[JsonObj]:
    entry: JsonObj = {
        "name": rt.name,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    entries = [entry]
    for sub in rt.subresources:
        entries.append(
            {
                "name": f"{rt.name}/{sub}",
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": _SUBRESOURCE_KIND.get(sub, rt.kind),
                "verbs": list(_SUBRESOURCE_VERBS.get(sub, ("get",))),
            }
        )
    return entries


def api_versions() -> JsonObj:
    """``/api``: the legacy core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
    }


def api_group(group: str) -> JsonObj | None:
    """``/apis/{group}``, or None for a group this server does not serve."""
    versions = [gv for gv in group_versions() if gv.startswith(group + "/")]
    if not group or not versions:
        return None
    entries = [{"groupVersion": gv, "version": gv.split("/", 1)[1]} for gv in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def api_group_list() -> JsonObj:
    """``/apis``: every named group."""
    groups: list[JsonObj] = []
    seen: set[str] = set()
    for gv in group_versions():
        if "/" not in gv:
            continue
        group = gv.split("/", 1)[0]
        if group in seen:
            continue
        seen.add(group)
        doc = api_group(group)
        assert doc is not None
        groups.append(
            {"name": group, "versions": doc["versions"], "preferredVersion": doc["preferredVersion"]}
        )
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resource_list(group_version: str) -> JsonObj | None:
    """``/api/v1`` or ``/apis/{group}/{version}``, or None when not served. The legacy ``/api/v1`` document
    has no ``apiVersion`` field (the real server omits it there)."""
    resources = group_versions().get(group_version)
    if resources is None:
        return None
    body: JsonObj = {"kind": "APIResourceList"}
    if "/" in group_version:
        body["apiVersion"] = "v1"
    body["groupVersion"] = group_version
    body["resources"] = [entry for rt in resources for entry in _resource_entries(rt)]
    return body

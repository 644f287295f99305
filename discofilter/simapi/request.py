"""Reading a request the way kube-apiserver 1.28 does: its path, its ListOptions, its Accept header.

* Paths: ``/api/v1[/namespaces/{ns}]/{resource}[/{name}[/{subresource}]]`` and the same under
  ``/apis/{group}/{version}``; the deprecated ``/watch/`` prefix is honoured. Anything else that looks like a
  resource path is the 404 of ``error-404-unknown-resource.json``.
* Query parameters decode as apimachinery's conversion functions do: the first value wins; a boolean is
  false only for ``0`` or ``false`` (any case), so ``watch=1``, ``watch=true`` and ``watch=`` all watch;
  a bad integer is a 400 carrying Go's ``strconv.ParseInt`` message.
* Accept: the first acceptable media type of the list wins; the ``as=Table`` and
  ``as=PartialObjectMetadata[List]`` parameters (``g=meta.k8s.io``, ``v=v1``) pick those representations.
  Protobuf is never served: the answer is JSON, which client-go decodes by the response's Content-Type.

Rule: nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from discofilter.simapi import errors as err
from discofilter.simapi.resources import ResourceType, group_versions, lookup

Representation = Literal["object", "table", "partial"]


@dataclass(frozen=True, slots=True)
class Target:
    """The resource a request is about."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool = False
    """The request came under the deprecated ``/watch/`` prefix."""


def parse_resource_path(path: str) -> Target | None:
    """The target of a resource path; None when ``path`` is not in a served group/version at all (the
    server's mux answers those ``404 page not found``). Raises the 404 unknown-resource ``ApiError``
    (``error-404-unknown-resource.json``) for unknown resources of a served group/version."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if (f"{group}/{version}" if group else version) not in group_versions() or not rest:
        return None  # not served; /api/v1 and /apis/g/v themselves are discovery
    watch_path = rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
        if not rest:
            raise err.unknown_resource()
    namespace: str | None = None
    # /api/v1/namespaces/{ns}/{resource}...: a namespaced collection. (/api/v1/namespaces/{ns}/status is the
    # namespace's own subresource; /apis/{g}/{v} serve no "namespaces" resource of their own.)
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and (group != "" or lookup(group, version, rest[2]) is not None)
    ):
        namespace, rest = rest[1], rest[2:]
        rt = lookup(group, version, rest[0])
        if rt is None or not rt.namespaced:
            raise err.unknown_resource()
    else:
        rt = lookup(group, version, rest[0])
        if rt is None:
            raise err.unknown_resource()
        if rt.namespaced and len(rest) > 1:
            raise err.unknown_resource()  # /api/v1/pods/x: a namespaced object needs its namespace
    if len(rest) > 3:
        raise err.unknown_resource()
    name = rest[1] if len(rest) >= 2 else None
    subresource = rest[2] if len(rest) == 3 else None
    if subresource is not None and subresource not in rt.subresources:
        raise err.unknown_resource()
    return Target(rt, namespace, name, subresource, watch_path)


def _flag(values: Mapping[str, str], key: str) -> bool | None:
    if key not in values:
        return None
    value = values[key]
    return not (value == "0" or value.lower() == "false")


def _integer(values: Mapping[str, str], key: str) -> int | None:
    if key not in values:
        return None
    text = values[key]
    try:
        return int(text, 10)
    except ValueError:
        raise err.bad_request(f'strconv.ParseInt: parsing "{text}": invalid syntax') from None


@dataclass(frozen=True, slots=True)
class ListOptions:
    """``metav1.ListOptions`` as decoded from a query string."""

    label_selector: str | None = None
    field_selector: str | None = None
    watch: bool = False
    allow_watch_bookmarks: bool = False
    resource_version: str | None = None
    resource_version_match: str | None = None
    timeout_seconds: int | None = None
    limit: int | None = None
    continue_token: str | None = None
    send_initial_events: bool | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ListOptions:
        """``query`` maps each parameter to its first value (what aiohttp's ``MultiDict`` indexing gives)."""
        return cls(
            label_selector=query.get("labelSelector"),
            field_selector=query.get("fieldSelector"),
            watch=bool(_flag(query, "watch")),
            allow_watch_bookmarks=bool(_flag(query, "allowWatchBookmarks")),
            resource_version=query.get("resourceVersion"),
            resource_version_match=query.get("resourceVersionMatch") or None,
            timeout_seconds=_integer(query, "timeoutSeconds"),
            limit=_integer(query, "limit"),
            continue_token=query.get("continue") or None,
            send_initial_events=_flag(query, "sendInitialEvents"),
        )

    def validate_watch(self, *, watch_list_enabled: bool) -> None:
        """``validateWatchOptions`` (1.28); failures are 422 Invalid ListOptions (watchlist-pods-gate-off)."""
        problems: list[err.FieldError] = []
        match = self.resource_version_match
        if self.send_initial_events is not None:
            if match != "NotOlderThan":
                problems.append(
                    err.FieldError(
                        "Forbidden",
                        "resourceVersionMatch",
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    )
                )
            if not watch_list_enabled:
                problems.append(
                    err.FieldError(
                        "Forbidden",
                        "sendInitialEvents",
                        "sendInitialEvents is forbidden for watch unless the WatchList feature gate is "
                        "enabled",
                    )
                )
        if match:
            if self.send_initial_events is None:
                problems.append(
                    err.FieldError(
                        "Forbidden",
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                    )
                )
            if match != "NotOlderThan":
                problems.append(
                    err.FieldError(
                        "NotSupported", "resourceVersionMatch", 'supported values: "NotOlderThan"', match
                    )
                )
            if self.continue_token:
                problems.append(
                    err.FieldError(
                        "Forbidden",
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden when continue is provided",
                    )
                )
        if problems:
            raise err.invalid("meta.k8s.io", "ListOptions", "", problems)

    def validate_list(self) -> None:
        if self.send_initial_events is not None:
            raise err.invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                [err.FieldError("Forbidden", "sendInitialEvents", "sendInitialEvents is forbidden for list")],
            )


def negotiate(accept: str | None) -> Representation:
    """The representation an Accept header asks for; a plain JSON answer for anything not understood (as the
    real server falls back when the client lists ``application/json`` last)."""
    if not accept:
        return "object"
    for media in accept.split(","):
        kind, _, params_text = media.strip().partition(";")
        params: dict[str, str] = {}
        for param in params_text.split(";"):
            key, _, value = param.strip().partition("=")
            if key:
                params[key.strip().lower()] = value.strip()
        if kind.strip().lower() not in ("application/json", "*/*", "application/*"):
            continue
        wanted = params.get("as")
        if wanted is None:
            return "object"
        if params.get("g") != "meta.k8s.io" or params.get("v") not in ("v1", "v1beta1"):
            continue
        if wanted == "Table":
            return "table"
        if wanted in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return "partial"
    return "object"

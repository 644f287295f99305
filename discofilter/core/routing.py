"""classify: decides, from the request line alone, whether a request is a filtered collection read.

Filtered: GET of the collections of pods, services, endpoints (core/v1) and endpointslices
(discovery.k8s.io/v1), cluster-wide or in one namespace, as a LIST or a WATCH. The deprecated
``/watch/`` path prefix (still served by the API server) is a WATCH too, including its single-object
form. Everything else passes through untouched.

Security rule: a filtered collection must never be reachable by a path that skips the filter. The API
server and this module could disagree about what a non-canonical path means (``..``, ``.``, ``//``,
percent-encoded bytes such as ``%2F``), so any such path under ``/api`` or ``/apis`` is refused
(``Route.rejected``) instead of guessed at.

Rule 1: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

FILTERED_GROUPS: Final = {
    # API prefix -> collection names filtered under it
    "/api/v1": frozenset({"pods", "services", "endpoints"}),
    "/apis/discovery.k8s.io/v1": frozenset({"endpointslices"}),
    # Removed in 1.25, but an older API server still serves it: never let it bypass the filter.
    "/apis/discovery.k8s.io/v1beta1": frozenset({"endpointslices"}),
}

# Go's strconv.ParseBool, which the API server uses for the ``watch`` query parameter.
GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})


class RouteKind(enum.Enum):
    PASSTHROUGH = "passthrough"
    LIST = "list"
    WATCH = "watch"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    resource: str | None = None
    """Collection name, e.g. ``pods``; None for pass-through."""
    namespace: str | None = None
    """The namespace segment of a per-namespace read; None when cluster-wide."""
    reason: str = ""
    """Why a request was rejected."""

    @property
    def filtered(self) -> bool:
        return self.kind in (RouteKind.LIST, RouteKind.WATCH)


PASSTHROUGH: Final = Route(RouteKind.PASSTHROUGH)


def _is_canonical(path: str) -> bool:
    # "#": clients strip a fragment before sending, so the API server never sees one; aiohttp's client
    # does too, so "/api/v1/pods#x" would reach the pods collection while reading as "pods#x" here.
    if "%" in path or "\\" in path or "//" in path or "#" in path:
        return False
    segments = path.split("/")
    return not any(seg in (".", "..") for seg in segments)


def _resolve_dots(path: str) -> str:
    """The path with empty, ``.`` and ``..`` segments resolved, as a lenient server might read it."""
    out: list[str] = []
    for seg in path.replace("\\", "/").split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return "/" + "/".join(out)


def classify(method: str, raw_path: str, watch_values: Iterable[str] = ()) -> Route:
    """Route one request. ``raw_path`` is the path exactly as sent, before any decoding.

    ``watch_values`` are all values of the ``watch`` query parameter. If any of them is true the read is
    treated as a watch: when the two readings could differ, the stricter one wins, and a watch stream
    fed to the list filter (or the reverse) fails closed, never open.
    """
    watch_values = tuple(watch_values)
    if not raw_path.startswith("/"):
        # Absolute-form ("GET http://host/api/v1/pods") is for forward proxies; the path the API
        # server would serve is not what this module would read. Refused, whatever it names.
        return Route(RouteKind.REJECTED, reason=f"request target must be a path: {raw_path!r}")
    if _is_canonical(raw_path):
        return _classify_canonical(method, raw_path, watch_values)
    # Subresources such as services/NAME/proxy/... legitimately carry encoded bytes, so only refuse a
    # non-canonical path when some reading of it (as sent, decoded, dot segments resolved, or both)
    # reaches a filtered collection: how the API server resolves it must not decide whether the
    # filter runs.
    decoded = unquote(raw_path)
    readings = [raw_path, decoded, _resolve_dots(raw_path), _resolve_dots(decoded)]
    readings += [r.partition("#")[0] for r in readings if "#" in r]
    if any(_classify_canonical("GET", r, watch_values).filtered for r in readings):
        return Route(RouteKind.REJECTED, reason=f"non-canonical path to a filtered collection: {raw_path!r}")
    return PASSTHROUGH


def _classify_canonical(method: str, raw_path: str, watch_values: tuple[str, ...]) -> Route:
    if not (raw_path.startswith("/api/") or raw_path.startswith("/apis/")):
        return PASSTHROUGH
    if method not in ("GET", "HEAD"):
        return PASSTHROUGH
    path = raw_path.rstrip("/")
    for prefix, collections in FILTERED_GROUPS.items():
        if not path.startswith(prefix + "/"):
            continue
        parts = path[len(prefix) + 1 :].split("/")
        legacy_watch = parts[0] == "watch"
        if legacy_watch:
            parts = parts[1:]
        namespace: str | None = None
        if len(parts) >= 2 and parts[0] == "namespaces":
            namespace = parts[1]
            parts = parts[2:]
        if not parts or parts[0] not in collections:
            return PASSTHROUGH
        resource = parts[0]
        if len(parts) == 1:
            is_watch = legacy_watch or any(v in GO_TRUE for v in watch_values)
            kind = RouteKind.WATCH if is_watch else RouteKind.LIST
            if method == "HEAD":
                return PASSTHROUGH  # HEAD answers carry no body, so nothing can leak
            return Route(kind, resource, namespace)
        if legacy_watch and len(parts) == 2:
            # /watch/namespaces/N/pods/NAME: a single-object watch, filtered by its namespace.
            return Route(RouteKind.WATCH, resource, namespace)
        return PASSTHROUGH  # a single object or a subresource
    return PASSTHROUGH


def read_verb(path: str, watch_values: Iterable[str] = ()) -> str:
    """``list``, ``watch`` or ``get`` for a pass-through read, as the API server's request info names it.

    istiod watches far more than the four filtered collections (ConfigMaps, Secrets, Istio's CRDs...);
    those pass through, and their watches must land with the watches, not in the latency histogram, and
    be ended at an event boundary on shutdown, while a LIST of them is left to finish. The segments are
    read by position, as the API server reads them: a namespace or object named "watch" is no watch.
    """
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return "get"  # /version, /openapi, /healthz...: not resources
    legacy_watch = rest[:1] == ["watch"]
    if legacy_watch:
        rest = rest[1:]
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        rest = rest[2:]  # /namespaces/NS/RESOURCE...; /namespaces, /namespaces/NS[/status] are namespaces
    if not rest:
        return "get"  # discovery of a group version
    if legacy_watch or any(v in GO_TRUE for v in watch_values):
        return "watch"
    return "list" if len(rest) == 1 else "get"

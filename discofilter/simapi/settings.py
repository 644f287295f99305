"""``SimSettings``: how the simulated API server behaves where a real one is configured or timed.

The defaults are kube-apiserver 1.28's, so that an embedding (the churn benchmark) behaves like a cluster;
tests shorten the timings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    bookmark_interval: float = 60.0
    """Seconds between BOOKMARKs of a watch with allowWatchBookmarks (the cacher's bookmarkFrequency is one
    minute, README fact 5). Tests set a fraction of a second."""
    bookmark_lead: float = 2.0
    """A last BOOKMARK goes this long before the watch's timeout (``nextBookmarkTime``: deadline - 2 s)."""
    default_watch_timeout: float = 1800.0
    """Watch length when the client sends no timeoutSeconds: --min-request-timeout's 1800 s (the real server
    adds up to 100% jitter; this one does not, to stay reproducible)."""
    watch_list_enabled: bool = True
    """The WatchList feature gate (streaming lists). Off, ``sendInitialEvents`` gets the 422 of
    ``watchlist-pods-gate-off.json``, which makes client-go >= 0.35 fall back to LIST + WATCH."""
    tokens: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Bearer token -> user name. Empty turns authentication off (every request is the admin). Otherwise a
    request without a token is ``system:anonymous`` (403 on resources) and an unknown token gets 401."""
    forbidden_users: frozenset[str] = frozenset()
    """Users refused (403, ``error-403-lowpriv.json``) every verb on pods, services, endpoints and
    endpointslices, like the captures' ``lowpriv``."""
    gzip_threshold: int = 128 * 1024
    """Non-watch answers larger than this are gzipped for clients that accept it (128 KiB, README fact 7)."""
    watch_queue_limit: int = 100_000
    """Events one watcher may have pending before the server ends its watch, as the cacher closes a watcher
    that does not keep up; bounds memory when a client stalls."""
    request_log_limit: int = 100_000
    """Requests kept in ``app[REQUEST_LOG]`` (oldest dropped first)."""
    watch_delays: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Resource name (``pods``, ``namespaces``...) -> seconds each live event of it is held back before any
    watcher gets it, in order. A real server's watches of different kinds are not synchronized (each
    resource has its own cacher, fed by its own etcd watch): this makes that skew deliberate, e.g. a pod of
    a new namespace reaching the pods watch before the namespace reaches a namespace watch."""
    pretty_user_agents: tuple[str, ...] = ("curl", "Wget", "Mozilla/5.0")
    """User-Agent prefixes that get indented JSON (not watches), as from the real server
    (``list-namespaces.curl-ua-pretty.json``)."""

"""Settings: typed, frozen, grouped; each default says why it is what it is.

``cli.py`` only maps flags and ``DISCOFILTER_*`` environment variables onto these. Tests build
``Settings()`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from discofilter.core.framing import DEFAULT_MAX_LINE_BYTES
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, SelectorSet

LogFormat = Literal["text", "json"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    """Loopback by default: the sidecar case, and the only place --upstream-credentials is allowed."""
    port: int = 15080
    """Next to Istio's 150xx sidecar ports, and free in a stock istiod pod."""
    tls_cert_file: str | None = None
    """Serve HTTPS, so that client-go sends its own bearer token (it sends none to http:// servers)."""
    tls_key_file: str | None = None
    tls_reload_seconds: float = 60.0
    """How often the serving certificate files are checked for a new version, which is then loaded for
    new connections without a restart. kubelet updates a mounted Secret about a minute after it changes
    and cert-manager renews at two thirds of a certificate's life, so a minute is far inside any window."""
    upstream_credentials: bool = False
    """Attach discofilter's own credentials to client requests that carry none (like kubectl proxy).
    Off by default and refused on any non-loopback address: it must never lend privileges to the network."""
    shutdown_grace_seconds: float = 10.0
    """How long in-flight LISTs may finish on SIGTERM; well under Kubernetes' default 30 s grace period.
    Filtered watches do not wait for it: they are ended at an event boundary at once."""
    raise_nofile_limit: bool = True
    """Raise the soft RLIMIT_NOFILE to the hard limit at start-up: each open watch costs two file
    descriptors (client and upstream socket), and the usual soft limit of 1024 caps a process at
    about 500 watches, while the hard limit (often 1M in containers) does not."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    kubeconfig: str | None = None
    """Explicit kubeconfig; without it KUBECONFIG, then ~/.kube/config, then the in-cluster config, the
    order kubectl uses (see ``discofilter.kubeconfig``)."""
    kubeconfig_from: str = "--kubeconfig"
    """Where ``kubeconfig`` came from (the flag or its environment variable), for messages."""
    context: str | None = None
    connect_timeout_seconds: float = 10.0
    """A TCP+TLS connect to a healthy API server takes milliseconds; 10 s rides out a busy control plane."""
    pool_size: int = 4096
    """Pooled upstream connections at once (filtered watches open their own, see watchconn). Each open
    pass-through watch holds one for its whole life (HTTP/1.1), and a
    request beyond the limit waits for a free one (aiohttp counts that wait in the connect timeout,
    then the client gets a 502), so the limit must exceed the watches expected: one istiod opens a few
    dozen; 1,000 were measured at ~40 KiB RSS and 2 fds each (README, "What many watches cost"). It
    still bounds what a runaway client can make discofilter open."""


WireFormat = Literal["native", "json"]


@dataclass(frozen=True, slots=True)
class WatchSettings:
    wire_format: WireFormat = "native"
    """native: filtered reads keep the client's wire format (istiod asks for protobuf since Istio 1.18,
    and decodes it ~3x cheaper than JSON), filtering protobuf frames as they come. json: ask the API
    server for JSON on filtered reads, for operators who want the simpler path."""
    max_event_bytes: int = DEFAULT_MAX_LINE_BYTES
    """Largest single watch event; see core.framing for the precedents."""
    max_list_bytes: int = 1024 * 1024 * 1024
    """Largest LIST body discofilter will buffer to filter. 150k pods (the Kubernetes scalability limit)
    at ~5 KB each is ~750 MB of JSON; clients page such lists with limit/continue anyway."""
    read_chunk_bytes: int = 256 * 1024
    """Upstream read size: big enough that a 20 KB pod is one read, small enough to flush promptly."""
    client_write_timeout_seconds: float = 30.0
    """A watch whose client has not taken an event for this long is ended, and its connection dropped.
    A client that stops reading holds at most one upstream read plus the socket buffers meanwhile
    (discofilter stops reading upstream while a write waits). The API server's own watch cache drops
    unresponsive watchers within a fraction of a second ("Forcing ... watcher close due to
    unresponsiveness", apiserver cacher); 30 s is far past GC and scheduling pauses of a healthy client."""
    not_ready_retry_after_seconds: int = 1
    """Retry-After on the fail-closed 503: membership usually syncs within a second of start-up."""


@dataclass(frozen=True, slots=True)
class NamespaceWatchSettings:
    timeout_seconds: int = 300
    """Server-side watch timeout; the API server caps watches at 30-60 min anyway, 5 min keeps them fresh."""
    inactivity_seconds: float = 70.0
    """Bookmarks come about every 60 s (kopf uses the same 70 s bound for the same reason); silence past
    this means the connection is dead even if TCP has not noticed."""
    backoff_initial_seconds: float = 0.8
    """client-go's reflector starts its backoff at 800 ms."""
    backoff_max_seconds: float = 2.0
    """Unlike client-go's 30 s: while the namespace watch is down, filtered requests wait for it
    (``confirm_wait_seconds``), so every second of backoff after the API server is back is a second
    those requests hang. A namespace LIST is cheap and a refused connect cheaper; one attempt every
    2 s during an outage costs the API server nothing, and the first one after it is at most 2 s late
    (or none: any answer from the API server wakes the retry at once)."""
    short_watch_seconds: float = 1.0
    """client-go's VeryShortWatchError: a watch that ends within 1 s with no events means trouble."""
    confirm_wait_seconds: float = 5.0
    """How long a filtered LIST or WATCH may wait for membership to be confirmed (a fresh namespace
    LIST) while the namespace watch is broken, before it gets the fail-closed 503 with Retry-After.
    About what a kube-apiserver restart on a healthy etcd takes to serve again, so the client's first
    try after the restart is answered instead of refused (a refusal costs it a round of client-go's
    relist backoff, up to 30 s); short enough to read as a slow answer rather than a hang, and far
    below any request timeout clients set (client-go and kubectl set none by default)."""
    confirmed_quiet_seconds: float = 65.0
    """How long a connected namespace watch counts as confirming membership without an event or
    bookmark. A watch whose API server died or restarted is seen at once (the socket closes); only a
    silent loss (a partition, a dead node) keeps it looking connected. The API server sends a bookmark
    at least every 60 s (the 1.28 cacher's bookmarkFrequency), so a healthy quiet watch never passes
    65 s; past it, the next filtered request waits for a namespace LIST instead of trusting the watch.
    Lower values close that window sooner but cost a namespace LIST per quiet stretch."""
    unknown_after_seconds: float = 120.0
    """How long membership may go unconfirmed (the namespace list/watch failing, counted from its last
    contact) before open filtered watches are ended with a 503 ERROR event. (New filtered requests
    do not wait for this: from the first moment the watch is broken they wait for a confirming LIST,
    see confirm_wait_seconds.) Above inactivity_seconds (70) plus a backoff, so a dead connection
    noticed late and retried does not end anything; the same as max_stale_seconds, so /readyz turns
    503 (and a Service stops sending clients here) when filtered reads start failing. Past it, a
    watch could be filtering under a membership minutes old: ending it is better than a guess."""
    max_stale_seconds: float = 120.0
    """How long after the namespace list/watch last delivered anything, once it is failing, /readyz
    still answers 200. Above inactivity_seconds (70) plus a backoff, so one dead
    connection noticed late and retried does not flip readiness; short enough that a mesh label change
    missed for minutes is not served as truth. Open filtered watches end past unknown_after_seconds
    (the same default)."""


@dataclass(frozen=True, slots=True)
class MeshConfigSettings:
    """Where Istio's mesh config is, so discofilter can take istiod's discoverySelectors as they are."""

    path: str | None = None
    """A mesh config file, as istiod reads it from /etc/istio/config/mesh when the istio ConfigMap is
    mounted. Read at start-up (invalid: the process stops) and polled for changes."""
    configmap: tuple[str, str] | None = None
    """(namespace, name) of the istio ConfigMap, listed and watched by name so RBAC can restrict it
    with resourceNames."""
    key: str = "mesh"
    """The ConfigMap key istiod reads (kubemesh.NewConfigMapWatcher is called with key "mesh")."""
    poll_seconds: float = 5.0
    """File poll period. kubelet swaps a mounted ConfigMap's ..data symlink only after its sync period
    (about a minute) plus its cache TTL, so polling a few KB every 5 s adds nothing noticeable to that
    delay, and works where inotify does not (symlink swaps, overlay and network filesystems)."""
    check_seconds: float = 5.0
    """How often namespace label changes are rechecked for namespaces istiod's selectors admit but
    --namespace-selector flags exclude (only when flags win). A recheck is skipped when no namespace
    changed; 5 s keeps the warning prompt without rescanning thousands of namespaces per event."""
    namespace_selectors_given: bool = False
    """--namespace-selector (or its env var) was given: those selectors win over discoverySelectors,
    because the operator said so explicitly; the mesh config is then followed only to warn."""
    max_warnings_per_check: int = 100
    """Per-namespace warning lines per change; past it one line gives the count. istiod admitting every
    namespace in a 10k-namespace cluster must not flood the log with 10k lines at once."""

    @property
    def enabled(self) -> bool:
        return self.path is not None or self.configmap is not None


ExclusionMode = Literal["auto", "off"]


@dataclass(frozen=True, slots=True)
class ExclusionSettings:
    """Server-side exclusion (discofilter.exclusion, core.exclusion): ``metadata.namespace!=`` field
    selector requirements on the upstream requests of cluster-wide filtered LISTs and WATCHes."""

    mode: ExclusionMode = "auto"
    """auto: exclude the costliest non-mesh namespaces at the API server, and fall back to client-side
    filtering alone (logged once, counted) for a kind whose API server refuses the selector. off: never.
    The client's view is the same either way; only the cost moves."""
    max_namespaces: int = 100
    """K, requirements per request. The API server tests each one on every event for every watcher:
    ~85 ns each (REFERENCE.md, measured on kube-apiserver 1.28: 5.43 s of CPU with none, 5.68 s with 100,
    7.48 s with 1,000, 12 pod watchers x 2,000 patches). K = 100 adds ~8.5 us per event per watcher,
    less than sending the event to one watcher costs, and far less than what one excluded event saves
    discofilter (~200-300 us of CPU per upstream event) and istiod's wire; K = 1,000 adds ~85 us per
    event per watcher on *every* event, mesh ones included, and cost the API server more than it saved.
    Clusters with at most K non-mesh namespaces exclude them all."""
    max_selector_bytes: int = 6000
    """Bytes (percent-encoded) the requirements may add to a request line. kube-apiserver takes far more
    (a 69 KB selector answered 200), but a load balancer in front may not: nginx's default
    large_client_header_buffers is 8 KiB per request line; 6,000 leaves room for the path and the
    client's own parameters. 100 namespaces of 30-character names take ~5,700."""
    replan_seconds: float = 30.0
    """How often the excluded set is chosen again from the drops counted since. Each change re-opens
    open watches (rate-limited), so changes should be rare; drops are counted continuously."""
    reopen_min_interval_seconds: float = 60.0
    """One re-open of a watch's upstream per minute at most: a re-open costs the API server a new watch
    (cheap from its watch cache) and discofilter a connection; a changed plan can wait that long."""
    fresh_seconds: float = 45.0
    """A watch re-opens from its last processed resourceVersion only within this long of receiving it.
    The 1.28 watch cache keeps at least 75 s of events (eventFreshDuration); 45 s leaves a margin for
    a busy cache, and a bookmark refreshes a quiet watch within ~60 s."""
    switch_grace_seconds: float = 1.0
    """After a re-opened upstream answers 200, how long to wait for its first bytes before switching
    to it: a too-old resourceVersion is answered by an ERROR event at once (then the old stream is kept
    and nothing is lost); a healthy quiet watch sends nothing, and is switched to after this."""


@dataclass(frozen=True, slots=True)
class Settings:
    selectors: SelectorSet = DEFAULT_MESH_SELECTORS
    """Istio's two injection labels: istio-injection=enabled, or any istio.io/rev label."""
    istiod_namespace: str | None = None
    """A namespace kept whatever its labels: istiod's own, where a stock install runs its ingress
    gateway, whose Service, pods and endpoints istiod needs. The CLI takes it from --istiod-namespace,
    else the pod's POD_NAMESPACE (downward API, as istiod reads its own); None here because a
    ``Settings()`` built in code describes no pod."""
    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    namespaces: NamespaceWatchSettings = field(default_factory=NamespaceWatchSettings)
    exclusion: ExclusionSettings = field(default_factory=ExclusionSettings)
    mesh: MeshConfigSettings = field(default_factory=MeshConfigSettings)
    """Off by default: without a mesh config, ``selectors`` decide alone."""
    log_level: str = "info"
    log_format: LogFormat = "text"
    """text for people reading a terminal or kubectl logs; json for log pipelines (one object per line)."""

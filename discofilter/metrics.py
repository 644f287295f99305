"""Prometheus metrics: a custom collector that reads plain counters at scrape time, and its listener.

Nothing here runs per event. The proxy, its watch filters, the watch registry and the namespace tracker
keep plain ints; ``DiscofilterCollector.collect`` turns them into metric families when Prometheus
scrapes (every 15-60 s), so the hot path never touches a lock or a label lookup. Requests are counted
once each by ``make_request_metrics_middleware``.

Labels are bounded: ``resource`` is one of the four filtered collections or ``other``, ``verb`` a fixed
set, ``code`` an HTTP status, ``kind`` a fixed string. No namespace or object name is ever a label: a
cluster with 10k namespaces must not mean 10k series.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from discofilter.core.confirmation import OUTCOMES, WAIT_BUCKETS
from discofilter.core.membership import Membership
from discofilter.core.routing import RouteKind, classify, read_verb
from discofilter.meshwatch import MeshWatcher
from discofilter.proxy import Proxy
from discofilter.stats import OTHER, Histogram, WatchTotals
from discofilter.tracker import NamespaceTracker

access_log = logging.getLogger("discofilter.requests")
"""Per-request lines, at debug only: at istiod's request rates, info would drown everything else."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def not_ready_reason(proxy: Proxy, tracker: NamespaceTracker, membership: Membership) -> str | None:
    """Why ``/readyz`` answers 503 now, or None when ready; ``discofilter_ready`` reads the same rule.

    Draining counts as not ready: on SIGTERM the listener closes at once, and a readiness probe that
    still said ready would keep this pod in a Service's endpoints for clients that cannot connect.
    """
    if proxy.registry.draining:
        return "shutting down\n"
    if not membership.synced:
        return "mesh membership not synced yet\n"
    if not tracker.fresh():
        bound = tracker.settings.max_stale_seconds
        return f"namespace watch failing and membership stale for over {bound:.0f} s\n"
    return None


_WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_labels(request: web.Request) -> tuple[str, str]:
    """(verb, resource) of a proxy request, both from fixed sets."""
    path = request.raw_path.partition("?")[0]
    watch_values = request.query.getall("watch", [])
    route = classify(request.method, path, watch_values)
    if route.kind is RouteKind.LIST:
        return "list", route.resource or OTHER
    if route.kind is RouteKind.WATCH:
        return "watch", route.resource or OTHER
    if request.method in ("GET", "HEAD"):
        return read_verb(path, watch_values), OTHER
    return _WRITE_VERBS.get(request.method, "other"), OTHER


def make_request_metrics_middleware(
    proxy: Proxy, *, clock: Callable[[], float] = time.monotonic
) -> Middleware:
    """Counts every proxy request once, with its final status; outermost, so error answers count too."""
    stats = proxy.stats

    @web.middleware
    async def request_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
        verb, resource = request_labels(request)
        started = clock()
        code = "aborted"  # the client went away, or the answer was cut off mid-body
        try:
            resp = await handler(request)
            code = str(resp.status)
            return resp
        finally:
            seconds = clock() - started
            stats.request_done(verb, resource, code, seconds)
            if access_log.isEnabledFor(logging.DEBUG):
                access_log.debug(
                    "%s %s %s %s %.3f s",
                    verb,
                    resource,
                    request.path,
                    code,
                    seconds,
                    extra={"verb": verb, "resource": resource, "path": request.path, "code": code},
                )

    return request_metrics


def _histogram(
    name: str, doc: str, labels: list[str], series: dict[tuple[str, ...], Histogram]
) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for key, hist in sorted(series.items()):
        cumulative = hist.cumulative()
        buckets = [(_le(b), c) for b, c in zip(hist.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        fam.add_metric(list(key), buckets, hist.total)
    return fam


def _le(bound: float) -> str:
    return repr(float(bound))


@dataclass(slots=True, eq=False)  # eq=False keeps it hashable: the registry keys on collectors
class DiscofilterCollector(Collector):
    """Reads the proxy's, registry's and tracker's plain counters at scrape time."""

    proxy: Proxy
    tracker: NamespaceTracker
    membership: Membership
    mesh: MeshWatcher | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected on demand; no fixed description needed (prometheus_client allows it)

    def collect(self) -> Iterator[Metric]:
        yield from self._watch_metrics()
        yield from self._request_metrics()
        yield from self._namespace_metrics()
        yield from self.proxy.exclusion.metrics()
        if self.mesh is not None:
            yield from self._mesh_metrics(self.mesh)

    def _mesh_metrics(self, mesh: MeshWatcher) -> Iterator[Metric]:
        versions = CounterMetricFamily(
            "discofilter_mesh_config_versions",
            "Versions of Istio's mesh config read: applied, or rejected (the last good selectors stay).",
            labels=["outcome"],
        )
        versions.add_metric(["applied"], mesh.versions_applied)
        versions.add_metric(["rejected"], mesh.versions_rejected)
        yield versions
        yield GaugeMetricFamily(
            "discofilter_istiod_only_namespaces",
            "Namespaces istiod's discoverySelectors admit but --namespace-selector excludes.",
            value=mesh.istiod_only_namespaces,
        )

    def _watch_metrics(self) -> Iterator[Metric]:
        stats = self.proxy.stats
        totals: dict[str, WatchTotals] = {}
        for resource, t in stats.watches.items():
            totals[resource] = WatchTotals()
            totals[resource].add(t)
        open_by_resource: dict[str, int] = {}
        for w in self.proxy.registry.watches:
            open_by_resource[w.resource] = open_by_resource.get(w.resource, 0) + 1
            if w.filter is not None:
                totals.setdefault(w.resource, WatchTotals()).add(w.filter)
        received = CounterMetricFamily(
            "discofilter_watch_events_received", "Watch events read from the API server.", labels=["resource"]
        )
        forwarded = CounterMetricFamily(
            "discofilter_watch_events_forwarded",
            "Watch events sent on to clients (mesh objects, bookmarks, errors).",
            labels=["resource"],
        )
        dropped = CounterMetricFamily(
            "discofilter_watch_events_dropped",
            "Watch events dropped: objects outside the mesh.",
            labels=["resource"],
        )
        items = CounterMetricFamily(
            "discofilter_list_items", "Items of filtered LIST answers.", labels=["resource", "outcome"]
        )
        bytes_in = CounterMetricFamily(
            "discofilter_received_bytes",
            "Body bytes of filtered answers read from the API server (after gzip decoding).",
            labels=["resource", "verb"],
        )
        bytes_out = CounterMetricFamily(
            "discofilter_sent_bytes",
            "Body bytes of filtered answers sent to clients (before gzip encoding).",
            labels=["resource", "verb"],
        )
        for resource, t in sorted(totals.items()):
            received.add_metric([resource], t.events_in)
            forwarded.add_metric([resource], t.events_kept)
            dropped.add_metric([resource], t.events_dropped)
            bytes_in.add_metric([resource, "watch"], t.bytes_in)
            bytes_out.add_metric([resource, "watch"], t.bytes_out)
        for resource, lt in sorted(stats.lists.items()):
            items.add_metric([resource, "kept"], lt.items_kept)
            items.add_metric([resource, "dropped"], lt.items_in - lt.items_kept)
            bytes_in.add_metric([resource, "list"], lt.bytes_in)
            bytes_out.add_metric([resource, "list"], lt.bytes_out)
        yield from (received, forwarded, dropped, items, bytes_in, bytes_out)
        open_watches = GaugeMetricFamily(
            "discofilter_open_watches", "Filtered watches open now.", labels=["resource"]
        )
        for resource, n in sorted(open_by_resource.items()):
            open_watches.add_metric([resource], n)
        yield open_watches
        yield CounterMetricFamily(
            "discofilter_watches_expired",
            "Open watches ended with 410 Expired because mesh membership changed.",
            value=self.proxy.registry.expired_total,
        )
        unparseable = CounterMetricFamily(
            "discofilter_unparseable_answers",
            "Filtered answers from the API server that could not be parsed (ended, never forwarded).",
            labels=["verb"],
        )
        unparseable.add_metric(["watch"], self.proxy.malformed_streams)
        unparseable.add_metric(["list"], stats.malformed_lists)
        yield unparseable
        yield CounterMetricFamily(
            "discofilter_slow_clients_ended",
            "Watches ended because their client took nothing for client_write_timeout_seconds.",
            value=self.proxy.slow_clients_ended,
        )
        yield GaugeMetricFamily(
            "discofilter_in_flight_requests",
            "Proxy requests being answered now, open watches included.",
            value=self.proxy.in_flight,
        )

    def _request_metrics(self) -> Iterator[Metric]:
        stats = self.proxy.stats
        requests = CounterMetricFamily(
            "discofilter_requests",
            "Proxy requests answered, by verb, resource and HTTP status.",
            labels=["verb", "resource", "code"],
        )
        for (verb, resource, code), n in sorted(stats.requests.items()):
            requests.add_metric([verb, resource, code], n)
        yield requests
        latency: dict[tuple[str, ...], Histogram] = dict(stats.latency.items())
        yield _histogram(
            "discofilter_request_duration_seconds",
            "Time to answer a proxy request, watches excluded.",
            ["verb", "resource"],
            latency,
        )
        yield _histogram(
            "discofilter_watch_duration_seconds",
            "How long filtered watches stayed open.",
            ["resource"],
            {(r,): h for r, h in stats.watch_duration.items()},
        )
        errors = CounterMetricFamily(
            "discofilter_upstream_errors",
            "Failures talking to the API server on behalf of clients.",
            labels=["kind"],
        )
        for kind, n in sorted(stats.upstream_errors.items()):
            errors.add_metric([kind], n)
        yield errors

    def _namespace_metrics(self) -> Iterator[Metric]:
        t = self.tracker
        yield GaugeMetricFamily(
            "discofilter_mesh_namespaces", "Namespaces in the mesh now.", value=len(self.membership)
        )
        yield GaugeMetricFamily(
            "discofilter_namespaces", "Namespaces known (mesh or not).", value=self.membership.known
        )
        yield CounterMetricFamily(
            "discofilter_membership_changes",
            "Membership changes (one per event or relist that changed the mesh set).",
            value=t.membership_changes,
        )
        yield CounterMetricFamily(
            "discofilter_namespace_relists", "Namespace LISTs (first sync, 410s).", value=t.relists
        )
        yield CounterMetricFamily(
            "discofilter_namespace_watch_failures",
            "Namespace list/watch failures, each followed by a backoff and a reconnect.",
            value=t.reconnects,
        )
        age = math.nan if t.last_contact is None else max(0.0, t.clock() - t.last_contact)
        yield GaugeMetricFamily(
            "discofilter_namespace_last_event_age_seconds",
            "Seconds since the namespace LIST/watch last delivered anything (event, bookmark or list); "
            "NaN before the first list.",
            value=age,
        )
        yield from self._confirmation_metrics()
        ready = not_ready_reason(self.proxy, self.tracker, self.membership) is None
        yield GaugeMetricFamily("discofilter_ready", "1 while /readyz answers 200.", value=float(ready))
        yield from self._lifecycle_metrics()

    def _lifecycle_metrics(self) -> Iterator[Metric]:
        """What namespace creations and deletions cost (core.lifecycle): relists by why, lookups."""
        proxy, resolver = self.proxy, self.proxy.resolver
        relists = CounterMetricFamily(
            "discofilter_relists_caused",
            "Filtered watches ended or refused with 410 (each makes its client relist), by reason: a "
            "label or selector change of an existing namespace, a resume from before one, or an event "
            "whose namespace nothing could decide.",
            labels=["reason"],
        )
        relists.add_metric(["membership_change"], proxy.registry.expired_total)
        relists.add_metric(["stale_resume"], proxy.stale_resumes)
        relists.add_metric(["undecidable"], proxy.undecided_ended)
        yield relists
        resolved = CounterMetricFamily(
            "discofilter_namespaces_resolved",
            "Namespaces looked up on demand because a stream met them before the namespace watch did.",
            labels=["result"],
        )
        resolved.add_metric(["found"], resolver.found)
        resolved.add_metric(["absent"], resolver.absent)
        resolved.add_metric(["failed"], resolver.failed)
        yield resolved
        lifecycle = CounterMetricFamily(
            "discofilter_namespace_lifecycle",
            "Namespaces created or deleted after the first sync: neither ends a watch.",
            labels=["change"],
        )
        lifecycle.add_metric(["created"], self.membership.created)
        lifecycle.add_metric(["deleted"], self.membership.deleted)
        yield lifecycle

    def _confirmation_metrics(self) -> Iterator[Metric]:
        conf = self.tracker.confirmation
        now = self.tracker.clock()
        yield GaugeMetricFamily(
            "discofilter_membership_confirmed",
            "1 while mesh membership is confirmed (filtered requests go on at once), 0 while they wait "
            "for a confirming namespace LIST.",
            value=float(conf.confirmed(now)),
        )
        yield CounterMetricFamily(
            "discofilter_membership_unconfirmed_seconds",
            "Time mesh membership has spent unconfirmed (namespace watch down, reconnecting or quiet "
            "past confirmed_quiet_seconds), start-up included.",
            value=conf.unconfirmed_seconds(now),
        )
        waits = HistogramMetricFamily(
            "discofilter_membership_wait_seconds",
            "How long filtered requests waited for a confirming namespace LIST, by outcome: confirmed "
            "(then answered), refused (503 past confirm_wait_seconds) or abandoned (the client left).",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            stats = conf.waits[outcome]
            cumulative = list(itertools.accumulate(stats.buckets))
            buckets = [(_le(b), c) for b, c in zip(WAIT_BUCKETS, cumulative, strict=False)]
            buckets.append(("+Inf", cumulative[-1]))
            waits.add_metric([outcome], buckets, stats.seconds)
        yield waits
        yield CounterMetricFamily(
            "discofilter_membership_refusals",
            "Filtered requests refused (503) because no namespace LIST confirmed membership in time.",
            value=conf.waits["refused"].count,
        )


def build_metrics_app(
    proxy: Proxy, tracker: NamespaceTracker, membership: Membership, mesh: MeshWatcher | None = None
) -> web.Application:
    """The /metrics listener: its own registry, so only discofilter's metrics (and the process ones) show."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DiscofilterCollector(proxy, tracker, membership, mesh))
    ProcessCollector(registry=registry)  # CPU, RSS and open fds: the bench's questions, in production

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app

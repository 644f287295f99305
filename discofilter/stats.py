"""Plain counters the proxy keeps for ``/metrics``; no Prometheus import, nothing per event.

The watch filters already count events and bytes in plain ints as they run (``events_in``, ``bytes_in``,
...). Rather than pay a Prometheus ``Counter.inc`` per event on the hot path, the collector in
``discofilter.metrics`` reads those ints at scrape time: live watches' filters directly, ended watches'
totals from here (``watch_ended`` folds them in, once, when a watch ends).

Label values are bounded by construction: the four filtered resources plus ``other``, a fixed verb
set, HTTP status codes, and fixed error kinds. Never a namespace or an object name.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

OTHER = "other"
"""The resource label of every pass-through request: its path is unbounded, so it gets no label of its own."""

# Request latencies: a LIST of a few objects takes milliseconds, a full pod LIST of a large cluster
# seconds (the API server's own apiserver_request_duration_seconds buckets span 5 ms to 60 s).
REQUEST_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Watches live for minutes: client-go asks for 5-10 min, the API server caps them at 30-60 min.
WATCH_BUCKETS: tuple[float, ...] = (1.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)


class FilterCounts(Protocol):
    """What a watch filter counts as it runs (``WatchFilter`` and ``ProtoWatchFilter`` both do)."""

    events_in: int
    events_kept: int
    events_dropped: int
    bytes_in: int
    bytes_out: int


@dataclass(slots=True)
class WatchTotals:
    """Sums over the watches of one resource that have ended."""

    events_in: int = 0
    events_kept: int = 0
    events_dropped: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def add(self, f: FilterCounts) -> None:
        self.events_in += f.events_in
        self.events_kept += f.events_kept
        self.events_dropped += f.events_dropped
        self.bytes_in += f.bytes_in
        self.bytes_out += f.bytes_out


@dataclass(slots=True)
class ListTotals:
    """Sums over the filtered LISTs of one resource (bytes as decoded, before any gzip)."""

    items_in: int = 0
    items_kept: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(slots=True)
class Histogram:
    """A fixed-bucket histogram in plain ints; ``counts[i]`` is the count of ``bounds[i]`` alone
    (the collector makes them cumulative), the last slot is +Inf."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[int]:
        return list(itertools.accumulate(self.counts))


@dataclass(slots=True)
class ProxyStats:
    """Everything the proxy counts for metrics, beside the counters it already had."""

    watches: dict[str, WatchTotals] = field(default_factory=dict)
    lists: dict[str, ListTotals] = field(default_factory=dict)
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(verb, resource, code) -> requests answered."""
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    """(verb, resource) -> seconds to answer, every verb but watch."""
    watch_duration: dict[str, Histogram] = field(default_factory=dict)
    """resource -> seconds a watch stayed open."""
    upstream_errors: Counter[str] = field(default_factory=Counter)
    """kind -> count; kinds are the fixed strings the proxy passes to ``upstream_error``."""
    malformed_lists: int = 0
    """Filtered LIST answers that could not be parsed (never forwarded)."""

    def watch_ended(self, resource: str, f: FilterCounts) -> None:
        totals = self.watches.get(resource)
        if totals is None:
            totals = self.watches[resource] = WatchTotals()
        totals.add(f)

    def list_filtered(
        self, resource: str, *, items_in: int, items_kept: int, bytes_in: int, bytes_out: int
    ) -> None:
        totals = self.lists.get(resource)
        if totals is None:
            totals = self.lists[resource] = ListTotals()
        totals.items_in += items_in
        totals.items_kept += items_kept
        totals.bytes_in += bytes_in
        totals.bytes_out += bytes_out

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors[kind] += 1

    def request_done(self, verb: str, resource: str, code: str, seconds: float) -> None:
        self.requests[(verb, resource, code)] += 1
        if verb == "watch":
            hist = self.watch_duration.get(resource)
            if hist is None:
                hist = self.watch_duration[resource] = Histogram(WATCH_BUCKETS)
        else:
            key = (verb, resource)
            hist = self.latency.get(key)
            if hist is None:
                hist = self.latency[key] = Histogram(REQUEST_BUCKETS)
        hist.observe(seconds)

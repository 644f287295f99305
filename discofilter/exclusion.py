"""Server-side exclusion, the I/O side: the upstream request's query, the fallback, and the re-open of
an open watch when the excluded set changes. The decisions are in ``core.exclusion``.

What the client sees never changes: the client-side filter runs on every byte that arrives, exactly as
without exclusion, and only namespaces outside the mesh at the moment a request is built are excluded
(``Planner.for_request``), so the API server only leaves out events the filter would have dropped.

An open watch (``ReopeningStream``) switches to a new upstream watch whose selector carries the new set:
1. stop reading the old connection (``hold``): its last processed event (an event or bookmark, kept
   or dropped) at resourceVersion R is the exact point every earlier event went through the filter;
2. open the new watch from R (``allowWatchBookmarks=true``, no initial events, the client's remaining
   ``timeoutSeconds``);
3. if it answers 200 and its first bytes are not an ERROR event (kube-apiserver answers a too-old R with
   200 and an immediate 410 ERROR), end the old one and go on with the new one through the same filter;
   otherwise close the new one and go on reading the old one, which lost nothing while held.
A 410 that comes later on the new stream is what the API server would have sent the client: it is
forwarded, and the client relists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from discofilter.core.exclusion import (
    Bounds,
    PageMemory,
    Planner,
    ReopenPolicy,
    may_reopen,
    remaining_timeout,
    rewrite_query,
)
from discofilter.core.membership import Membership
from discofilter.core.routing import GO_TRUE, Route
from discofilter.core.selectors import SelectorSet
from discofilter.errors import DiscofilterError
from discofilter.settings import ExclusionSettings
from discofilter.watchconn import Gate, Resolve, UpstreamClosed, WatchConnection

log = logging.getLogger("discofilter.exclusion")

KINDS = frozenset({"pods", "services", "endpoints", "endpointslices"})
"""The kinds kube-apiserver 1.28 was seen to filter by ``metadata.namespace`` in its watch cache."""

_EVERY_NAMESPACE = SelectorSet(())
_INITIAL_END = b"k8s.io/initial-events-end"


class ExpiredContinue(DiscofilterError):
    """A continue token whose first page excluded a namespace that has joined the mesh since."""

    status_hint = 410
    reason = "Expired"


class WatchState(Protocol):
    """What the re-open needs of the proxy's open watch (``proxy.OpenWatch``)."""

    expired: bool

    @property
    def stopped(self) -> bool: ...


class ExcludingFilter(Protocol):
    """What the re-open needs of a watch filter (``WatchFilter``, ``ProtoWatchFilter``)."""

    last_seen: bytes | None
    last_bookmark: bytes | None
    forward_bookmarks: bool
    tally: dict[bytes, int] | None

    def discard_partial(self) -> None: ...


@dataclass(slots=True)
class UpstreamQuery:
    """One upstream request's query, and what it excludes (empty: nothing, as without exclusion)."""

    raw: str
    excluded: tuple[str, ...] = ()
    bookmarks_added: bool = False
    """allowWatchBookmarks=true was added for discofilter's own use: the client gets none."""


@dataclass(slots=True)
class ServerSideExclusion:
    """Process-wide: the plan, the kinds that fell back, the page memory, and what /metrics shows."""

    settings: ExclusionSettings
    membership: Membership
    planner: Planner = field(init=False)
    pages: PageMemory = field(default_factory=PageMemory)
    unsupported: set[str] = field(default_factory=set)
    """Kinds whose API server refused the selector (400) while the same request without it was fine."""
    fallbacks: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    """verb -> upstream requests sent with at least one requirement."""
    reopens: Counter[str] = field(default_factory=Counter)
    """outcome -> re-opens of open watches (switched, expired, rejected, error, raced, stopped)."""
    streams: set[ReopeningStream] = field(default_factory=set)
    _planned_at: float | None = None

    def __post_init__(self) -> None:
        s = self.settings
        self.planner = Planner(Bounds(s.max_namespaces, s.max_selector_bytes))

    @property
    def enabled(self) -> bool:
        return self.settings.mode == "auto"

    def applies(self, route: Route) -> bool:
        """Cluster-wide reads of the four kinds (a per-namespace read needs no exclusion)."""
        return (
            self.enabled
            and route.namespace is None
            and route.resource in KINDS
            and route.resource not in self.unsupported
        )

    # -- the plan ---------------------------------------------------------------------------------

    def replan(self, now: float | None = None) -> bool:
        """Choose the set again among the namespaces that exist outside the mesh now; tell open watches."""
        if not self.membership.synced:
            return False
        self._planned_at = time.monotonic() if now is None else now
        candidates = self.membership.matching(_EVERY_NAMESPACE) - self.membership.members
        changed = self.planner.replan(candidates)
        if changed:
            log.info(
                "server-side exclusion: %d namespaces excluded at the API server",
                len(self.planner.current),
                extra={"excluded": len(self.planner.current)},
            )
            self.poke_all()
        return changed

    def current(self) -> tuple[str, ...]:
        """The set for a request built now (planned on first use, then by ``run``)."""
        if self._planned_at is None:
            self.replan()
        return self.planner.for_request(self.membership)

    def on_membership_change(self, changed: frozenset[str]) -> None:
        """A namespace joined or left the mesh, or the selectors changed: choose again at once. A
        joined namespace is out of every request built from now on anyway (``for_request``); open
        watches that exclude it are told, so one still open is ended (``ReopeningStream``)."""
        if changed:
            self.replan()
            self.poke_all()

    def poke_all(self) -> None:
        for stream in list(self.streams):
            stream.poke()

    async def run(self) -> None:
        """Replan every ``replan_seconds`` from the drops counted meanwhile."""
        while True:
            await asyncio.sleep(self.settings.replan_seconds)
            self.replan()

    # -- requests ---------------------------------------------------------------------------------

    def list_query(self, route: Route, query: str, params: Mapping[str, str]) -> UpstreamQuery:
        """A LIST page's upstream query. Every page of one LIST carries the same exclusion (see
        ``PageMemory``); raises ``ExpiredContinue`` when that is no longer safe."""
        if not self.applies(route):
            return UpstreamQuery(query)
        token = params.get("continue")
        if token:
            got = self.pages.for_continue(token, self.membership)
            if got == "expired":
                raise ExpiredContinue(
                    "The provided continue parameter is too old to display a consistent list result "
                    "(discofilter: mesh membership changed since its first page). You can start a new "
                    "list without the continue parameter."
                )
            excluded = got or ()
        else:
            excluded = self.current()
        if not excluded:
            return UpstreamQuery(query)
        self.requests["list"] += 1
        return UpstreamQuery(rewrite_query(query, exclude=excluded), excluded)

    def remember_page(self, continue_out: str | None, excluded: tuple[str, ...]) -> None:
        if continue_out and excluded:
            self.pages.remember(continue_out, excluded)

    def watch_query(self, route: Route, query: str, params: Mapping[str, str]) -> UpstreamQuery:
        """A WATCH's upstream query: the exclusion, and bookmarks asked for even when the client did
        not (they keep the resume point fresh for a re-open; the client gets them only if it asked)."""
        if not self.applies(route):
            return UpstreamQuery(query)
        excluded = self.current()
        wants = params.get("allowWatchBookmarks") in GO_TRUE
        set_params: dict[str, str | None] = {} if wants else {"allowWatchBookmarks": "true"}
        if excluded:
            self.requests["watch"] += 1
        raw = rewrite_query(query, exclude=excluded, set_params=set_params)
        return UpstreamQuery(raw, excluded, bookmarks_added=not wants)

    def refused(self, resource: str, body: bytes) -> None:
        """The API server answered 400 to a request with requirements and 200 without: this kind is
        filtered client-side only from now on. Logged once per kind, counted every time."""
        self.fallbacks[resource] += 1
        if resource not in self.unsupported:
            self.unsupported.add(resource)
            log.warning(
                "server-side exclusion: the API server refused metadata.namespace!= on %s (%s); "
                "filtering %s client-side only",
                resource,
                body[:200].decode("utf-8", "replace"),
                resource,
            )

    # -- metrics ----------------------------------------------------------------------------------

    def metrics(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "discofilter_exclusion_namespaces",
            "Non-mesh namespaces excluded at the API server on new requests now.",
            value=len(self.planner.for_request(self.membership)) if self.enabled else 0,
        )
        requests = CounterMetricFamily(
            "discofilter_exclusion_requests",
            "Upstream LISTs and WATCHes sent with metadata.namespace!= requirements.",
            labels=["verb"],
        )
        for verb in ("list", "watch"):
            requests.add_metric([verb], self.requests[verb])
        yield requests
        reopens = CounterMetricFamily(
            "discofilter_exclusion_reopens",
            "Upstream re-opens of open watches for a changed exclusion, by outcome.",
            labels=["outcome"],
        )
        for outcome in ("switched", "expired", "rejected", "error", "raced", "stopped"):
            reopens.add_metric([outcome], self.reopens[outcome])
        yield reopens
        fallbacks = CounterMetricFamily(
            "discofilter_exclusion_fallbacks",
            "Requests the API server refused with the exclusion (400), answered without it.",
            labels=["resource"],
        )
        for resource, n in sorted(self.fallbacks.items()):
            fallbacks.add_metric([resource], n)
        yield fallbacks


RvOf = Callable[[bytes], "str | None"]
Opener = Callable[[str], Awaitable[WatchConnection]]


class ReopeningStream:
    """An open filtered watch's upstream, re-opened when the excluded set changes (module docstring).
    Reads like a ``WatchConnection``: ``attach(sink)``, then ``read()`` until b""."""

    def __init__(
        self,
        sse: ServerSideExclusion,
        conn: WatchConnection,
        wf: ExcludingFilter,
        *,
        opener: Opener,
        resource: str,
        path: str,
        query: str,
        params: Mapping[str, str],
        active: tuple[str, ...],
        rv_of: RvOf,
        protobuf: bool,
        content_type: str | None,
        watch: WatchState,
        set_upstream: Callable[[WatchConnection], None],
    ) -> None:
        self.sse = sse
        self.conn = conn
        self.wf = wf
        self.opener = opener
        self.resource = resource
        self.path = path
        self.query = query
        self.params = params
        self.active = active
        self.rv_of = rv_of
        self.protobuf = protobuf
        self.content_type = content_type
        self.watch = watch
        self.set_upstream = set_upstream
        self.started = time.monotonic()
        rv = params.get("resourceVersion", "")
        self.streaming_list = params.get("sendInitialEvents") in GO_TRUE
        # From an exact resourceVersion, events come in order from the start; from "" or "0", or as a
        # streaming list, the initial state comes first, in no order (see core.exclusion.may_reopen).
        self.ordered = rv not in ("", "0") and not self.streaming_list
        self.last_reopen: float | None = None
        self.reopens = 0
        self._sink: Callable[[bytes, list[int]], bytes] | None = None
        self._gate: Gate | None = None
        self._resolve: Resolve | None = None
        self._carry = b""
        self._poked = False
        self._timer: asyncio.TimerHandle | None = None
        self.policy = ReopenPolicy(sse.settings.reopen_min_interval_seconds, sse.settings.fresh_seconds)
        sse.streams.add(self)

    def attach(
        self,
        sink: Callable[[bytes, list[int]], bytes],
        gate: Gate | None = None,
        resolve: Resolve | None = None,
    ) -> None:
        """As ``WatchConnection.attach``; a re-opened connection gets the same sink, gate and resolver."""
        self._sink, self._gate, self._resolve = sink, gate, resolve
        self.conn.attach(sink, gate, resolve)

    def poke(self) -> None:
        """The plan or membership changed: look again at the next chance."""
        self._poked = True
        self.conn.interrupt()

    def close(self) -> None:
        self.sse.streams.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self.conn.close()

    async def read(self) -> bytes:
        while True:
            if self._carry:
                out, self._carry = self._carry, b""
                return out
            if self._poked:
                self._poked = False
                self.conn.notify_data = False
                if self._must_end():
                    return b""
                sse = self.sse
                wanted = sse.current() if sse.enabled and self.resource not in sse.unsupported else ()
                if wanted != self.active and self.conn.resolving:
                    # The filter holds an undecided event (core.lifecycle) and the tail behind it:
                    # switching now would lose or repeat them. Look again once data moves.
                    self._poked = True
                    self.conn.notify_data = True
                elif wanted != self.active:
                    await self._consider(wanted)
                    continue  # what the old stream had queued (the carry) goes first
            kept = await self.conn.read()
            if kept or self.conn.finished:
                return kept
            self._poked = True  # interrupted (a poke, or data while waiting to switch): look again

    def _must_end(self) -> bool:
        """Never keep reading a stream that excludes a namespace now in the mesh: its objects would
        be missing. (A membership change already ends cluster-wide watches with 410, see
        proxy.WatchRegistry; this holds even if that changes.)"""
        if any(ns in self.sse.membership for ns in self.active):
            self.watch.expired = True  # the client gets the 410 a membership change gets it
            self.conn.end()
            return True
        return False

    async def _consider(self, wanted: tuple[str, ...]) -> None:
        if not self.ordered:
            bookmark = self.wf.last_bookmark
            if bookmark is not None and (not self.streaming_list or _INITIAL_END in bookmark):
                self.ordered = True
        seen = self.wf.last_seen
        now = time.monotonic()
        refusal = may_reopen(
            self.policy,
            now=now,
            wanted=wanted,
            active=self.active,
            ordered=self.ordered,
            last_rv=self.rv_of(seen) if seen is not None else None,
            last_rv_at=self.conn.last_data_at if seen is not None else None,
            last_reopen_at=self.last_reopen,
        )
        if refusal is None:
            await self._switch(wanted, now)
        elif refusal in ("unordered", "no_rv", "stale"):
            self.conn.notify_data = True  # the next event or bookmark may make it possible
        elif refusal == "rate_limited" and self._timer is None:
            assert self.last_reopen is not None
            delay = self.policy.min_interval_seconds - (now - self.last_reopen)
            self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.poke()

    async def _switch(self, wanted: tuple[str, ...], now: float) -> None:
        old = self.conn
        old.hold()  # from here nothing more reaches the filter: last_seen is the exact resume point
        self._carry = old.take_queued()
        seen = self.wf.last_seen
        assert seen is not None
        rv = self.rv_of(seen)
        assert rv is not None
        self.last_reopen = now
        timeout = remaining_timeout(self.params.get("timeoutSeconds"), now - self.started)
        query = rewrite_query(
            self.query,
            exclude=wanted,
            set_params={
                "resourceVersion": rv,
                "allowWatchBookmarks": "true",
                "sendInitialEvents": None,
                "resourceVersionMatch": None,
                "timeoutSeconds": None if timeout is None else str(timeout),
            },
        )
        new: WatchConnection | None = None
        outcome = "error"
        try:
            new = await self.opener(f"{self.path}?{query}")
            grace = self.sse.settings.switch_grace_seconds
            head = await asyncio.wait_for(new.head(), timeout=max(grace, 10.0))
            if head.status != 200 or head.headers.get("Content-Type") != self.content_type:
                outcome = "rejected"
            else:
                first, error = await self._peek(new, grace)
                if error:
                    outcome = "expired"
                elif self.watch.stopped:
                    outcome = "stopped"
                elif self.wf.last_seen is not seen:
                    outcome = "raced"  # data reached the filter despite the hold: keep the old one
                else:
                    new.unread(first)
                    self._commit(new, wanted)
                    outcome = "switched"
                    new = None
        except (DiscofilterError, OSError, TimeoutError, UpstreamClosed) as exc:
            log.info("server-side exclusion: re-open of %s failed: %s", self.path, exc)
            outcome = "error"
        finally:
            if new is not None:
                new.close()
            if outcome != "switched":
                old.release()
            self.sse.reopens[outcome] += 1
        if outcome != "switched":
            log.info("server-side exclusion: kept the old upstream of %s (%s)", self.path, outcome)

    async def _peek(self, new: WatchConnection, grace: float) -> tuple[bytes, bool]:
        """The new stream's first raw body bytes (as many as arrive within ``grace``), and whether they
        begin with an ERROR event."""
        got = b""
        deadline = time.monotonic() + grace
        while True:
            verdict = _starts_with_error(got, protobuf=self.protobuf)
            if verdict is not None:
                return got, verdict
            left = deadline - time.monotonic()
            if left <= 0:
                return got, False
            try:
                chunk = await asyncio.wait_for(new.read(), timeout=left)
            except TimeoutError:
                return got, False
            if not chunk:
                return got, True  # ended at once: never switch to that
            got += chunk

    def _commit(self, new: WatchConnection, wanted: tuple[str, ...]) -> None:
        old = self.conn
        old.close()
        self.wf.discard_partial()  # the event begun on the old stream comes whole on the new one
        assert self._sink is not None
        new.attach(self._sink, self._gate, self._resolve)
        self.conn = new
        self.set_upstream(new)
        self.active = wanted
        self.reopens += 1


def _starts_with_error(data: bytes, *, protobuf: bool) -> bool | None:
    """Does the stream begin with an ERROR event? None until enough bytes are there to say."""
    if protobuf:
        # 4-byte length, then WatchEvent field 1 (type): 0a 05 "ERROR" (apimachinery framer).
        prefix = b"\x0a\x05ERROR"
        if len(data) < 4 + len(prefix):
            return None
        return data[4 : 4 + len(prefix)] == prefix
    head = data.lstrip()
    prefix = b'{"type":"ERROR"'
    if len(head) < len(prefix):
        return None
    return head.startswith(prefix)


__all__ = ["KINDS", "ExpiredContinue", "ReopeningStream", "ServerSideExclusion", "UpstreamQuery"]

"""NamespaceTracker: keeps ``core.membership`` current by listing, then watching, namespaces.

The watch contract is client-go's reflector (``tools/cache/reflector.go``):
- LIST, remember its resourceVersion, then WATCH from it with ``allowWatchBookmarks=true`` and resume
  from the last RV seen (events and bookmarks) whenever the watch ends.
- A 410 (``Expired``/``Gone``, as an ERROR event or an HTTP status) means history is gone: relist with
  ``resourceVersion=""``, a consistent read, since membership must never be served from a stale cache.
- Failures back off exponentially with jitter (800 ms to 30 s, client-go's numbers); a watch that ends
  within a second with no events counts as a failure (client-go's ``VeryShortWatchError``).
- Silence beyond ``inactivity_seconds`` (bookmarks come every ~60 s) ends the watch and resumes it.

I/O goes through ``NamespaceSource`` so tests can drive the tracker with a fake; the real source is
kubernetes-asyncio with discofilter's own credentials.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, cast

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, ApiException, CoreV1Api

from discofilter.core.confirmation import Confirmation, Waiter
from discofilter.core.framing import LineFramer
from discofilter.core.membership import Membership
from discofilter.errors import (
    MAX_ERROR_BODY,
    DiscofilterError,
    ExpiredError,
    NotReadyError,
    StreamFramingError,
    UpstreamError,
    raise_for_status,
    status_words,
)
from discofilter.settings import NamespaceWatchSettings

log = logging.getLogger("discofilter.tracker")

RawDict = dict[str, Any]


OPEN = "OPEN"
"""Not a Kubernetes event type: a source's sign that the watch was accepted (see ``NamespaceSource``)."""


class NamespaceSource(Protocol):
    async def list(self) -> tuple[list[RawDict], str]:
        """A consistent LIST of every namespace: (items, list resourceVersion)."""
        ...

    def watch(self, resource_version: str, timeout_seconds: int) -> AsyncIterator[tuple[str, RawDict]]:
        """WATCH namespaces from ``resource_version`` with bookmarks: yields (type, object).

        May first yield ``("OPEN", {})`` once the API server has accepted the watch: from then on the
        stream replays every change since ``resource_version``, so membership is as current as the API
        server's, even if no namespace changes for a long time (``fresh`` needs to know that).
        """
        ...


class KubernetesNamespaceSource:
    """The real source: kubernetes-asyncio's CoreV1Api with discofilter's own configuration.

    Bodies are read raw (``_preload_content=False``) and framed with the core LineFramer: the objects
    are only needed as dicts, and model deserialization would cost more than the whole filter.
    """

    def __init__(self, api_client: ApiClient) -> None:
        self._api = CoreV1Api(api_client)

    async def list(self, field_selector: str | None = None) -> tuple[list[RawDict], str]:
        """A consistent LIST of every namespace, or of those ``field_selector`` picks (the resolver's
        lookup of one namespace by name)."""
        kwargs: dict[str, Any] = {"field_selector": field_selector} if field_selector else {}
        try:
            resp = cast(
                aiohttp.ClientResponse,
                await self._api.list_namespace(resource_version="", _preload_content=False, **kwargs),
            )
        except ApiException as exc:
            raise _api_error(exc) from exc
        async with resp:
            body = await resp.read()
            raise_for_status(resp.status, resp.reason, body, "namespace list")
        doc = orjson.loads(body)
        return list(doc.get("items") or []), str(doc.get("metadata", {}).get("resourceVersion", ""))

    async def watch(self, resource_version: str, timeout_seconds: int) -> AsyncIterator[tuple[str, RawDict]]:
        try:
            resp = cast(
                aiohttp.ClientResponse,
                await self._api.list_namespace(
                    watch=True,
                    allow_watch_bookmarks=True,
                    resource_version=resource_version,
                    timeout_seconds=timeout_seconds,
                    _preload_content=False,
                ),
            )
        except ApiException as exc:
            raise _api_error(exc) from exc
        framer = LineFramer()
        async with resp:
            if resp.status >= 300:
                body = await resp.content.read(MAX_ERROR_BODY)
                raise_for_status(resp.status, resp.reason, body, "namespace watch")
            yield OPEN, {}
            async for chunk in resp.content.iter_any():
                for line in framer.feed(chunk):
                    event = orjson.loads(line)
                    yield str(event.get("type")), event.get("object") or {}
            framer.feed_eof()


def _api_error(exc: ApiException) -> UpstreamError:
    cls = ExpiredError if exc.status == 410 else UpstreamError
    return cls(f"namespace list/watch failed: {exc.status} {exc.reason}", status=exc.status)


class Backoff:
    """Exponential backoff with full jitter, as client-go's wait.Backoff with Jitter=1.0."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        delay = self._next * (1.0 + self._rng.random())
        self._next = min(self._next * 2.0, self.maximum)
        return min(delay, self.maximum)


WAKE_FLOOR_SECONDS = 0.2
"""A wake (``api_server_answered``) never starts a namespace attempt sooner than this after the last
failed one: if proxied answers succeed while namespace requests keep failing to connect (a route that
differs), answers at istiod's rate must not become namespace LISTs at that rate."""

LOGGED_NAMESPACES = 100
"""Namespaces named in one membership-change line. A mesh config change can admit thousands at once
(``discoverySelectors`` edited, a relist after a long outage); one line of 100 names and a count stays
readable and within what log pipelines accept (many cut lines at 16-64 KiB)."""


def reschedule_unless_expiring(timer: asyncio.Timeout, when: float) -> bool:
    """Move ``timer``'s deadline to ``when``, unless it has already fired: then it is ending the read or
    sleep it guards anyway, and ``reschedule`` would raise ("Cannot change state of expiring Timeout")
    into whichever request called it, a 500 instead of an answer (seen in the bench under load)."""
    if timer.expired():
        return False
    timer.reschedule(when)
    return True


class NamespaceTracker:
    """Drives ``Membership`` from a ``NamespaceSource``. ``ready`` is set after the first LIST."""

    def __init__(
        self,
        membership: Membership,
        source: NamespaceSource,
        settings: NamespaceWatchSettings,
        on_change: Callable[[frozenset[str]], None],
        *,
        on_unknown: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.membership = membership
        self.source = source
        self.settings = settings
        self.on_change = on_change
        self.ready = asyncio.Event()
        self.clock = clock
        self.backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)
        self.last_contact: float | None = None
        """Monotonic time of the last successful LIST, event or bookmark."""
        self.watch_open = False
        self.relists = 0
        self.reconnects = 0
        self.membership_changes = 0
        self.failing_since: float | None = None
        """Monotonic time the list/watch started failing (a backoff, or a silent watch); None once
        anything arrives again."""
        self._silent = False
        """The last watch went silent past ``inactivity_seconds``: an accepted watch alone is then no
        proof of health (a server that accepts and says nothing would look healthy forever)."""
        self.on_unknown = on_unknown
        """Called once per outage when membership has gone unconfirmed past ``unknown_after_seconds``."""
        self._watchdog: asyncio.TimerHandle | None = None
        self._unknown_signalled = False
        self.confirmation = Confirmation(quiet_bound=settings.confirmed_quiet_seconds, now=clock())
        """Whether membership is confirmed now, and the filtered requests waiting until it is."""
        self._released: dict[Waiter, asyncio.Future[None]] = {}
        self._read_timer: asyncio.Timeout | None = None
        """The pending watch read's timeout: rescheduled to now to cut the watch for a confirming LIST."""
        self._sleep_timer: asyncio.Timeout | None = None
        """The backoff sleep in progress: rescheduled to end it early when the API server answers."""
        self._cut = False
        """The last watch was ended to make room for a confirming LIST (not a failure)."""
        self._unreachable_at: float | None = None
        """Loop time of the last attempt that failed without an answer from the API server (refused,
        reset, timed out); None once an attempt got one. Only such a failure is woken early."""
        self._refusals_logged = False

    def unknown_for(self) -> float:
        """Seconds membership has gone unconfirmed: 0 while nothing fails (a quiet watch the API
        server accepted is current however old its last event), infinite before the first LIST, and
        once failing, the time since the last contact, when membership was last known right."""
        if self.last_contact is None:
            return float("inf")
        if self.failing_since is None:
            return 0.0
        return max(0.0, self.clock() - self.last_contact)

    def _confirmed(self) -> None:
        """Membership is known again (a LIST came, a watch opened): re-arm the outage signal."""
        self._unknown_signalled = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _arm_watchdog(self) -> None:
        """Membership stopped being confirmed: signal ``on_unknown`` when the bound passes."""
        if self.on_unknown is None or self._unknown_signalled or self._watchdog is not None:
            return
        if self.last_contact is None:
            return  # never synced: nothing is served filtered yet, and /readyz already says so
        delay = max(0.0, self.settings.unknown_after_seconds - self.unknown_for())
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._check_unknown)

    def _check_unknown(self) -> None:
        self._watchdog = None
        if self.on_unknown is None or self._unknown_signalled or self.failing_since is None:
            return
        left = self.settings.unknown_after_seconds - self.unknown_for()
        if left > 0:  # contact came meanwhile, then a new failure
            self._arm_watchdog()
            return
        self._unknown_signalled = True
        log.warning(
            "mesh membership unconfirmed for %.1f s (namespace watch down): filtered requests fail closed",
            self.unknown_for(),
        )
        self.on_unknown()

    async def await_confirmed(self) -> None:
        """Return once membership is confirmed (at once if it is now); raise ``NotReadyError`` when
        it is not within ``confirm_wait_seconds``. Waiters share one namespace LIST (core.confirmation)."""
        conf = self.confirmation
        waiter = conf.admit(self.clock())
        if waiter is None:
            return
        if conf.waiting == 1:
            log.info(
                "mesh membership unconfirmed (namespace watch %s): filtered requests wait for a "
                "namespace LIST",
                conf.phase.value,
            )
        fut = asyncio.get_running_loop().create_future()
        self._released[waiter] = fut
        self._cut_watch_for_list()
        try:
            async with asyncio.timeout(self.settings.confirm_wait_seconds):
                await fut
        except TimeoutError:
            if waiter.outcome == "confirmed":
                return  # released as the bound passed
            conf.give_up(waiter, self.clock(), "refused")
            if not self._refusals_logged:
                self._refusals_logged = True
                log.warning(
                    "filtered requests refused (503): mesh membership not confirmed within %.1f s "
                    "(namespace watch %s)",
                    self.settings.confirm_wait_seconds,
                    conf.phase.value,
                )
            raise NotReadyError(
                "discofilter's mesh membership is unconfirmed (its namespace watch is down) and no "
                f"namespace LIST confirmed it within {self.settings.confirm_wait_seconds:g} s; "
                "filtered reads fail closed until it recovers"
            ) from None
        except asyncio.CancelledError:
            conf.give_up(waiter, self.clock(), "abandoned")
            raise
        finally:
            self._released.pop(waiter, None)

    def _cut_watch_for_list(self) -> None:
        """A confirming LIST is wanted: end a pending watch read now (the tracker then lists). A backoff
        sleep is left alone: the API server failed, and the LIST comes when the backoff ends or the API
        server answers (``api_server_answered``)."""
        if self._read_timer is not None and self.confirmation.list_wanted():
            reschedule_unless_expiring(self._read_timer, asyncio.get_running_loop().time())

    def api_server_answered(self) -> None:
        """The API server answered a request (proxied or not): if the namespace list/watch is waiting
        out a backoff after failing to reach it, retry now. Cheap: called on every upstream answer."""
        if self._sleep_timer is None or self._unreachable_at is None:
            return
        at = self._unreachable_at + WAKE_FLOOR_SECONDS
        when = self._sleep_timer.when()
        if when is not None and when > at:
            loop_now = asyncio.get_running_loop().time()
            if reschedule_unless_expiring(self._sleep_timer, max(at, loop_now)):
                log.info("the API server answers again: retrying the namespace list/watch now")

    def _release(self, waiters: list[Waiter]) -> None:
        if not waiters:
            return
        for w in waiters:
            fut = self._released.get(w)
            if fut is not None and not fut.done():
                fut.set_result(None)
        log.info(
            "namespace LIST confirmed mesh membership: %d waiting filtered requests go on "
            "(longest wait %.2f s)",
            len(waiters),
            max(w.waited for w in waiters),
        )

    @property
    def healthy(self) -> bool:
        return self.ready.is_set() and self.watch_open

    def fresh(self) -> bool:
        """Readiness: synced, and membership unconfirmed (``unknown_for``) for at most ``max_stale_seconds``.

        A quiet but working watch is fresh however old its last event: only a failure starts the clock,
        and staleness is then counted from the last contact, when membership was last known right.
        """
        return self.ready.is_set() and self.unknown_for() <= self.settings.max_stale_seconds

    def _contact(self) -> None:
        self.last_contact = self.clock()
        self.failing_since = None
        self._silent = False
        self._confirmed()

    def _failing(self) -> None:
        if self.failing_since is None:
            self.failing_since = self.clock()
        self._arm_watchdog()

    def _changed(self, changed: frozenset[str]) -> None:
        if changed:
            self.membership_changes += 1
            names = sorted(changed)
            shown = names[:LOGGED_NAMESPACES]
            more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
            log.info(
                "mesh membership changed: %s%s (now %d of %d namespaces, generation %d)",
                ", ".join(shown),
                more,
                len(self.membership),
                self.membership.known,
                self.membership.generation,
                extra={
                    "changed": shown,
                    "changed_count": len(names),
                    "mesh_namespaces": len(self.membership),
                    "namespaces": self.membership.known,
                    "generation": self.membership.generation,
                },
            )
            self.on_change(changed)

    async def relist(self) -> str:
        attempt = self.confirmation.list_started(self.clock())
        try:
            items, rv = await self.source.list()
            self.relists += 1
            first = not self.ready.is_set()
            self._changed(self.membership.replace(items, rv))
        except BaseException:
            self.confirmation.list_failed(attempt, self.clock())
            raise
        self._contact()
        if first:
            log.info(
                "namespace membership synced: %d of %d namespaces match %s (rv %s)",
                len(self.membership),
                self.membership.known,
                self.membership.selectors,
                rv,
            )
        self.ready.set()
        self._unreachable_at = None
        self._refusals_logged = False
        self._release(self.confirmation.list_succeeded(attempt, self.clock()))
        return rv

    async def watch_once(self, rv: str) -> str | None:
        """One WATCH from ``rv``. Returns the RV to resume from, or None to relist."""
        started = self.clock()
        got_any = False
        inactivity = self.settings.inactivity_seconds
        stream = self.source.watch(rv, self.settings.timeout_seconds)
        self.watch_open = True
        self._cut = False
        clean = False
        try:
            while True:
                if self.confirmation.list_wanted():
                    # Filtered requests wait for a confirming LIST: make room for it (the tracker
                    # lists next, then watches from the list's resourceVersion).
                    self._cut = True
                    return rv
                try:
                    # asyncio.timeout, not wait_for: no inner task, so a cancellation of the tracker
                    # reaches the stream directly and cannot be swallowed (wait_for in 3.11 loses a
                    # cancel when the inner read fails at the same moment).
                    etype, obj = await self._read(stream, inactivity)
                except StopAsyncIteration:
                    clean = True
                    break
                except TimeoutError:
                    if self.confirmation.list_wanted():
                        continue  # cut for a confirming LIST (_cut_watch_for_list), not silence
                    self._failing()
                    self._silent = True
                    log.warning("namespace watch silent for %.0f s; reconnecting from rv %s", inactivity, rv)
                    return rv
                if etype == OPEN:
                    # Accepted by the API server: not an event (the short-watch guard still applies),
                    # but a failure to connect is over.
                    self.confirmation.watch_opened(self.clock())
                    if not self._silent:
                        self.failing_since = None
                        self._confirmed()
                    continue
                got_any = True
                self._contact()
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        log.info("namespace watch expired at rv %s (%s); relisting", rv, obj.get("message"))
                        return None
                    raise UpstreamError(
                        f"namespace watch ended by an ERROR event: {status_words(obj)}",
                        status=obj.get("code"),
                    )
                meta = obj.get("metadata") or {}
                new_rv = meta.get("resourceVersion")
                if etype != "BOOKMARK":
                    try:
                        self._changed(self.membership.apply(etype, obj))
                    except ValueError as exc:
                        raise StreamFramingError(f"malformed namespace event: {exc}") from exc
                if isinstance(new_rv, str) and new_rv:
                    rv = new_rv
                self.confirmation.watch_contact(self.clock())  # after the event is in membership
        finally:
            self._read_timer = None
            self.watch_open = False
            self.confirmation.watch_ended(self.clock(), clean=clean)
            await stream.aclose()  # type: ignore[attr-defined]
        if not got_any and self.clock() - started < self.settings.short_watch_seconds:
            raise UpstreamError("namespace watch lasted less than a second and no items received")
        return rv

    async def _read(
        self, stream: AsyncIterator[tuple[str, RawDict]], inactivity: float
    ) -> tuple[str, RawDict]:
        """The next (type, object) of the watch, within ``inactivity`` seconds (or sooner, if a
        confirming LIST cuts it: ``_cut_watch_for_list`` reschedules the timer)."""
        async with asyncio.timeout(inactivity) as timer:
            self._read_timer = timer
            try:
                return await anext(stream)
            finally:
                self._read_timer = None

    async def run(self) -> None:
        """Run forever: list, watch, resume, relist on 410, back off on failures."""
        try:
            await self._run()
        finally:
            self._confirmed()  # no outage signal after the tracker has stopped

    async def _run(self) -> None:
        rv: str | None = None
        while True:
            try:
                if rv is None or self.confirmation.list_wanted():
                    rv = await self.relist()
                    listed_rv = rv
                    rv = await self.watch_once(rv)
                    if self._cut:
                        continue  # cut for another confirming LIST: not a failure
                    if rv is None or rv == listed_rv:
                        # Expired (or silent) straight after a fresh LIST: the API server is not
                        # keeping up. Back off rather than relisting in a tight loop.
                        await self._sleep_backoff("namespace watch expired right after a relist")
                        continue
                else:
                    rv = await self.watch_once(rv)
                    if self._cut:
                        continue
                self.backoff.reset()
            except ExpiredError:
                rv = None
            except (DiscofilterError, aiohttp.ClientError, OSError, ValueError) as exc:
                # ValueError covers orjson.JSONDecodeError of a corrupt body.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # a cancelled read surfaced as an I/O error
                self.reconnects += 1
                answered = isinstance(exc, UpstreamError) and exc.status is not None
                self._unreachable_at = None if answered else asyncio.get_running_loop().time()
                await self._sleep_backoff(f"namespace list/watch failed ({exc})")

    async def _sleep_backoff(self, why: str) -> None:
        self._failing()
        delay = self.backoff.next()
        log.warning("%s; retrying in %.1f s", why, delay)
        try:
            async with asyncio.timeout(delay) as timer:
                self._sleep_timer = timer  # api_server_answered may end it early
                try:
                    await asyncio.get_running_loop().create_future()  # only the timer ends this
                finally:
                    self._sleep_timer = None
        except TimeoutError:
            pass

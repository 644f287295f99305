"""Confirmation: when mesh membership is known to be current, and which filtered requests must wait.

Rule 1: no I/O and no clock of its own. Every input carries ``now`` (monotonic seconds); the namespace
tracker (``discofilter.tracker``) feeds what its LIST and WATCH do, the proxy asks ``admit`` before a
filtered LIST or WATCH, and the asyncio shell turns waiters into futures.

Why it exists: after an API server outage, clients relist at once. An answer filtered under the membership
discofilter had before the outage is a guess (a namespace may have joined meanwhile), and the 410 that
later corrects it costs the client a whole round of client-go's relist backoff (up to 30 s, jitter 2x).
So a filtered answer is only ever computed from membership that is *confirmed*.

Rule 2, what confirms membership (a *confirmation point*):
- a namespace LIST that succeeded, as of the moment it *started* (the API server took its snapshot later);
- an event or BOOKMARK on a namespace watch that is open.

Rule 3, the chain: membership is confirmed at ``now`` while the chain from the last confirmation point to
``now`` is unbroken (phase LIVE) and that point is at most ``quiet_bound`` old.
- Any end of the watch breaks the chain: an error, a 410, silence past the inactivity timeout, or a cut.
- A clean end (the server's watch timeout) leaves it RESUMING: the resume from the last resourceVersion,
  once the API server accepts it (OPEN, no 410), replays every change since, so the chain is whole again
  and the last confirmation point still stands. Until then nothing is confirmed ("reconnecting").
- After a failure (BROKEN), a resumed watch counts only once it delivers an event or a bookmark.
- ``quiet_bound`` covers the one thing a connected watch cannot tell: that its API server went silently
  away (a partition, a dead node; a killed or restarted process closes the socket and is seen at once).
  A healthy quiet watch gets a bookmark at least every 60 s, so past the bound it is no longer trusted
  on its own: the next filtered request asks for a LIST.

Rule 4, waiting: a request admitted while membership is unconfirmed waits for a LIST that *started after
it arrived* (a LIST already in flight may have taken its snapshot before a change the client has seen).
One LIST serves every request waiting for it: ``list_wanted`` is the tracker's single-flight signal.
A waiter leaves confirmed, refused (its bound passed: the shell answers 503) or abandoned (the client left).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["confirmed", "refused", "abandoned"]
OUTCOMES: tuple[Outcome, ...] = ("confirmed", "refused", "abandoned")

WAIT_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""A confirming namespace LIST takes one round trip plus the list itself (milliseconds; about a second
for 10k namespaces); seconds mean the API server is still down."""


class Phase(enum.Enum):
    UNSYNCED = "unsynced"
    """No namespace LIST has succeeded yet."""
    LIVE = "live"
    """The chain from ``confirmed_at`` to now is unbroken."""
    RESUMING = "resuming"
    """The watch ended cleanly; its resume has not been accepted yet."""
    BROKEN = "broken"
    """The watch failed (or was cut): only a LIST, or a contact on a new watch, confirms again."""


@dataclass(eq=False, slots=True)
class Waiter:
    """One filtered request waiting for a confirming LIST."""

    arrived: float
    needs: int
    """The number of the first LIST attempt that can release it: the next one to start after arrival."""
    outcome: Outcome | None = None
    waited: float = 0.0


@dataclass(slots=True)
class WaitStats:
    """Waiters by outcome: a count, the seconds they waited, and a fixed-bucket histogram of them."""

    count: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        self.buckets[bisect.bisect_left(WAIT_BUCKETS, seconds)] += 1


class Confirmation:
    """The confirmation rule and the waiting room (see the module docstring for the rules)."""

    __slots__ = (
        "_lapsed_at",
        "_listing",
        "_unconfirmed_total",
        "_waiters",
        "attempts_started",
        "confirmed_at",
        "phase",
        "quiet_bound",
        "waits",
        "watch_open",
    )

    def __init__(self, *, quiet_bound: float, now: float) -> None:
        self.quiet_bound = quiet_bound
        self.phase = Phase.UNSYNCED
        self.confirmed_at: float | None = None
        """The last confirmation point (LIVE only means something with it)."""
        self.watch_open = False
        self.attempts_started = 0
        """LIST attempts begun so far; attempt numbers count from 1."""
        self._listing: dict[int, float] = {}
        """LIST attempts in flight: number -> when it started."""
        self._waiters: list[Waiter] = []
        self._lapsed_at: float | None = now
        """When membership last stopped being confirmed; None while it is."""
        self._unconfirmed_total = 0.0
        self.waits = {o: WaitStats() for o in OUTCOMES}

    # -- queries ------------------------------------------------------------------------------------

    def confirmed(self, now: float) -> bool:
        return (
            self.phase is Phase.LIVE
            and self.confirmed_at is not None
            and now - self.confirmed_at <= self.quiet_bound
        )

    def list_wanted(self) -> bool:
        """A waiter needs a LIST that has not started yet: the tracker should start one. (A waiter whose
        LIST failed is released by any later one, which also started after it arrived.)"""
        if not self._waiters:
            return False
        return not self._listing or self._waiters[-1].needs > max(self._listing)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def lapsed_since(self, now: float) -> float | None:
        """When membership stopped being confirmed, or None if it is confirmed at ``now``."""
        if self.confirmed(now):
            return None
        if self._lapsed_at is not None:
            return self._lapsed_at
        assert self.confirmed_at is not None  # LIVE, past the quiet bound
        return self.confirmed_at + self.quiet_bound

    def unconfirmed_seconds(self, now: float) -> float:
        """Total time membership has spent unconfirmed, start-up included."""
        lapsed = self.lapsed_since(now)
        return self._unconfirmed_total + (0.0 if lapsed is None else max(0.0, now - lapsed))

    # -- requests -----------------------------------------------------------------------------------

    def admit(self, now: float) -> Waiter | None:
        """None: serve now. Otherwise the request waits for the returned waiter's LIST."""
        if self.confirmed(now):
            return None
        w = Waiter(now, self.attempts_started + 1)
        self._waiters.append(w)
        return w

    def give_up(self, waiter: Waiter, now: float, outcome: Literal["refused", "abandoned"]) -> None:
        """The waiter's bound passed (refused) or its client went away (abandoned)."""
        if waiter.outcome is not None:
            return  # released meanwhile
        self._waiters.remove(waiter)
        self._finish(waiter, now, outcome)

    def _finish(self, waiter: Waiter, now: float, outcome: Outcome) -> None:
        waiter.outcome = outcome
        waiter.waited = max(0.0, now - waiter.arrived)
        self.waits[outcome].observe(waiter.waited)

    # -- the tracker's list and watch ---------------------------------------------------------------

    def list_started(self, now: float) -> int:
        self.attempts_started += 1
        self._listing[self.attempts_started] = now
        return self.attempts_started

    def list_succeeded(self, attempt: int, now: float) -> list[Waiter]:
        """The LIST is in membership: confirmed as of its start. Returns the waiters it releases."""
        started = self._listing.pop(attempt)
        self._live(started if self.confirmed_at is None else max(started, self.confirmed_at), now)
        released = [w for w in self._waiters if w.needs <= attempt]
        if released:
            self._waiters = [w for w in self._waiters if w.needs > attempt]
            for w in released:
                self._finish(w, now, "confirmed")
        return released

    def list_failed(self, attempt: int, now: float) -> None:
        self._listing.pop(attempt, None)
        if self.phase is not Phase.UNSYNCED:
            self._break(now, Phase.BROKEN)

    def watch_opened(self, now: float) -> None:
        """The API server accepted the watch (its response headers came)."""
        self.watch_open = True
        if self.phase is Phase.RESUMING:
            self._live(self.confirmed_at, now)

    def watch_contact(self, now: float) -> None:
        """An event or BOOKMARK on the open watch (not an ERROR)."""
        if self.watch_open and self.phase is not Phase.UNSYNCED:
            self._live(now, now)

    def watch_ended(self, now: float, *, clean: bool) -> None:
        """clean: the stream ended normally (the server's timeout); otherwise it failed or was cut."""
        self.watch_open = False
        if self.phase is Phase.LIVE:
            self._break(now, Phase.RESUMING if clean else Phase.BROKEN)
        elif self.phase is Phase.RESUMING:
            self.phase = Phase.BROKEN

    # -- transitions --------------------------------------------------------------------------------

    def _live(self, confirmed_at: float | None, now: float) -> None:
        lapsed = self.lapsed_since(now)
        if lapsed is not None:
            self._unconfirmed_total += max(0.0, now - lapsed)
        self.phase = Phase.LIVE
        self.confirmed_at = confirmed_at
        self._lapsed_at = None
        if not self.confirmed(now):  # a resume whose last confirmation is already past the bound
            self._lapsed_at = now  # counted up to now just above

    def _break(self, now: float, phase: Phase) -> None:
        if self._lapsed_at is None:
            lapsed = self.lapsed_since(now)
            self._lapsed_at = now if lapsed is None else lapsed
        self.phase = phase

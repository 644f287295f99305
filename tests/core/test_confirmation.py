"""core.confirmation: when membership counts as confirmed, who waits, and when one LIST is wanted.

The rules one by one, then a hypothesis schedule of outages, silent partitions, label flips, bookmarks,
watch timeouts and requests against a model world whose truth the test keeps itself: no filtered answer
is ever computed from a membership older than the last confirmation, that confirmation is never older
than the quiet bound, and a request that had to wait sees at least the truth of the moment it arrived.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discofilter.core.confirmation import Confirmation, Phase, Waiter

B = 65.0


def synced(now: float = 0.0) -> Confirmation:
    c = Confirmation(quiet_bound=B, now=0.0)
    c.list_succeeded(c.list_started(now), now)
    c.watch_opened(now)
    return c


def test_nothing_is_confirmed_before_the_first_list() -> None:
    c = Confirmation(quiet_bound=B, now=0.0)
    assert c.phase is Phase.UNSYNCED and not c.confirmed(0.0)
    w = c.admit(1.0)
    assert w is not None and c.list_wanted()
    attempt = c.list_started(2.0)
    assert not c.list_wanted()  # one LIST for everyone already waiting
    assert c.list_succeeded(attempt, 3.0) == [w]
    assert w.outcome == "confirmed" and w.waited == 2.0
    assert c.confirmed(3.0) and c.confirmed_at == 2.0  # as of the LIST's start
    assert c.unconfirmed_seconds(10.0) == 3.0


def test_a_live_watch_confirms_until_the_quiet_bound() -> None:
    c = synced()
    assert c.admit(B) is None
    w = c.admit(B + 0.1)  # connected, but nothing heard for longer than a bookmark period
    assert w is not None and c.list_wanted()
    c.watch_contact(B + 0.2)  # a bookmark: new requests go on...
    assert c.admit(B + 0.3) is None
    assert c.list_wanted()  # ...but the one already waiting still gets its LIST
    assert c.unconfirmed_seconds(B + 1) == pytest.approx(0.2)


def test_a_clean_end_is_unconfirmed_until_the_resume_is_accepted() -> None:
    c = synced()
    c.watch_contact(10.0)
    c.watch_ended(20.0, clean=True)
    assert c.phase is Phase.RESUMING and c.admit(20.1) is not None
    c.watch_opened(20.2)  # accepted: the API server replays everything since the last RV
    assert c.confirmed(20.3) and c.confirmed_at == 10.0
    assert not c.confirmed(10.0 + B + 0.1)  # still counted from the last contact


def test_after_a_failure_only_an_event_or_bookmark_or_a_list_confirms() -> None:
    c = synced()
    c.watch_ended(5.0, clean=False)
    assert c.phase is Phase.BROKEN and not c.confirmed(5.0)
    c.watch_opened(6.0)  # a resumed watch: accepted, but its replay may still be on the way
    assert not c.confirmed(6.0)
    c.watch_contact(7.0)
    assert c.confirmed(7.0) and c.confirmed_at == 7.0
    c.watch_ended(8.0, clean=False)
    c.watch_contact(8.5)  # no watch open: nothing to count
    assert not c.confirmed(8.5)
    c.watch_ended(9.0, clean=True)  # a clean end of an unconfirmed watch stays broken
    c.watch_opened(9.5)
    assert c.phase is Phase.BROKEN


def test_a_waiter_needs_a_list_that_started_after_it_arrived() -> None:
    c = synced()
    c.watch_ended(1.0, clean=False)
    early = c.admit(2.0)
    first = c.list_started(3.0)
    late = c.admit(4.0)  # this LIST may have taken its snapshot before this request arrived
    assert early is not None and late is not None and c.list_wanted()
    assert c.list_succeeded(first, 5.0) == [early]
    assert late.outcome is None and c.list_wanted() and c.confirmed(5.0)
    second = c.list_started(6.0)
    assert c.list_succeeded(second, 7.0) == [late]
    assert not c.list_wanted() and c.waiting == 0


def test_a_failed_list_leaves_its_waiters_for_the_next() -> None:
    c = synced()
    c.watch_ended(1.0, clean=False)
    w = c.admit(2.0)
    c.list_failed(c.list_started(3.0), 4.0)
    assert c.list_wanted() and w is not None and w.outcome is None
    assert c.list_succeeded(c.list_started(5.0), 6.0) == [w]


def test_giving_up_counts_refusals_and_abandons_once() -> None:
    c = synced()
    c.watch_ended(1.0, clean=False)
    a, b = c.admit(2.0), c.admit(2.5)
    assert a is not None and b is not None
    c.give_up(a, 7.0, "refused")
    c.give_up(b, 3.0, "abandoned")
    assert not c.list_wanted()  # nobody left to wait
    c.give_up(a, 8.0, "refused")  # already gone: no double count
    assert (c.waits["refused"].count, c.waits["refused"].seconds) == (1, 5.0)
    assert (c.waits["abandoned"].count, c.waits["confirmed"].count) == (1, 0)
    assert sum(c.waits["refused"].buckets) == 1


def test_unconfirmed_time_adds_up_across_lapses() -> None:
    c = Confirmation(quiet_bound=B, now=0.0)
    c.list_succeeded(c.list_started(1.0), 2.0)  # 2 s at start-up
    c.watch_opened(2.0)
    c.watch_ended(10.0, clean=False)
    c.watch_opened(11.0)
    c.watch_contact(13.0)  # 3 s broken
    assert c.unconfirmed_seconds(13.0) == 5.0
    assert c.unconfirmed_seconds(13.0 + B + 4) == 9.0  # quiet past the bound: 4 s more so far
    c.watch_contact(13.0 + B + 4)
    c.watch_ended(100.0, clean=True)
    c.watch_opened(100.5)
    assert c.unconfirmed_seconds(101.0) == 9.5


# -- a schedule against a model world -----------------------------------------------------------------


@dataclass
class World:
    """The truth (label flips over time) and a model of the tracker shell driving Confirmation."""

    conf: Confirmation = field(default_factory=lambda: Confirmation(quiet_bound=B, now=0.0))
    now: float = 0.0
    flips: list[float] = field(default_factory=list)
    api_up: bool = True
    watch: bool = False
    silent: bool = False
    """The open watch lost its API server silently: it looks connected and delivers nothing."""
    listing: tuple[int, int | None] | None = None
    listed_at: float = 0.0
    """The LIST in flight: (attempt, the truth it snapshots, or None if the API server was down)."""
    view: int = 0
    """The flips membership has taken in."""
    synced: bool = False
    known_at: float | None = None
    """The model's own reading of confirmation: view holds every flip up to this time..."""
    intact: bool = False
    """...and nothing since broke the chain that brings the rest (a LIST, or a watch that is live
    or resuming after a clean end). Kept by the model, independently of Confirmation."""
    waiters: list[tuple[Waiter, int]] = field(default_factory=list)
    resuming: bool = False
    served: int = 0
    waited: int = 0

    def truth_at(self, t: float) -> int:
        return bisect.bisect_right(self.flips, t)

    def delivering(self) -> bool:
        return self.watch and not self.silent and self.api_up

    def deliver(self) -> None:
        """The open watch delivers what it carries (replay included), then this event or bookmark."""
        self.view = len(self.flips)
        self.known_at, self.intact = self.now, True
        self.conf.watch_contact(self.now)

    def end_watch(self, *, clean: bool) -> None:
        self.resuming = clean and self.intact
        self.watch = self.silent = False
        self.intact = False
        self.conf.watch_ended(self.now, clean=clean)

    def step(self, op: str, arg: float) -> None:
        c = self.conf
        self.now += 0.001  # every step at its own instant: "before" and "after" never tie
        if op == "advance":
            self.now += arg
            for w, _ in list(self.waiters):
                if self.now - w.arrived >= 5.0:
                    c.give_up(w, self.now, "refused")
                    self.waiters.remove((w, _))
        elif op == "flip":
            self.flips.append(self.now)
            if self.delivering():
                self.deliver()
        elif op == "bookmark":
            if self.delivering():
                self.deliver()
        elif op == "down":
            self.api_up = False
            if self.watch and not self.silent:  # the socket closes: seen at once
                self.end_watch(clean=False)
        elif op == "up":
            self.api_up = True
        elif op == "partition":
            self.silent = self.watch
        elif op == "timeout":
            if self.delivering():
                self.end_watch(clean=True)
        elif op == "abandon":
            if self.waiters:
                w, _ = self.waiters.pop(int(arg) % len(self.waiters))
                c.give_up(w, self.now, "abandoned")
        elif op == "request":
            self.request()
        elif op == "tracker":
            self.tracker()

    def request(self) -> None:
        if not self.synced:
            return  # refused at once before the first sync (the proxy's check, not the rule's)
        w = self.conf.admit(self.now)
        if w is None:
            self.check_served()
        else:
            self.waiters.append((w, self.truth_at(self.now)))

    def check_served(self) -> None:
        """The property: what a filtered answer would be computed from right now."""
        c = self.conf
        assert self.intact, "served while the chain of confirmations is broken"
        assert self.known_at is not None and self.now - self.known_at <= B, "confirmation too old"
        assert c.confirmed_at is not None and c.confirmed_at <= self.known_at
        assert self.view >= self.truth_at(c.confirmed_at), "older than the last confirmation"
        self.served += 1

    def tracker(self) -> None:
        """One step of the shell: finish a LIST, cut or drop a watch, or start a LIST or a watch."""
        c = self.conf
        if self.listing is not None:
            attempt, snapshot = self.listing
            self.listing = None
            if snapshot is None or not self.api_up:
                c.list_failed(attempt, self.now)
                return
            self.view = max(self.view, snapshot)
            self.known_at, self.intact = max(self.known_at or 0.0, self.listed_at), True
            self.synced = True
            released = c.list_succeeded(attempt, self.now)
            for w, truth_on_arrival in list(self.waiters):
                if w in released:
                    self.waiters.remove((w, truth_on_arrival))
                    assert self.view >= truth_on_arrival, "a waiter got membership older than its arrival"
                    self.check_served()
                    self.waited += 1
            assert all(w.outcome is None for w, _ in self.waiters)
            return
        if self.watch:
            if c.list_wanted() or self.silent:  # cut for a LIST, or silent past the inactivity timeout
                self.end_watch(clean=False)
            elif self.delivering() and self.view < len(self.flips):
                self.deliver()  # the resume's replay arrives, some time after its OPEN
            return
        if not self.synced or c.list_wanted():
            self.listed_at = self.now
            self.listing = (c.list_started(self.now), len(self.flips) if self.api_up else None)
            return
        if not self.api_up:
            self.end_watch(clean=False)  # the resume failed to connect
            return
        self.watch = True
        if self.resuming:  # a resume after a clean end: the API server replays all since its RV
            self.intact = True
        c.watch_opened(self.now)  # what was missed is replayed on a later step


OPS = st.tuples(
    # Weighted by repetition: the interesting interleavings are of the tracker's steps, requests and
    # flips; outages, partitions, timeouts and long pauses only need to happen now and then.
    st.sampled_from(
        [
            *["tracker"] * 5,
            *["request"] * 3,
            *["flip"] * 3,
            *["advance"] * 2,
            *["bookmark", "down", "up", "partition", "timeout", "abandon"],
        ]
    ),
    st.sampled_from([0.1, 1.0, 3.0, 30.0, 70.0]),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(OPS, min_size=20, max_size=200))
def test_no_answer_is_computed_from_membership_older_than_its_confirmation(
    schedule: list[tuple[str, float]],
) -> None:
    world = World()
    for _ in range(3):  # list, then watch
        world.step("tracker", 0)
    for op, arg in [*schedule, ("up", 0), *[("tracker", 0)] * 6, ("request", 0), *[("tracker", 0)] * 6]:
        world.step(op, arg)
        c = world.conf
        assert c.waiting == len(world.waiters)
        assert c.unconfirmed_seconds(world.now) >= 0
    # After the API server is back, a few tracker steps confirm membership for everyone.
    assert world.conf.waiting == 0

"""The namespace tracker against an in-memory source: one test per branch of the watch contract."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from discofilter.core.membership import Membership
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS
from discofilter.errors import UpstreamError
from discofilter.settings import NamespaceWatchSettings
from discofilter.tracker import Backoff, NamespaceTracker
from tests.fakes import FakeNamespaceSource

MESH = {"istio-injection": "enabled"}
FAST = NamespaceWatchSettings(backoff_initial_seconds=0.01, backoff_max_seconds=0.05, short_watch_seconds=0.0)


class Harness:
    def __init__(self, settings: NamespaceWatchSettings = FAST) -> None:
        self.src = FakeNamespaceSource()
        self.membership = Membership(DEFAULT_MESH_SELECTORS)
        self.changes: list[frozenset[str]] = []
        self.tracker = NamespaceTracker(self.membership, self.src, settings, self.changes.append)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.tracker.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    async def until(self, cond: object, timeout: float = 3.0) -> None:
        async def wait() -> None:
            while not cond():  # type: ignore[operator]
                await asyncio.sleep(0.005)

        await asyncio.wait_for(wait(), timeout)


async def test_ready_after_first_list_and_follows_label_changes() -> None:
    h = Harness()
    h.src.add("a", **MESH)
    h.src.add("b")
    async with h:
        await asyncio.wait_for(h.tracker.ready.wait(), 3)
        assert h.membership.members == {"a"}
        assert h.changes == []  # the first sync is not a change
        await h.until(lambda: h.src.open_watches == 1)
        h.src.modify("b", **MESH)
        await h.until(lambda: "b" in h.membership)
        h.src.delete("a")
        await h.until(lambda: "a" not in h.membership)
        # A deletion is no membership change (core.lifecycle): a's objects' DELETED events came first.
        assert h.changes == [frozenset({"b"})]
        assert h.src.lists == 1
        assert h.tracker.healthy


async def test_resumes_from_last_rv_when_a_watch_ends() -> None:
    h = Harness()
    async with h:
        await h.until(lambda: h.src.open_watches == 1)
        h.src.add("a", **MESH)
        await h.until(lambda: "a" in h.membership)
        h.src.end_watches()
        await h.until(lambda: h.src.watches == 2 and h.src.open_watches == 1)
        h.src.add("b", **MESH)
        await h.until(lambda: "b" in h.membership)
        assert h.src.lists == 1  # resumed, no relist


async def test_410_error_event_relists_with_a_consistent_read() -> None:
    h = Harness()
    h.src.add("late")
    async with h:
        await h.until(lambda: h.src.open_watches == 1)
        h.src.expire()
        h.src.items["late"] = {"metadata": {"name": "late", "resourceVersion": "999", "labels": MESH}}
        h.src.items["new"] = {"metadata": {"name": "new", "resourceVersion": "999", "labels": MESH}}
        await h.until(lambda: "late" in h.membership)
        assert h.src.lists == 2
        assert "new" in h.membership
        assert h.changes == [frozenset({"late"})]  # new appeared: no change (core.lifecycle)


async def test_watch_from_compacted_rv_relists() -> None:
    h = Harness()
    async with h:
        await h.until(lambda: h.src.open_watches == 1)
        h.src.end_watches()
        h.src.oldest_rv = h.src.rv + 10  # history gone before the tracker resumes
        await h.until(lambda: h.src.lists == 2)


async def test_failures_back_off_and_recover() -> None:
    h = Harness()
    h.src.fail_next = [OSError("connection refused"), UpstreamError("500"), OSError("again")]
    h.src.add("a", **MESH)
    async with h:
        await asyncio.wait_for(h.tracker.ready.wait(), 3)
        assert h.tracker.reconnects == 3
        assert "a" in h.membership


async def test_very_short_empty_watch_counts_as_failure() -> None:
    h = Harness(replace(FAST, short_watch_seconds=5.0))
    async with h:
        await h.until(lambda: h.src.open_watches == 1)
        h.src.end_watches()
        await h.until(lambda: h.tracker.reconnects >= 1)


async def test_inactivity_reconnects() -> None:
    h = Harness(replace(FAST, inactivity_seconds=0.05))
    async with h:
        await h.until(lambda: h.src.watches >= 3)
        assert h.src.lists == 1


async def test_bookmarks_advance_the_resume_point() -> None:
    h = Harness()
    async with h:
        await h.until(lambda: h.src.open_watches == 1)
        h.src.rv += 50  # writes to other namespaces' objects move the RV on
        h.src.bookmark()
        await asyncio.sleep(0.05)
        h.src.end_watches()
        h.src.oldest_rv = h.src.rv  # only the bookmarked RV is still in history
        await h.until(lambda: h.src.watches == 2 and h.src.open_watches == 1)
        assert h.src.lists == 1


def test_backoff_grows_with_jitter_and_caps() -> None:
    b = Backoff(0.8, 30.0)
    delays = [b.next() for _ in range(10)]
    assert 0.8 <= delays[0] <= 1.6
    assert all(d <= 30.0 for d in delays)
    assert delays[-1] >= 15.0
    b.reset()
    assert b.next() <= 1.6


async def test_expiry_right_after_a_relist_backs_off_instead_of_spinning() -> None:
    class AlwaysExpired(FakeNamespaceSource):
        async def list(self) -> tuple[list[dict[str, object]], str]:
            self.lists += 1
            return [], "1"  # a server whose LIST answers are already compacted away

    h = Harness(replace(FAST, backoff_initial_seconds=0.05, backoff_max_seconds=0.05))
    h.src = AlwaysExpired(rv=100)
    h.tracker.source = h.src
    async with h:
        await asyncio.sleep(0.5)
    assert 2 <= h.src.lists <= 12


async def test_a_change_of_thousands_of_namespaces_is_one_bounded_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    for i in range(3000):
        h.src.add(f"t-{i:04d}")
    async with h:
        await h.until(lambda: h.src.open_watches == 1)
        h.src.expire()
        for i in range(3000):  # e.g. a relist after an outage in which a whole tenant joined the mesh
            h.src.items[f"t-{i:04d}"] = {
                "metadata": {"name": f"t-{i:04d}", "resourceVersion": "9", "labels": MESH}
            }
        with caplog.at_level("INFO", logger="discofilter.tracker"):
            await h.until(lambda: len(h.membership) == 3000)
    assert h.changes == [frozenset(f"t-{i:04d}" for i in range(3000))]  # every one reached the watches
    (line,) = [r for r in caplog.records if r.getMessage().startswith("mesh membership changed")]
    assert "t-0099 and 2900 more (now 3000 of 3000" in line.getMessage()
    assert "t-0100" not in line.getMessage()
    assert len(line.getMessage()) < 2000
    assert line.__dict__["changed_count"] == 3000 and len(line.__dict__["changed"]) == 100


async def test_a_timer_already_firing_is_left_alone_not_rescheduled_into_an_error() -> None:
    """The bench caught a filtered request answered 500: it asked the tracker to cut the namespace
    watch's read for a LIST just as that read's timeout was firing, and ``Timeout.reschedule`` raises
    in that state. The deadline is then moot: the read or sleep is ending anyway."""
    from discofilter.tracker import reschedule_unless_expiring

    loop = asyncio.get_running_loop()
    timer = asyncio.timeout(None)

    async def guarded() -> None:
        async with timer:
            await asyncio.sleep(10)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0)  # the task is inside the timeout now
    assert reschedule_unless_expiring(timer, loop.time() + 5)  # a live timer moves
    timer.reschedule(loop.time() - 1)  # due: its callback is queued
    await asyncio.sleep(0)  # the callback ran (the timer is expiring), the task has not resumed yet
    assert timer.expired()
    assert not reschedule_unless_expiring(timer, loop.time())  # no RuntimeError, nothing to do
    with pytest.raises(TimeoutError):
        await task

"""pytest hooks for ``bench/bench_filter.py``: a summary in events/s and GB/s after the timing table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

Row = tuple[str, str, float, float]
_ROWS = pytest.StashKey[list[Row]]()
Recorder = Callable[[Any, str, str, int, int], None]


@pytest.fixture
def record_speed(request: pytest.FixtureRequest) -> Recorder:
    """Remember a finished benchmark's best round as events/s and GB/s (nothing when benchmarks are off)."""
    rows = request.config.stash.setdefault(_ROWS, [])

    def record(benchmark: Any, corpus: str, measurement: str, events: int, size: int) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is None or getattr(benchmark, "disabled", False):
            return
        best = float(stats.stats.min)
        benchmark.extra_info.update(events_per_s=events / best, gb_per_s=size / best / 1e9)
        rows.append((corpus, measurement, events / best, size / best / 1e9))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("core filter throughput (best round, one core)")
    tr.write_line(f"{'corpus':12s} {'measurement':14s} {'events/s':>12s} {'GB/s':>7s}")
    for corpus, measurement, eps, gbps in rows:
        tr.write_line(f"{corpus:12s} {measurement:14s} {eps:12,.0f} {gbps:7.2f}")
    by = {(c, m): eps for c, m, eps, _ in rows}
    for corpus in dict.fromkeys(c for c, *_ in rows):
        f, p = by.get((corpus, "watchfilter")), by.get((corpus, "orjson_parse"))
        if f and p:
            tr.write_line(f"{corpus}: filter / full orjson parse = {f / p:.1f}x")

"""Core micro-benchmark (pytest-benchmark): the watch stream filter alone, no sockets, no event loop.

Run it with::

    python -m pytest bench/bench_filter.py --benchmark-enable -p no:cacheprovider

(the project's pytest configuration disables benchmarks for the test suite, hence ``--benchmark-enable``).

The code under test is ``discofilter.core`` only: ``WatchFilter.feed_joined``. For comparison, on the same
events:
a full ``orjson.loads`` of every event (what any decoding proxy does at the least), and a copy of every read
(the ceiling: a proxy touches every byte at least once). The corpora and the three measurements come from
``discofilter.bench.core`` (pod watch events built from real kube-apiserver captures, cut into 64 KiB
reads), so these are the numbers the "core" section of ``discofilter bench`` reports. The summary at the
end gives events/s and GB/s of the best round (``bench/conftest.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from discofilter.bench.core import MEASUREMENTS, Corpus, build_corpora
from discofilter.core.watchfilter import WatchFilter


@functools.cache
def corpora() -> dict[str, Corpus]:
    return {c.name: c for c in build_corpora()}


@pytest.fixture(scope="module", params=["pods-mixed", "mesh-pods", "long-names"])
def corpus(request: pytest.FixtureRequest) -> Corpus:
    return corpora()[str(request.param)]


def test_filter_keeps_exactly_the_mesh_events(corpus: Corpus) -> None:
    """Not a benchmark: the filter under measurement keeps what it should, byte for byte."""
    wf = WatchFilter(corpus.members)
    kept = [line for chunk in corpus.reads for line in wf.feed(chunk)]
    assert len(kept) == corpus.kept
    assert set(kept) <= set(corpus.lines)


@pytest.mark.parametrize("measurement", list(MEASUREMENTS))
def test_core(benchmark: Any, record_speed: Callable[..., None], corpus: Corpus, measurement: str) -> None:
    fn = MEASUREMENTS[measurement]
    benchmark.group = corpus.name
    benchmark.extra_info.update(
        events=len(corpus.lines), bytes=corpus.size, mean_event_bytes=corpus.size / len(corpus.lines)
    )
    benchmark(fn, corpus)
    record_speed(benchmark, corpus.name, measurement, len(corpus.lines), corpus.size)

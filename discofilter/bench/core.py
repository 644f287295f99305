"""The core micro-benchmark: the stream filter alone, no sockets, against a full parse and a plain copy.

Shared by ``bench/bench_filter.py`` (pytest-benchmark) and the "core" section of ``discofilter bench``,
so both give the same numbers. The code under test is ``discofilter.core`` only; this module builds the
corpora (pod watch events from the real templates, through the churn generator) and times them.

Three corpora of pod events:

- ``pods-mixed``: the churn's pod events at 10% mesh share (9-20 KB; ~10% kept);
- ``mesh-pods``: mesh pods only, 17.5-20 KB, every event kept (the 16-20 KB target case);
- ``long-names``: mesh pods whose name and generateName are 253 characters (the Kubernetes maximum) and
  namespace 63: the fast path's worst case, every event kept.

Each stream is cut into 64 KiB reads (what a socket read hands over at saturation; events straddle
reads). Four measurements per corpus: ``WatchFilter.feed_joined`` (what the relay calls) over the
reads; ``orjson.loads`` of every event (what a decoding proxy does at the least); a copy of every read
(a ceiling on speed: any proxy touches every byte at least once, so none goes faster than one copy);
and finding every newline plus one copy of every read (``scan_copy``: the host's floor for a filter
that must find each event's end and hand the kept bytes on; the target is a share of it, not a fixed
GB/s, because the floor is the host's memory speed).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from discofilter.bench.workload import Churn, WorkloadSettings
from discofilter.core.watchfilter import WatchFilter

JsonObj = dict[str, Any]
READ_BYTES: Final = 64 * 1024
"""libuv hands a stream 64 KiB per read; aiohttp passes them on as they come."""
CORPUS_EVENTS: Final = 2_000
"""~30 MB of events: long enough that per-call overhead vanishes, small enough to stay in memory."""
MAX_NAME: Final = 253
MAX_NAMESPACE: Final = 63


@dataclass(frozen=True, slots=True)
class Corpus:
    name: str
    lines: tuple[bytes, ...]
    reads: tuple[bytes, ...]
    members: frozenset[str]
    kept: int

    @property
    def size(self) -> int:
        return sum(len(x) for x in self.lines)


def _event(resource_kind: str, obj: JsonObj, etype: str) -> bytes:
    full = {"kind": resource_kind, "apiVersion": "v1", **obj}
    return b'{"type":"' + etype.encode() + b'","object":' + orjson.dumps(full) + b"}\n"


def _long_names(obj: JsonObj, i: int) -> JsonObj:
    meta = dict(obj["metadata"])
    prefix = ("x" * (MAX_NAME - 12))[: MAX_NAME - 12] + "-"
    meta["generateName"] = prefix
    meta["name"] = prefix + f"{i:011d}"[-(MAX_NAME - len(prefix)) :]
    meta["namespace"] = "n" * MAX_NAMESPACE
    return {**obj, "metadata": meta}


def _reads(stream: bytes, size: int = READ_BYTES) -> tuple[bytes, ...]:
    return tuple(stream[i : i + size] for i in range(0, len(stream), size))


def build_corpora(events: int = CORPUS_EVENTS, seed: int = 1) -> list[Corpus]:
    churn = Churn(WorkloadSettings(namespaces=100, seed=seed), first_rv=2)
    churn.initial_state()
    mesh_ns = frozenset(n for n, m in churn.namespaces.items() if m)
    mixed: list[bytes] = []
    mesh: list[bytes] = []
    long: list[bytes] = []
    mixed_kept = 0
    while min(len(mixed), len(mesh)) < events:
        w = churn.step()
        if w.resource != "pods":
            continue
        line = _event("Pod", w.obj, w.type)
        if len(mixed) < events:
            mixed.append(line)
            mixed_kept += w.mesh
        if w.mesh and len(mesh) < events:
            mesh.append(line)
            long.append(_event("Pod", _long_names(w.obj, len(long)), w.type))
    out = []
    for name, lines, members, kept in (
        ("pods-mixed", mixed, mesh_ns, mixed_kept),
        ("mesh-pods", mesh, mesh_ns, len(mesh)),
        ("long-names", long, frozenset({"n" * MAX_NAMESPACE}), len(long)),
    ):
        out.append(Corpus(name, tuple(lines), _reads(b"".join(lines)), members, kept))
    return out


def run_filter(corpus: Corpus) -> int:
    wf = WatchFilter(corpus.members)
    feed = wf.feed_joined  # what the relay calls: one bytes per read
    for chunk in corpus.reads:
        feed(chunk)
    wf.feed_eof()
    return wf.events_kept


def run_parse(corpus: Corpus) -> int:
    n = 0
    for line in corpus.lines:
        orjson.loads(line)
        n += 1
    return n


def run_scan_copy(corpus: Corpus) -> int:
    """The host's floor for any filter of this stream: find every event's end (each newline, with
    ``bytes.find``, a memchr) and copy every read once. No filter decides anything faster."""
    n = 0
    for chunk in corpus.reads:
        find, i = chunk.find, 0
        while (i := find(b"\n", i) + 1) > 0:
            n += 1
        n += len(memoryview(chunk).tobytes())
    return n


def run_copy(corpus: Corpus) -> int:
    n = 0
    for chunk in corpus.reads:
        n += len(memoryview(chunk).tobytes())
    return n


MEASUREMENTS: Final[dict[str, Callable[[Corpus], int]]] = {
    "watchfilter": run_filter,
    "orjson_parse": run_parse,
    "copy": run_copy,
    "scan_copy": run_scan_copy,
}


@dataclass(frozen=True, slots=True)
class Speed:
    events_per_s: float
    gb_per_s: float


def measure(corpus: Corpus, budget_s: float) -> dict[str, Speed]:
    """Each measurement on ``corpus``: the best time within ``budget_s``, as events/s and GB/s.

    The measurements take turns, round by round, rather than one after the other: on a shared machine
    the load changes within seconds, and the filter/parse ratio must compare runs under the same load
    (measured one after the other, the same code gave 15x and 34x in two runs ten minutes apart).
    """
    fns = {name: functools.partial(fn, corpus) for name, fn in MEASUREMENTS.items()}
    best = dict.fromkeys(fns, float("inf"))
    deadline = time.perf_counter() + budget_s * len(fns)
    rounds = 0
    while rounds < 3 or time.perf_counter() < deadline:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return {name: Speed(len(corpus.lines) / t, corpus.size / t / 1e9) for name, t in best.items()}


def core_results(budget_s: float = 1.0, corpora: Sequence[Corpus] | None = None) -> dict[str, JsonObj]:
    """Per corpus: its shape, each measurement's speed, and the filter's ratios to a parse and a copy."""
    out: dict[str, JsonObj] = {}
    for corpus in corpora if corpora is not None else build_corpora():
        kept = run_filter(corpus)
        if kept != corpus.kept:
            raise AssertionError(f"{corpus.name}: the filter kept {kept} events, expected {corpus.kept}")
        speeds = measure(corpus, budget_s)
        filt = speeds["watchfilter"].events_per_s
        out[corpus.name] = {
            "events": len(corpus.lines),
            "bytes": corpus.size,
            "mean_event_bytes": corpus.size / len(corpus.lines),
            "kept": corpus.kept,
            "read_bytes": READ_BYTES,
            **{name: dataclasses.asdict(sp) for name, sp in speeds.items()},
            "filter_vs_parse": filt / speeds["orjson_parse"].events_per_s,
            "filter_vs_copy": filt / speeds["copy"].events_per_s,
            "filter_vs_scan_copy": filt / speeds["scan_copy"].events_per_s,
        }
    return out

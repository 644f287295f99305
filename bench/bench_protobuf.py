"""Protobuf frame filtering next to the JSON line filter, on the same real objects, no sockets.

The same 29 events of a real kube-apiserver 1.28 pod watch (``watch-pods.pb`` and ``watch-pods.json``
in ``tests/data/apiserver-1.28``), repeated, fed in 64 KiB reads, filtered to the capture's mesh
namespaces. The floor is a plain copy of the same bytes, read by read.

    python bench/bench_protobuf.py            # prints a table
    pytest bench/bench_protobuf.py --benchmark-enable
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

from discofilter.core.protowatch import ProtoWatchFilter
from discofilter.core.watchfilter import WatchFilter

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "apiserver-1.28"
REPEAT = 200
READ = 64 * 1024


def _load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes() * REPEAT


def _mesh() -> frozenset[str]:
    return frozenset(json.loads((FIXTURES / "manifest.json").read_text())["mesh_namespaces"])


def _reads(data: bytes) -> list[bytes]:
    return [data[i : i + READ] for i in range(0, len(data), READ)]


def run_proto(reads: list[bytes], mesh: frozenset[str]) -> int:
    f = ProtoWatchFilter(mesh)
    kept = 0
    for r in reads:
        kept += len(f.feed(r))
    return kept


def run_json(reads: list[bytes], mesh: frozenset[str]) -> int:
    f = WatchFilter(mesh)
    kept = 0
    for r in reads:
        kept += len(f.feed(r))
    return kept


def run_copy(reads: list[bytes], mesh: frozenset[str]) -> int:
    n = 0
    for r in reads:
        n += len(bytearray(r))
    return n


Runner = Callable[[list[bytes], frozenset[str]], int]


def _best(fn: Runner, reads: list[bytes], mesh: frozenset[str]) -> float:
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        fn(reads, mesh)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    mesh = _mesh()
    events = 29 * REPEAT
    pb, js = _reads(_load("watch-pods.pb")), _reads(_load("watch-pods.json"))
    rows = [
        ("protobuf ProtoWatchFilter", run_proto, pb),
        ("protobuf plain copy", run_copy, pb),
        ("json WatchFilter", run_json, js),
        ("json plain copy", run_copy, js),
    ]
    print(f"{platform.python_implementation()} {platform.python_version()}, {events} events, {READ} B reads")
    print(f"{'case':28} {'ms':>8} {'k events/s':>11} {'MB/s':>8} {'x copy':>7}")
    times = {name: _best(fn, data, mesh) for name, fn, data in rows}
    for name, _, data in rows:
        t = times[name]
        size = sum(map(len, data))
        floor = times[name.split()[0] + " plain copy"]
        print(f"{name:28} {t * 1e3:8.1f} {events / t / 1e3:11.0f} {size / t / 1e6:8.0f} {t / floor:7.1f}")


def test_proto_filter(benchmark) -> None:  # type: ignore[no-untyped-def]
    reads, mesh = _reads(_load("watch-pods.pb")), _mesh()
    assert benchmark(run_proto, reads, mesh) > 0


def test_json_filter(benchmark) -> None:  # type: ignore[no-untyped-def]
    reads, mesh = _reads(_load("watch-pods.json")), _mesh()
    assert benchmark(run_json, reads, mesh) > 0


if __name__ == "__main__":
    main()

"""LIST filtering alone: the orjson reference, the msgspec whole-body path, the incremental ListStream,
and the protobuf list filter (istiod's wire format; always whole-body).

Run it with::

    python bench/list_filter.py             # ~20 s; a table on stdout

The body is the benchmark's relist: a pod list of ``--pods`` items (default 2,000, ~25 MB, what every
informer relists after a membership flip in ``discofilter bench``), built from the pods of the real
``list-pods.json`` capture (renamed, spread over 500 namespaces, 10% in the mesh). For each way of
filtering it: the best time of three, the peak of Python allocations during the call (tracemalloc:
what the filter itself holds, beyond the body), and for ListStream the longest single ``feed`` of a
256 KiB read (how long the proxy's event loop is blocked at a time; the whole-body paths block it for
their whole time). The protobuf body repeats the items of the real ``list-pods.pb`` capture (unchanged,
so in that capture's namespaces) up to the JSON body's size: protobuf is ~30% smaller per pod, so it
holds more pods; its peak is what the proxy holds beyond the body while filtering it.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from discofilter.core.listfilter import filter_list, filter_list_slow
from discofilter.core.liststream import ListStream
from discofilter.core.protobuf import (
    LIST_ITEMS,
    MAGIC,
    UNKNOWN_RAW,
    check_magic,
    iter_fields,
    len_field_header,
)
from discofilter.core.protolist import filter_proto_list

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "apiserver-1.28"
FIXTURE = FIXTURES / "list-pods.json"
READ = 256 * 1024
"""discofilter's upstream read size (WatchSettings.read_chunk_bytes)."""


def build(pods: int) -> tuple[bytes, frozenset[str]]:
    doc = orjson.loads(FIXTURE.read_bytes())
    templates: list[dict[str, Any]] = doc["items"]
    items = []
    for i in range(pods):
        item = orjson.loads(orjson.dumps(templates[i % len(templates)]))
        item["metadata"]["name"] = f"{item['metadata']['name']}-{i}"
        item["metadata"]["namespace"] = f"ns-{i % 500}"
        items.append(item)
    doc["items"] = items
    return orjson.dumps(doc), frozenset(f"ns-{n}" for n in range(0, 500, 10))


def build_protobuf(size: int) -> tuple[bytes, frozenset[str]]:
    """A protobuf pod list of about ``size`` bytes: the capture's item fields repeated, lengths rebuilt."""
    pb = (FIXTURES / "list-pods.pb").read_bytes()
    start = check_magic(pb, 0, len(pb))
    envelope: list[bytes] = []
    meta: list[bytes] = []
    items: list[bytes] = []
    for number, _, fstart, vstart, vend in iter_fields(pb, start, len(pb)):
        if number != UNKNOWN_RAW:
            envelope.append(pb[fstart:vend])
            continue
        envelope.append(b"")  # where raw goes
        for inner, _, istart, _, iend in iter_fields(pb, vstart, vend):
            (items if inner == LIST_ITEMS else meta).append(pb[istart:iend])
    per_round = sum(map(len, items))
    raw = b"".join(meta) + b"".join(items) * max(1, size // per_round)
    fields = [f if f else len_field_header(UNKNOWN_RAW, len(raw)) + raw for f in envelope]
    members = orjson.loads((FIXTURES / "manifest.json").read_bytes())["mesh_namespaces"]
    return MAGIC + b"".join(fields), frozenset(members)


def stream(body: bytes, members: frozenset[str]) -> tuple[int, float]:
    s = ListStream(members)
    n = 0
    longest = 0.0
    for i in range(0, len(body), READ):
        t0 = time.perf_counter()
        n += len(s.feed(body[i : i + READ]))
        longest = max(longest, time.perf_counter() - t0)
    last, _ = s.finish()
    return n + len(last), longest


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    best = float("inf")
    for _ in range(3):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=2_000)
    args = parser.parse_args(argv)
    body, members = build(args.pods)
    kept = filter_list_slow(body, members)
    if filter_list(body, members).items_kept != kept.items_kept:
        raise AssertionError("filter_list and filter_list_slow disagree")
    print(f"pod list: {args.pods} items, {len(body) / 1e6:.1f} MB, {kept.items_kept} kept")
    print(f"{'filter':28s} {'best s':>8s} {'MB/s':>8s} {'peak MB':>8s} {'longest block ms':>17s}")
    for name, fn in (
        ("filter_list_slow (orjson)", lambda: filter_list_slow(body, members)),
        ("filter_list (msgspec)", lambda: filter_list(body, members)),
    ):
        t, peak = measure(fn)
        print(f"{name:28s} {t:8.3f} {len(body) / t / 1e6:8.0f} {peak:8.1f} {t * 1e3:17.1f}")
    t, peak = measure(lambda: stream(body, members))
    _, longest = stream(body, members)
    name = "ListStream, 256 KiB reads"
    print(f"{name:28s} {t:8.3f} {len(body) / t / 1e6:8.0f} {peak:8.1f} {longest * 1e3:17.1f}")
    pb, pb_members = build_protobuf(len(body))
    result = filter_proto_list(pb, pb_members)
    print(
        f"protobuf pod list: {len(pb) / 1e6:.1f} MB, {result.items_in} items, {result.items_kept} kept "
        f"({len(result.body) / 1e6:.1f} MB out)"
    )
    t, peak = measure(lambda: filter_proto_list(pb, pb_members))
    name = "filter_proto_list"
    print(f"{name:28s} {t:8.3f} {len(pb) / t / 1e6:8.0f} {peak:8.1f} {t * 1e3:17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

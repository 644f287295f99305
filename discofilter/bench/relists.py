"""The relist phase: what each kind of namespace membership change costs the watch clients.

Four kinds of change, each made ``--relist-changes`` times in the simulated API server (``simproc``
``membership``) while istiod-like informers (``client.py``: LIST, then WATCH; after a 410, back off about a
second and relist, as client-go's reflector does) watch the four resources through each proxy:

- ``create``: a mesh namespace created, labelled from birth, with an app in it (Service, Running pods,
  Endpoints, EndpointSlice);
- ``delete``: such a namespace deleted (Terminating, its objects DELETED, then the namespace DELETED);
- ``join``: a label flip moving an existing plain namespace into the mesh;
- ``leave``: a label flip moving it out again.

The changes run one at a time: creations, then deletions, then joins and leaves alternately. After each,
simapi writes one end marker per resource, and the next change waits until every informer of every client
is past its marker on an open watch and its counters have not moved for ``QUIET_S``: a 410 the change
caused has arrived by then, and the relist it led to is done (a flip must not land while the clients are
still backing off from the previous one, or one relist would answer two flips).

What is counted, per change and client, is the client's own view: LIST requests after its first (relists),
410 ``ERROR`` events received, and the bytes of those LISTs; and, from simapi's request log, the LISTs of
the four resources the API server received meanwhile (every proxy's, so the sum over the clients when each
client LIST is forwarded once). discofilter's own counters are not used.

Nothing here interprets the numbers beyond summing them; the expectations (``expected_relists``) are what
README.md's "What a membership change costs" promises, set beside the measurements, never in their place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from discofilter.bench.procs import BenchError, JsonObj, Worker
from discofilter.bench.workload import WATCHED

KINDS: Final = ("create", "delete", "join", "leave")
LABELS: Final = {
    "create": "mesh namespace created (with pods)",
    "delete": "mesh namespace deleted",
    "join": "label flip: namespace joins the mesh",
    "leave": "label flip: namespace leaves the mesh",
}
VARIANTS: Final = ("discofilter", "passthrough")
"""discofilter, and the raw relay beside it: what the clients would relist without any filter (nothing)."""
QUIET_S: Final = 0.3
"""After the markers, counters must hold still this long. A flip's 410 reaches the clients within
milliseconds of the flip (discofilter's namespace watch), before the markers written after it in nearly
every case; the quiet time covers the rest, on a loaded 2-core host."""
SETTLE_TIMEOUT_S: Final = 30.0
"""A change the clients have not settled after 30 s (a relist takes ~1 s of backoff and a LIST) is a
failure of the run, not a number."""
_POLL_S: Final = 0.05
_COUNTERS: Final = ("lists", "list_bytes", "expired", "watches", "events")


def _settled(counts: JsonObj, markers: Mapping[str, int]) -> bool:
    return all(c["watching"] and c["seen_rv"] >= int(markers[r]) for r, c in counts.items())


def _signature(counts: Mapping[str, JsonObj]) -> tuple[int, ...]:
    return tuple(int(c[r][k]) for c in counts.values() for r in WATCHED for k in _COUNTERS)


async def _settle(clients: Mapping[str, Worker], markers: Mapping[str, int]) -> dict[str, JsonObj]:
    """Poll the clients until each is past ``markers`` on open watches and quiet for ``QUIET_S``."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    quiet_since: float | None = None
    last: tuple[int, ...] | None = None
    while True:
        replies = await asyncio.gather(*(c.call("live_counts", timeout=60) for c in clients.values()))
        counts = dict(zip(clients, replies, strict=True))
        now = time.monotonic()
        sig = _signature(counts)
        if all(_settled(c, markers) for c in counts.values()):
            if sig != last or quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= QUIET_S:
                return counts
        else:
            quiet_since = None
        last = sig
        if now > deadline:
            raise BenchError(f"relists: the clients did not settle within {SETTLE_TIMEOUT_S:g} s: {counts}")
        await asyncio.sleep(_POLL_S)


def _delta(after: JsonObj, before: JsonObj) -> JsonObj:
    return {
        "relists": sum(after[r]["lists"] - before[r]["lists"] for r in WATCHED),
        "expired": sum(after[r]["expired"] - before[r]["expired"] for r in WATCHED),
        "relist_bytes": sum(after[r]["list_bytes"] - before[r]["list_bytes"] for r in WATCHED),
        "watches": sum(after[r]["watches"] - before[r]["watches"] for r in WATCHED),
        "events": sum(after[r]["events"] - before[r]["events"] for r in WATCHED),
    }


def _plan(changes: int) -> list[str]:
    joins_and_leaves = [k for _ in range(changes) for k in ("join", "leave")]
    return ["create"] * changes + ["delete"] * changes + joins_and_leaves


async def run_phase(
    sim: Worker, urls: Mapping[str, str], ca: str, logs: Path, changes: int, say: Callable[[str], None]
) -> JsonObj:
    """Start one client per variant, make every change, and return what each change cost each client."""
    clients = {v: Worker(f"relists-client-{v}", "discofilter.bench.client", logs) for v in VARIANTS}
    records: list[JsonObj] = []
    try:
        await asyncio.gather(*(c.start() for c in clients.values()))
        await asyncio.gather(
            *(c.call("live_start", timeout=120, url=urls[v], ca=ca) for v, c in clients.items())
        )
        before = await asyncio.gather(*(c.call("live_counts", timeout=60) for c in clients.values()))
        counts = dict(zip(clients, before, strict=True))
        for kind in _plan(changes):
            since = time.time()
            t0 = time.monotonic()
            change = await sim.call("membership", timeout=60, kind=kind)
            after = await _settle(clients, change["markers"])
            lists = await sim.call("list_requests", timeout=60, since=since)
            record: JsonObj = {
                "kind": kind,
                "namespace": change["namespace"],
                "writes": change["writes"],
                "settle_s": time.monotonic() - t0,
                "simapi_lists": sum(int(n) for n in lists.values()),
                "clients": {v: _delta(after[v], counts[v]) for v in clients},
            }
            records.append(record)
            counts = after
            costs = ", ".join(
                f"{v} {d['relists']} relists ({d['relist_bytes'] / 1e6:.2f} MB)"
                for v, d in record["clients"].items()
            )
            say(f"relists: {LABELS[kind]} ({change['namespace']}): {costs}; {record['settle_s']:.1f} s")
    finally:
        # Their stdin closes and they end, informers and all: nothing more is read from them.
        await asyncio.gather(*(c.stop() for c in clients.values()), return_exceptions=True)
    return {"changes": records, "watches_per_client": len(WATCHED), "variants": list(VARIANTS)}


def summarize(raw: JsonObj, changes: int) -> JsonObj:
    """Per kind of change: the changes made and, per variant, relists, 410s and relist bytes in total,
    per change and per watch per change; simapi's LISTs; and the expectation beside it."""
    watches = int(raw["watches_per_client"])
    kinds: JsonObj = {}
    for kind in KINDS:
        made = [c for c in raw["changes"] if c["kind"] == kind]
        n = len(made)
        variants: JsonObj = {}
        for v in raw["variants"]:
            relists = sum(int(c["clients"][v]["relists"]) for c in made)
            expired = sum(int(c["clients"][v]["expired"]) for c in made)
            relist_bytes = sum(int(c["clients"][v]["relist_bytes"]) for c in made)
            events = sum(int(c["clients"][v]["events"]) for c in made)
            flips = kind in ("join", "leave") and v == "discofilter"
            expected = watches * n if flips else 0
            variants[v] = {
                "relists": relists,
                "expired_410": expired,
                "relist_bytes": relist_bytes,
                "relists_per_change": relists / n if n else None,
                "relists_per_watch_per_change": relists / (n * watches) if n else None,
                "relist_bytes_per_change": relist_bytes / n if n else None,
                "watch_events": events,
                "expected_relists": expected,
                "as_expected": relists == expected,
            }
        kinds[kind] = {
            "label": LABELS[kind],
            "changes": n,
            "namespaces": [c["namespace"] for c in made],
            "simapi_lists": sum(int(c["simapi_lists"]) for c in made),
            "settle_s": [round(float(c["settle_s"]), 3) for c in made],
            "variants": variants,
        }
    return {
        "changes_per_kind": changes,
        "watches_per_client": watches,
        "variants": raw["variants"],
        "kinds": kinds,
        "as_expected": all(x["as_expected"] for k in kinds.values() for x in k["variants"].values()),
    }

"""The simulated API server process: simapi serving a ``Store`` that the churn generator writes to.

``python -m discofilter.bench.simproc`` answers JSON-lines commands (see ``procs.py``):

- ``setup``: build the initial cluster (namespaces, apps, Running pods) and serve it on 127.0.0.1, over
  TLS when given the run's CA files (``tlsca.py``), as every real API server is reached.
- ``prefill``: write N churn events as fast as possible, then the end markers.
- ``record``: watch simapi from before those events and record its answers byte for byte; serve them
  from the replay pump (``pump.py``) for the saturation runs: the same bytes for every variant, at a
  rate simapi's Python could not produce.
- ``live``: write churn at a fixed rate for some seconds, with namespace label flips, then the markers,
  and return when each event was committed (``time.time()``, which every process on the host shares):
  the start of each event's latency.

The generator writes with ``Store.apply`` (objects stored verbatim with the resourceVersion the generator
gave them). The Store's own create/patch paths cost 1.5-3 ms per 20 KB pod here (validation, defaulting,
normalisation in Python), which would cap the churn far below a real API server's rate; ``apply`` costs
~0.25 ms and everything after it (history, selectors, encoding, streaming) is simapi's real watch path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import uvloop
from aiohttp import web

from discofilter.bench.client import PATHS, scan, watch_url
from discofilter.bench.procs import BenchError, JsonObj, serve_commands
from discofilter.bench.pump import Recording, frame_chunks, paced_plan, serve_pump
from discofilter.bench.workload import WATCHED, Churn, WorkloadSettings, Write
from discofilter.core.framing import LineFramer
from discofilter.simapi import REQUEST_LOG, SimSettings, Store, serve

log = logging.getLogger("discofilter.bench.simproc")


def seeded_store(
    workload: WorkloadSettings, *, history_window: int
) -> tuple[Store, Churn, dict[str, list[JsonObj]]]:
    """A store holding the cluster before the churn, the generator that continues it, and the initial
    objects per resource. Shared by the benchmark and ``discofilter simapi``/``demo``."""
    store = Store(history_window=history_window, seed=workload.seed)
    churn = Churn(workload, first_rv=store.resource_version + 1)
    initial = churn.initial_state()
    for resource in ("namespaces", *WATCHED):
        items = initial[resource]
        store.load_list(resource, {"metadata": {"resourceVersion": str(churn.rv)}, "items": items})
    return store, churn, initial


class SimServer:
    def __init__(self) -> None:
        self.store: Store | None = None
        self.churn: Churn | None = None
        self.runner: web.AppRunner | None = None
        self.url: str | None = None
        self.pump: asyncio.Server | None = None
        self.recording: Recording | None = None
        self.server_ssl: ssl.SSLContext | None = None
        self.client_ssl: ssl.SSLContext | None = None
        self.joined: list[str] = []
        """Namespaces ``membership`` moved into the mesh, not yet out again."""

    def _parts(self) -> tuple[Store, Churn]:
        if self.store is None or self.churn is None:
            raise BenchError("setup first")
        return self.store, self.churn

    async def setup(self, msg: JsonObj) -> JsonObj:
        workload = WorkloadSettings(**msg["workload"])
        store, churn, initial = seeded_store(workload, history_window=int(msg["history_window"]))
        self.store, self.churn = store, churn
        tls = msg.get("tls")
        if tls:
            # Late: tlsca needs cryptography (the bench extra); ``discofilter demo`` shares this module
            # from the base install and serves plain HTTP.
            from discofilter.bench.tlsca import BenchCA

            ca = BenchCA(Path(tls["ca_file"]), Path(tls["cert_file"]), Path(tls["key_file"]))
            self.server_ssl, self.client_ssl = ca.server_context(), ca.client_context()
        self.runner, url = await serve(
            store, SimSettings(), host="127.0.0.1", port=0, ssl_context=self.server_ssl
        )
        self.url = url
        log.info("simapi on %s: %s", url, {r: len(v) for r, v in initial.items()})
        return {
            "url": url,
            "rv": churn.rv,
            "objects": {r: len(v) for r, v in initial.items()},
            "mesh_namespaces": sorted(n for n, m in churn.namespaces.items() if m),
            "marker_namespace": churn.marker_namespace,
        }

    def _apply(self, write: Write) -> None:
        store, _ = self._parts()
        store.apply(write.resource, write.type, write.obj)

    def _finish(self, start_rv: int) -> JsonObj:
        _, churn = self._parts()
        markers = churn.markers()
        for write in markers.values():
            self._apply(write)
        return {
            "start_rv": start_rv,
            "end_rv": churn.rv,
            "markers": {r: w.rv for r, w in markers.items()},
            "counts": churn.log.counts(start_rv, churn.rv),
        }

    async def prefill(self, msg: JsonObj) -> JsonObj:
        _, churn = self._parts()
        start = churn.rv
        t0 = time.perf_counter()
        for i in range(int(msg["events"])):
            self._apply(churn.step())
            if i % 256 == 255:
                await asyncio.sleep(0)  # stay responsive (health of the event loop, open watches)
        out = self._finish(start)
        out["seconds"] = time.perf_counter() - t0
        return out

    async def record(self, msg: JsonObj) -> JsonObj:
        """Record simapi's answers to the stream's watches and serve them from the replay pump."""
        if self.url is None:
            raise BenchError("setup first")
        start, markers = int(msg["start_rv"]), msg["markers"]
        streams: dict[str, bytes] = {}
        sizes: dict[str, int] = {}
        counts: dict[str, int] = {}
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        connector = aiohttp.TCPConnector(ssl=self.client_ssl if self.client_ssl is not None else True)
        async with aiohttp.ClientSession(
            headers=headers, auto_decompress=False, connector=connector
        ) as session:
            for resource in WATCHED:
                lines: list[bytes] = []
                async with session.get(watch_url(self.url, resource, start)) as resp:
                    framer = LineFramer()
                    while not lines or scan(lines[-1])[1] < int(markers[resource]):
                        chunk = await resp.content.readany()
                        if not chunk:
                            raise BenchError(f"recording {resource}: the watch ended before its marker")
                        lines += framer.feed(chunk)
                streams[PATHS[resource]] = frame_chunks(lines)
                sizes[resource] = sum(len(x) for x in lines)
                counts[resource] = len(lines)
            # The namespace list as of the stream's start: a client's resume point must not predate the
            # membership a proxy syncs to (discofilter answers 410 otherwise, rightly).
            exact = f"{self.url}/api/v1/namespaces?resourceVersion={start}&resourceVersionMatch=Exact"
            async with session.get(exact) as resp:
                namespace_list = await resp.read()
                if resp.status != 200:
                    raise BenchError(f"namespace list at {start}: HTTP {resp.status}")
        recording = self.recording = Recording(str(start), streams, namespace_list)
        self.pump, pump_url = await serve_pump(recording, self.server_ssl)
        # ``events``: per resource, the recording's events (its end marker included), what a paced run
        # draws on.
        return {"url": pump_url, "bytes": sizes, "events": counts}

    async def paced(self, msg: JsonObj) -> JsonObj:
        """Per resource, what a paced watch of the recording sends at ``rates[resource]`` for ``seconds``:
        its events (the end marker included) and chunk-framed bytes."""
        if self.recording is None:
            raise BenchError("record first")
        seconds, out = float(msg["seconds"]), {}
        for resource, rate in msg["rates"].items():
            events, size = paced_plan(self.recording.streams[PATHS[resource]], float(rate), seconds)
            out[resource] = {"events": events, "bytes": size}
        return out

    async def live(self, msg: JsonObj) -> JsonObj:
        """Churn at ``rate`` events/s for ``seconds``; namespace label flips from ``flip_after`` s on."""
        _, churn = self._parts()
        rate, seconds = float(msg["rate"]), float(msg["seconds"])
        flip_every = float(msg.get("flip_every") or 0.0)
        flip_after = float(msg.get("flip_after") or 0.0)
        start_rv = churn.rv
        # Generate first (the generator's Python is not the API server's work), then write on schedule.
        # Flips come after ``flip_after`` seconds, then every ``flip_every``: the events before the first
        # one measure the steady state, those after it what a membership change costs.
        count = max(1, round(rate * seconds))
        first, every = round(flip_after * rate), round(flip_every * rate)
        plan: list[tuple[Write, Write | None]] = []
        for i in range(count):
            due_flip = every > 0 and i >= first and (i - first) % every == 0
            flip = churn.flip() if due_flip else None
            plan.append((churn.step(), flip))
        loop = asyncio.get_running_loop()
        rvs: list[int] = []
        times: list[float] = []
        flips: list[list[Any]] = []
        begin = due = loop.time()
        interval = 1.0 / rate
        for write, flip in plan:
            if flip is not None:
                flips.append([flip.rv, time.time(), flip.namespace, flip.mesh])
                self._apply(flip)
            t = time.time()
            self._apply(write)
            rvs.append(write.rv)
            times.append(t)
            due += interval
            # One event, then let the watchers write it: events leave the server as they happen, and the
            # commit time is taken right before. The loop's timers have millisecond resolution, so at
            # 2,000 events/s events go out in pairs; a lagging server keeps going without sleeping.
            await asyncio.sleep(max(0.0, due - loop.time()))
        elapsed = loop.time() - begin
        out = self._finish(start_rv)
        out.update(commit_rv=rvs, commit_t=times, flips=flips, achieved_rate=len(rvs) / elapsed)
        return out

    async def membership(self, msg: JsonObj) -> JsonObj:
        """One membership change of kind ``kind`` (``MEMBERSHIP_CHANGES``), then the end markers: a client
        has seen everything the change caused once each of its watches is past its marker."""
        _, churn = self._parts()
        kind = str(msg["kind"])
        if kind == "create":
            writes = churn.create_namespace()
        elif kind == "delete":
            names = churn.lifecycle_namespaces
            if not names:
                raise BenchError("delete: no namespace made by create is left")
            writes = churn.delete_namespace(names[0])
        elif kind == "join":
            writes = [churn.relabel(churn.plain_namespace(), True)]
            self.joined.append(writes[0].namespace)
        elif kind == "leave":
            if not self.joined:
                raise BenchError("leave: no namespace joined by join is left")
            writes = [churn.relabel(self.joined.pop(0), False)]
        else:
            raise BenchError(f"unknown membership change {kind!r}")
        for write in writes:
            self._apply(write)
        start = writes[0].rv - 1
        out = self._finish(start)
        out.update(kind=kind, namespace=writes[0].namespace, writes=len(writes))
        return out

    async def list_requests(self, msg: JsonObj) -> JsonObj:
        """LIST requests of the watched resources simapi received since ``since`` (``time.time()``), per
        resource, from its own request log: what the relists cost the API server, whichever proxy they
        came through. A GET is a LIST unless ``watch`` is set to anything but 0/false (as simapi reads
        it, ``request.py``)."""
        if self.runner is None:
            raise BenchError("setup first")
        since = float(msg["since"])
        paths = {p: r for r, p in PATHS.items()}
        out = dict.fromkeys(WATCHED, 0)
        for req in self.runner.app[REQUEST_LOG]:
            resource = paths.get(req.path)
            if resource is None or req.method != "GET" or req.at < since:
                continue
            watch = parse_qs(req.query, keep_blank_values=True).get("watch")
            if watch is None or watch[0].lower() in ("0", "false"):
                out[resource] += 1
        return out

    async def state(self, msg: JsonObj) -> JsonObj:
        store, churn = self._parts()
        return {"rv": store.resource_version, "namespaces": churn.namespaces}

    async def close(self) -> None:
        if self.pump is not None:
            self.pump.close()
        if self.runner is not None:
            await self.runner.cleanup()


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The server keeps the run's history, 1-3 GB of Python objects. A full collection walks all of it and
    # stalls the server for a second or more, which a Go API server never does; the history is acyclic
    # (dicts of dicts), so reference counting frees what is freed and the cycle collector stays off.
    gc.disable()
    server = SimServer()
    try:
        await serve_commands(
            {
                "setup": server.setup,
                "prefill": server.prefill,
                "record": server.record,
                "live": server.live,
                "paced": server.paced,
                "membership": server.membership,
                "list_requests": server.list_requests,
                "state": server.state,
            }
        )
    finally:
        await server.close()


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the orchestrator reports it, this process just ends.
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())

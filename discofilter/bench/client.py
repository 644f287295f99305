"""The istiod-like watch clients: ``python -m discofilter.bench.client`` (a JSON-lines worker).

istiod watches Pods (with ``fieldSelector=status.phase!=Failed``), Services, EndpointSlices and, before
Istio 1.19, Endpoints, cluster-wide, asking for JSON here (``ISTIO_KUBE_CLIENT_CONTENT_TYPE=json``: the
filtered reads are JSON anyway). These clients do the same over aiohttp, one connection per watch, reading
by chunks (never aiohttp's line reader, kopf #275) and splitting events on the API server's newline.

Commands:

- ``replay``: watch the four resources from a resourceVersion until each stream's end marker arrives
  (the saturation runs). ``decode`` picks what the client does with each event: ``none`` only finds its
  type and resourceVersion (framing and a regex, so the proxy is what saturates), ``json`` decodes it
  with the standard library (the istiod model, see below), ``orjson`` with orjson (a lower bound), and
  ``drain`` does not even frame: it drops the bytes as they come (aiohttp's receive path alone).
- ``replay`` with ``paced``: the same, but the pump sends each watch's events one per write on a
  schedule (``benchRate``, ``benchSeconds``, ``benchEpoch``, see ``pump.py``): the CPU is taken from the
  schedule's start (connections and TLS handshakes are done by then) to the last end marker.
- ``bare``: the floor of receiving an event in Python. A plain ``asyncio.Protocol`` on uvloop opens the
  same four paced TLS watches, sends the request line and drops every byte it receives (no HTTP parser,
  no framing) until the expected bytes are in: the cost of a wakeup, a TLS record decryption and a read.
- ``live_start`` / ``live_stop``: informers (LIST, then WATCH from the list's resourceVersion; on a 410
  ERROR, back off and relist, as client-go's reflector does) that record when each event arrived, for the
  latency runs.

The istiod decode model. istiod is Go: client-go decodes a ~20 KB pod of JSON in ~0.24 ms (REFERENCE.md,
measured on a real 1.28 informer), then updates its informer cache and handlers. A Python ``orjson``
decode is far cheaper per byte than that, and would make any proxy's own CPU look large next to what it
saves. The standard library's ``json.loads`` is the model used here: one full
decode of every event, nothing more. The report also gives a second, clearly labelled estimate that
charges client-go's documented cost per byte instead of anything measured in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import ssl
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop

from discofilter.bench.procs import BenchError, JsonObj, serve_commands
from discofilter.bench.workload import WATCHED
from discofilter.core.framing import LineFramer

PATHS: Final = {
    "pods": "/api/v1/pods",
    "services": "/api/v1/services",
    "endpoints": "/api/v1/endpoints",
    "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
}
FIELD_SELECTORS: Final = {"pods": "status.phase!=Failed"}
"""istiod's pod watch skips Failed pods server-side (REFERENCE.md)."""
RELIST_BACKOFF_SECONDS: Final = 1.0
"""client-go's reflector waits about a second (its backoff manager) before relisting after a 410."""
WATCH_TIMEOUT_SECONDS: Final = 1800
"""The API server's default --min-request-timeout; no watch ends by timeout during a run."""
READ_BUFFER: Final = 256 * 1024
"""The same read size as discofilter's upstream reads, so the receive paths compare."""

_RV: Final = re.compile(rb'"resourceVersion":"([0-9]+)"')
_LIST_RV: Final = re.compile(rb'"metadata":\{[^{}]*?"resourceVersion":"([0-9]+)"')
_TYPE_START: Final = len(b'{"type":"')
# A Decoder turns one event line into (type, resourceVersion); 0 when the object has none (ERROR).
Decoder = Callable[[bytes], tuple[str, int]]


def scan(line: bytes) -> tuple[str, int]:
    """Type and resourceVersion from the head of the line: metadata comes before anything large."""
    etype = line[_TYPE_START : line.find(b'"', _TYPE_START)].decode()
    m = _RV.search(line, 0, 4096) or _RV.search(line)
    return etype, int(m.group(1)) if m else 0


def _from_event(event: dict[str, object]) -> tuple[str, int]:
    obj = event.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return str(event.get("type")), int(rv) if isinstance(rv, str) and rv.isdigit() else 0


def decode_json(line: bytes) -> tuple[str, int]:
    return _from_event(json.loads(line))


def decode_orjson(line: bytes) -> tuple[str, int]:
    return _from_event(orjson.loads(line))


DECODERS: Final[dict[str, Decoder]] = {"none": scan, "json": decode_json, "orjson": decode_orjson}


@functools.cache
def ssl_context(ca_file: str | None) -> ssl.SSLContext | bool:
    """Verification against the run's CA (a kubeconfig's ``certificate-authority``), or the default."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def _session(ca_file: str | None = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, ssl=ssl_context(ca_file)),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=10),
        read_bufsize=READ_BUFFER,
        headers={"Accept": "application/json"},
    )


def watch_url(base: str, resource: str, rv: int) -> str:
    q = f"watch=1&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds={WATCH_TIMEOUT_SECONDS}"
    if resource in FIELD_SELECTORS:
        q += "&fieldSelector=" + FIELD_SELECTORS[resource].replace("!", "%21")
    return f"{base}{PATHS[resource]}?{q}"


@dataclass(slots=True)
class StreamStats:
    events: int = 0
    bookmarks: int = 0
    errors: int = 0
    bytes: int = 0
    decode_s: float = 0.0
    done_t: float = 0.0

    def as_dict(self) -> JsonObj:
        return {
            "events": self.events,
            "bookmarks": self.bookmarks,
            "errors": self.errors,
            "bytes": self.bytes,
            "decode_s": self.decode_s,
        }


async def _drain(resp: aiohttp.ClientResponse, resource: str, expect_bytes: int, stats: StreamStats) -> None:
    """Read and drop bytes until ``expect_bytes`` arrived: aiohttp's receive path and nothing else."""
    while stats.bytes < expect_bytes:
        chunk = await resp.content.readany()
        if not chunk:
            raise BenchError(f"watch {resource} ended after {stats.bytes} of {expect_bytes} bytes")
        stats.bytes += len(chunk)


async def _watch_until(
    session: aiohttp.ClientSession,
    base: str,
    resource: str,
    start_rv: int,
    marker: int,
    decode: str,
    loops: int,
    expect_bytes: int,
    paced: JsonObj | None = None,
) -> StreamStats:
    """Watch until the stream's end marker has arrived ``loops`` times (the pump can loop its recording;
    resourceVersions then start over, which no proxy here looks at)."""
    stats = StreamStats()
    url = watch_url(base, resource, start_rv) + (f"&benchLoops={loops}" if loops > 1 else "")
    if paced is not None:
        url += paced_query(paced, resource)
    async with session.get(url) as resp:
        if resp.status != 200:
            raise BenchError(f"watch {resource}: HTTP {resp.status}: {(await resp.text())[:200]}")
        if decode == "drain":
            await _drain(resp, resource, expect_bytes * loops, stats)
            return stats
        fn = DECODERS[decode]
        timed = fn is not scan
        seen = 0
        framer = LineFramer()
        while True:
            chunk = await resp.content.readany()
            if not chunk:
                raise BenchError(f"watch {resource} ended before its marker (rv {marker})")
            for line in framer.feed(chunk):
                stats.bytes += len(line)
                if timed:
                    t = time.perf_counter()
                    etype, rv = fn(line)
                    stats.decode_s += time.perf_counter() - t
                else:
                    etype, rv = fn(line)
                if etype == "BOOKMARK":
                    stats.bookmarks += 1
                    continue
                if etype == "ERROR":
                    stats.errors += 1
                    raise BenchError(f"watch {resource} got an ERROR event: {line[:300]!r}")
                stats.events += 1
                if rv == marker:
                    seen += 1
                    if seen == loops:
                        stats.done_t = time.time()
                        return stats


def paced_query(paced: JsonObj, resource: str) -> str:
    """The pump's pacing parameters for one watch: its share of the rate, the run's length and clock."""
    rate = float(paced["rates"][resource])
    return (
        f"&benchRate={rate!r}&benchSeconds={float(paced['seconds'])!r}&benchEpoch={float(paced['epoch'])!r}"
    )


async def _from_epoch(epoch: float | None) -> tuple[float, float]:
    """(CPU, perf_counter) at ``epoch`` (``time.time()``): a paced run is timed from its schedule's start."""
    if epoch is not None:
        await asyncio.sleep(max(0.0, epoch - time.time()))
    return time.process_time(), time.perf_counter()


async def replay(msg: JsonObj) -> JsonObj:
    """Watch the four resources through ``url`` until each stream's marker; what arrived, and the cost."""
    base, start_rv, markers = str(msg["url"]), int(msg["start_rv"]), msg["markers"]
    decode, loops = str(msg.get("decode", "none")), int(msg.get("loops", 1))
    expect = msg.get("expect_bytes") or {}
    paced: JsonObj | None = msg.get("paced")
    if decode not in (*DECODERS, "drain"):
        raise BenchError(f"unknown decode model {decode!r}")
    async with _session(msg.get("ca")) as session:
        start = asyncio.ensure_future(_from_epoch(float(paced["epoch"]) if paced else None))
        await asyncio.sleep(0)  # the clock starts now unless there is an epoch to wait for
        watches = asyncio.gather(
            *(
                _watch_until(
                    session, base, r, start_rv, int(markers[r]), decode, loops, int(expect.get(r, 0)), paced
                )
                for r in WATCHED
            )
        )
        try:
            results = await watches
        finally:
            start.cancel()
        cpu, t = time.process_time(), time.perf_counter()
        cpu0, t0 = start.result()
        wall, cpu = t - t0, cpu - cpu0
    per = {r: s.as_dict() for r, s in zip(WATCHED, results, strict=True)}
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "done_t": max(s.done_t for s in results),
        "events": sum(s.events for s in results),
        "bookmarks": sum(s.bookmarks for s in results),
        "bytes": sum(s.bytes for s in results),
        "decode_s": sum(s.decode_s for s in results),
        "per_resource": per,
    }


class _BareReader(asyncio.Protocol):
    """Reads one watch answer and drops it: counts bytes until the head and ``expect`` body bytes are in."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.head = -1
        self.received = 0
        self.reads = 0
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.tls: str | None = None
        self.cipher: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        obj = transport.get_extra_info("ssl_object")
        if obj is not None:
            self.tls, cipher = obj.version(), obj.cipher()
            self.cipher = cipher[0] if cipher else None

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.reads += 1
        if self.head < 0:
            end = data.find(b"\r\n\r\n")  # the head comes in the first read: a few hundred bytes
            self.head = end + 4 if end >= 0 else len(data)
        if self.received >= self.head + self.expect and not self.done.done():
            self.done.set_result(time.time())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(BenchError(f"bare reader: connection lost after {self.received} bytes"))


def _same(reader: _BareReader) -> _BareReader:
    return reader


async def bare(msg: JsonObj) -> JsonObj:
    """The bare TLS reader: the four paced watches, read and dropped (see the module's docstring).

    ``expect_bytes``: per resource, the chunk-framed body the pump sends (``pump.paced_count`` events)."""
    base, start_rv, paced = str(msg["url"]), int(msg["start_rv"]), msg["paced"]
    split = urlsplit(base)
    host, port = split.hostname or "127.0.0.1", int(split.port or 443)
    tls: ssl.SSLContext | None = None
    if split.scheme == "https":
        ctx = ssl_context(msg.get("ca"))
        tls = ctx if isinstance(ctx, ssl.SSLContext) else ssl.create_default_context()
    loop = asyncio.get_running_loop()
    readers: list[_BareReader] = []
    transports: list[asyncio.BaseTransport] = []
    try:
        for resource in WATCHED:
            reader = _BareReader(int(msg["expect_bytes"][resource]))
            tr, _ = await loop.create_connection(functools.partial(_same, reader), host, port, ssl=tls)
            transports.append(tr)
            readers.append(reader)
            target = urlsplit(watch_url(base, resource, start_rv) + paced_query(paced, resource))
            cast(asyncio.WriteTransport, tr).write(
                f"GET {target.path}?{target.query} HTTP/1.1\r\nHost: {split.netloc}\r\n"
                "Accept: application/json\r\nUser-Agent: discofilter-bench-bare\r\n\r\n".encode()
            )
        cpu0, t0 = await _from_epoch(float(paced["epoch"]))
        done = await asyncio.wait_for(asyncio.gather(*(r.done for r in readers)), _BARE_TIMEOUT)
        cpu, t = time.process_time() - cpu0, time.perf_counter() - t0
    finally:
        for transport in transports:
            transport.close()
    return {
        "wall_s": t,
        "cpu_s": cpu,
        "done_t": max(done),
        "bytes": sum(r.received for r in readers),
        "reads": sum(r.reads for r in readers),
        "tls_version": readers[0].tls if readers else None,
        "cipher": readers[0].cipher if readers else None,
        "scheme": split.scheme,
    }


_BARE_TIMEOUT: Final = 600.0


@dataclass(slots=True)
class Informer:
    """LIST then WATCH one resource, relisting after a 410; records each event's arrival."""

    session: aiohttp.ClientSession
    base: str
    resource: str
    rv: array[int] = field(default_factory=lambda: array("q"))
    recv_t: array[float] = field(default_factory=lambda: array("d"))
    open_t: array[float] = field(default_factory=lambda: array("d"))
    seen_rv: int = 0
    lists: int = 0
    list_bytes: int = 0
    list_s: float = 0.0
    watches: int = 0
    expired: int = 0
    bytes: int = 0
    watching: bool = False
    """A watch is open and has answered 200: not in the relist backoff, not listing."""
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            rv: int | None = await self._list()
            self.synced.set()
            while rv is not None:
                rv = await self._watch(rv)
            await asyncio.sleep(RELIST_BACKOFF_SECONDS)

    async def _list(self) -> int:
        url = f"{self.base}{PATHS[self.resource]}?resourceVersion=0"
        if self.resource in FIELD_SELECTORS:
            url += "&fieldSelector=" + FIELD_SELECTORS[self.resource].replace("!", "%21")
        t0 = time.perf_counter()
        async with self.session.get(url) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise BenchError(f"LIST {self.resource}: HTTP {resp.status}: {body[:200]!r}")
        self.lists += 1
        self.list_bytes += len(body)
        self.list_s += time.perf_counter() - t0
        m = _LIST_RV.search(body, 0, 1024)
        rv = int(m.group(1)) if m else int(orjson.loads(body)["metadata"]["resourceVersion"])
        self.seen_rv = max(self.seen_rv, rv)
        return rv

    async def _watch(self, rv: int) -> int | None:
        """Watch from ``rv``; the resourceVersion to resume from, or None to relist (410)."""
        async with self.session.get(watch_url(self.base, self.resource, rv)) as resp:
            if resp.status != 200:
                raise BenchError(f"watch {self.resource}: HTTP {resp.status}")
            self.watches += 1
            self.watching = True
            try:
                return await self._read(resp, rv)
            finally:
                self.watching = False

    async def _read(self, resp: aiohttp.ClientResponse, rv: int) -> int | None:
        opened = time.time()
        framer = LineFramer()
        while True:
            chunk = await resp.content.readany()
            now = time.time()
            if not chunk:
                return rv
            for line in framer.feed(chunk):
                self.bytes += len(line)
                etype, erv = scan(line)
                if etype == "ERROR":
                    self.expired += 1
                    return None
                if erv:
                    rv = erv
                    self.seen_rv = max(self.seen_rv, erv)
                if etype != "BOOKMARK":
                    self.rv.append(erv)
                    self.recv_t.append(now)
                    self.open_t.append(opened)


class Live:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.informers: list[Informer] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.cpu0 = 0.0

    async def start(self, msg: JsonObj) -> JsonObj:
        self.session = _session(msg.get("ca"))
        self.informers = [Informer(self.session, str(msg["url"]), r) for r in WATCHED]
        self.cpu0 = time.process_time()
        t0 = time.perf_counter()
        self.tasks = [asyncio.create_task(i.run()) for i in self.informers]
        synced: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(i.synced.wait() for i in self.informers))
        )
        waiters: list[asyncio.Future[Any]] = [synced, *self.tasks]
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED, timeout=120)
        if synced not in done:
            synced.cancel()
            failed = [t.exception() for t in self.tasks if t.done()]
            raise BenchError(f"informers did not sync: {failed or 'timeout'}")
        return {"sync_s": time.perf_counter() - t0, "list_bytes": sum(i.list_bytes for i in self.informers)}

    async def counts(self, msg: JsonObj) -> JsonObj:
        """Each informer's counters now, the informers still running: for the relist phase, which reads
        them around each membership change."""
        failed = [t.exception() for t in self.tasks if t.done()]
        if failed:
            raise BenchError(f"an informer ended: {failed[0]}")
        return {
            i.resource: {
                "lists": i.lists,
                "list_bytes": i.list_bytes,
                "expired": i.expired,
                "watches": i.watches,
                "watching": i.watching,
                "seen_rv": i.seen_rv,
                "events": len(i.rv),
            }
            for i in self.informers
        }

    async def stop(self, msg: JsonObj) -> JsonObj:
        markers, deadline = msg["markers"], time.monotonic() + float(msg.get("wait_s", 60.0))
        while any(i.seen_rv < int(markers[i.resource]) for i in self.informers):
            failed = [t for t in self.tasks if t.done()]
            if failed or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        cpu = time.process_time() - self.cpu0
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, BenchError, aiohttp.ClientError):
                await task
        if self.session is not None:
            await self.session.close()
        missing = [i.resource for i in self.informers if i.seen_rv < int(markers[i.resource])]
        if missing:
            raise BenchError(f"markers never arrived for {missing}")
        infs = self.informers
        return {
            "cpu_s": cpu,
            "rv": [v for i in infs for v in i.rv],
            "recv_t": [v for i in infs for v in i.recv_t],
            "open_t": [v for i in infs for v in i.open_t],
            "events": sum(len(i.rv) for i in infs),
            "bytes": sum(i.bytes for i in infs),
            "lists": sum(i.lists for i in infs),
            "list_bytes": sum(i.list_bytes for i in infs),
            "list_s": sum(i.list_s for i in infs),
            "expired": sum(i.expired for i in infs),
            "watches": sum(i.watches for i in infs),
        }


async def main() -> None:
    live = Live()
    await serve_commands(
        {
            "replay": replay,
            "bare": bare,
            "live_start": live.start,
            "live_counts": live.counts,
            "live_stop": live.stop,
        }
    )


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the orchestrator reports it, this process just ends.
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())

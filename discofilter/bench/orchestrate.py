"""The benchmark run: starts every process, runs the phases, gathers raw measurements.

Processes (each its own, so CPU and memory are charged to the right one): the simulated API server and
its replay pump (``simproc``), the watch clients (``client``), and the proxies under test: ``passthrough``
and ``naive`` (``proxies``) and ``discofilter serve`` itself.

Phases, in one run so every variant sees the same machine:

1. core: the stream filter alone, in this process, before anything else runs (``core.py``);
2. saturation: the simulated API server writes a stream of churn events, records its own watch answers
   and serves them from the pump. Proxies start with the pump as their API server, twice for the filters:
   with the mesh selector, and (``-all``) with one every namespace matches, where every event is kept.
   Each trial replays the stream through every variant in turn (rotated order); the client only finds
   each event's type and resourceVersion, so what saturates is the proxy or aiohttp's receive path, never
   a decoder. Then one more replay per variant with the istiod decode model, for the client's CPU.
   Then the paced runs, on the same proxies: at each rate (50, 200 and 1,000 events/s by default), each
   variant in turn gets the stream's first ~rate*seconds events one per write, on a schedule, as an API
   server delivers them at that rate; the bare TLS reader (read and drop) is the floor. With a build of
   discofilter that offers ``--server-side-exclusion``, a second discofilter runs with it set to ``auto``.
3. latency: proxies start again with simapi itself as their API server. For each proxy, informers LIST
   and WATCH through it, and others directly beside them (each client its own process), while simapi
   churns at a fixed rate, with namespace label flips in the second half; each event's latency is its
   arrival time minus its commit time, and the proxy's added latency is compared event by event.
4. relists, on the latency phase's proxies: each kind of namespace membership change (a mesh namespace
   created, one deleted, a label flip joining, one leaving) made a few times while informers watch
   through discofilter and the raw relay; the relists each change cost them (``relists.py``).

The simulated API server and its pump speak TLS with a CA made at the start of the run (``tlsca.py``);
every proxy and client verifies it (discofilter through its kubeconfig's ``certificate-authority``).

Nothing here interprets the numbers; ``results.py`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from discofilter.bench import relists
from discofilter.bench.core import build_corpora, core_results
from discofilter.bench.procs import (
    BenchError,
    JsonObj,
    Proc,
    Worker,
    start_discofilter,
    write_kubeconfig,
)
from discofilter.bench.settings import BenchSettings
from discofilter.bench.tlsca import BenchCA, make_ca

MAIN: Final = ("direct", "passthrough", "naive", "discofilter")
ALL_KEPT: Final = ("naive-all", "discofilter-all")
STEADY_SHARE: Final = 0.5
"""The first half of each latency run has no membership change (steady state); flips come after."""
RECEIVE_PATH: Final = "receive-path"
"""The client reading the pump directly and dropping the bytes: aiohttp's receive path, the ceiling of
any aiohttp client or proxy on this machine."""
EVERY_NAMESPACE: Final = "kubernetes.io/metadata.name"
"""A selector every namespace matches: the API server labels each with its name (since 1.21)."""
BARE: Final = "bare-tls-reader"
"""The floor of receiving an event in Python: a plain asyncio.Protocol on uvloop reading the paced TLS
watches and dropping the bytes (client.py ``bare``)."""
EXCLUSION: Final = "discofilter-exclusion"
"""discofilter with ``--server-side-exclusion=auto``, where the build offers the flag."""
EXCLUSION_FLAG: Final = "--server-side-exclusion"
PACED: Final = (BARE, "direct", "passthrough", "naive", "discofilter", EXCLUSION)
PACED_LEAD_S: Final = 0.4
"""A paced run's schedule starts this long after the client is asked: its connections (through a proxy,
two TLS handshakes each) are open by then, so the CPU measured from the schedule's start is the stream's."""


def exclusion_available() -> bool:
    """Whether ``discofilter serve --help`` offers ``--server-side-exclusion``: the variant runs only with
    a build that has it, and is reported as not available otherwise (never imitated)."""
    done = subprocess.run(
        [sys.executable, "-m", "discofilter", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0 and EXCLUSION_FLAG in done.stdout


class Progress:
    """One line per step on stderr, with the time since the start."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[bench {time.monotonic() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class PacedRun:
    """One paced run of one variant at one rate."""

    variant: str
    rate: float
    upstream_events: int
    """Events the pump sent on the four watches (the end markers included), excluded ones counted: the
    denominator of every per-event figure, so variants with and without exclusion compare."""
    upstream_bytes: int
    achieved_rate: float
    """upstream_events over the time from the schedule's start to the last end marker's arrival."""
    wall_s: float
    client_events: int
    client_bytes: int
    client_cpu_s: float
    proxy_cpu_s: float | None
    extra: JsonObj = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Trial:
    """One replay of the stream through one variant."""

    variant: str
    decode: str
    loops: int
    wall_s: float
    client_events: int
    client_bytes: int
    client_cpu_s: float
    decode_s: float
    proxy_cpu_s: float | None
    sim_cpu_s: float


@dataclass(slots=True)
class Raw:
    """Everything measured, for ``results.py``."""

    setup: JsonObj = field(default_factory=dict)
    stream: JsonObj = field(default_factory=dict)
    core: dict[str, JsonObj] = field(default_factory=dict)
    trials: list[Trial] = field(default_factory=list)
    decode_trials: list[Trial] = field(default_factory=list)
    live: dict[str, JsonObj] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    stream_rss_mb: dict[str, float] = field(default_factory=dict)
    paced: list[PacedRun] = field(default_factory=list)
    exclusion: JsonObj = field(default_factory=dict)
    upstream: JsonObj = field(default_factory=dict)
    relists: JsonObj = field(default_factory=dict)
    elapsed_s: float = 0.0


async def _start_bench_proxy(
    name: str, kind: str, upstream: str, logs: Path, selectors: Sequence[str], ca: BenchCA
) -> tuple[Proc, str]:
    args = [kind, "--upstream", upstream, "--ca", str(ca.ca_file)]
    for sel in selectors:
        args += ["--selector", sel]
    proc = Proc(name, [sys.executable, "-m", "discofilter.bench.proxies", *args], logs)
    await proc.start(with_pipes=True)
    assert proc.proc is not None and proc.proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.proc.stdout.readline(), 60)
    except TimeoutError as exc:
        await proc.stop()
        raise BenchError(f"{name} did not start; log: {proc.log_tail()}") from exc
    except BaseException:
        await asyncio.shield(proc.stop())  # Ctrl-C while it starts: nobody else knows it yet
        raise
    if not line:
        raise BenchError(f"{name} exited at start; log: {proc.log_tail()}")
    # The proxy keeps reading its stdin and stops when it closes: stop() closes it, no command needed.
    return proc, f"http://127.0.0.1:{int(orjson.loads(line)['port'])}"


@dataclass(slots=True)
class Fleet:
    """The proxies of one phase, and every variant's URL (``direct`` is the API server itself)."""

    proxies: dict[str, Proc] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def proxies_for(
    upstream: str, out: Path, names: Sequence[str], phase: str, progress: Progress, ca: BenchCA
) -> AsyncIterator[Fleet]:
    """Start the named variants' proxies in front of ``upstream``; stop them all on the way out."""
    logs = out / "logs"
    kubeconfig = write_kubeconfig(out / f"{phase}.kubeconfig", upstream, ca_file=ca.ca_file)
    starters = {
        "passthrough": lambda: _start_bench_proxy(
            f"{phase}-passthrough", "passthrough", upstream, logs, (), ca
        ),
        "naive": lambda: _start_bench_proxy(f"{phase}-naive", "naive", upstream, logs, (), ca),
        "naive-all": lambda: _start_bench_proxy(
            f"{phase}-naive-all", "naive", upstream, logs, (EVERY_NAMESPACE,), ca
        ),
        "discofilter": lambda: start_discofilter(f"{phase}-discofilter", kubeconfig, logs),
        "discofilter-all": lambda: start_discofilter(
            f"{phase}-discofilter-all", kubeconfig, logs, selectors=(EVERY_NAMESPACE,)
        ),
        EXCLUSION: lambda: start_discofilter(
            f"{phase}-{EXCLUSION}", kubeconfig, logs, extra=(f"{EXCLUSION_FLAG}=auto",)
        ),
    }
    progress(f"{phase}: starting {', '.join(names)} in front of {upstream}")
    f = Fleet(urls={"direct": upstream})
    tasks = [asyncio.ensure_future(starters[n]()) for n in names]
    try:
        try:
            await asyncio.wait(tasks)
        finally:
            # Interrupted (Ctrl-C) or not, every proxy that did start is registered, so the outer
            # finally stops it; one still starting is cancelled and stops itself.
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks)
            for name, t in zip(names, tasks, strict=True):
                if not t.cancelled() and t.exception() is None:
                    f.proxies[name], f.urls[name] = t.result()
        failures = [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]
        if failures:
            raise failures[0]
        yield f
    finally:
        await asyncio.gather(*(p.stop() for p in f.proxies.values()), return_exceptions=True)


def _rotated(items: Sequence[str], by: int) -> list[str]:
    k = by % len(items)
    return [*items[k:], *items[:k]]


class Bench:
    def __init__(self, settings: BenchSettings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.raw = Raw()
        logs = settings.run.out / "logs"
        self.sim = Worker("simapi", "discofilter.bench.simproc", logs)
        self.client = Worker("client", "discofilter.bench.client", logs)
        self.ca = make_ca(settings.run.out / "tls")

    async def run(self) -> Raw:
        t0 = time.monotonic()
        run, w = self.settings.run, self.settings.workload
        self.progress(
            f"core micro-benchmark (filter vs orjson parse vs copy vs newline scan + copy, "
            f"{run.core_seconds:g} s each)"
        )
        self.raw.core = core_results(run.core_seconds, build_corpora(run.core_events))
        excl = exclusion_available()
        self.raw.exclusion = {
            "flag": f"{EXCLUSION_FLAG}=auto",
            "available": excl,
            "note": None
            if excl
            else f"not available in this build (discofilter serve --help has no {EXCLUSION_FLAG})",
        }
        self.progress(
            f"server-side exclusion: {'runs as ' + EXCLUSION if excl else self.raw.exclusion['note']}"
        )
        try:
            await self.sim.start()
            await self.client.start()
            self.progress(
                f"simulated API server: {w.namespaces} namespaces ({w.mesh_namespaces} in the mesh), "
                f"{w.namespaces * w.apps_per_namespace * w.pods_per_app} pods"
            )
            window = max(run.events, 5_000) + 1_000
            tls = {k: str(getattr(self.ca, k)) for k in ("ca_file", "cert_file", "key_file")}
            self.raw.setup = await self.sim.call(
                "setup", workload=dataclasses.asdict(w), history_window=window, tls=tls
            )
            self.progress(f"writing the saturation stream: {run.events} churn events")
            self.raw.stream = await self.sim.call("prefill", events=run.events)
            stream = self.raw.stream
            pump = await self.sim.call("record", start_rv=stream["start_rv"], markers=stream["markers"])
            stream["recorded_bytes"] = pump["bytes"]
            stream["recorded_events"] = pump["events"]
            out = run.out
            names = (*MAIN[1:], *ALL_KEPT, *((EXCLUSION,) if excl else ()))
            async with proxies_for(str(pump["url"]), out, names, "saturation", self.progress, self.ca) as f:
                await self._saturation(f)
                await self._decode_pass(f)
                self.raw.stream_rss_mb = {n: p.peak_rss_mb() for n, p in f.proxies.items()}
                await self._paced(f)
            async with proxies_for(
                str(self.raw.setup["url"]), out, MAIN[1:], "latency", self.progress, self.ca
            ) as f:
                await self._latency(f)
                self.raw.peak_rss_mb = {n: p.peak_rss_mb() for n, p in f.proxies.items()}
                self.progress(
                    f"relists: each kind of membership change {run.relist_changes} times, clients through "
                    f"{' and '.join(relists.VARIANTS)}"
                )
                self.raw.relists = await relists.run_phase(
                    self.sim, f.urls, str(self.ca.ca_file), out / "logs", run.relist_changes, self.progress
                )
            self.raw.peak_rss_mb |= {"simapi": self.sim.peak_rss_mb(), "client": self.client.peak_rss_mb()}
        finally:
            await asyncio.gather(self.sim.stop(), self.client.stop(), return_exceptions=True)
        self.raw.elapsed_s = time.monotonic() - t0
        return self.raw

    async def _replay(self, f: Fleet, variant: str, decode: str, loops: int = 1) -> Trial:
        proxy = f.proxies.get(variant)
        p0 = proxy.cpu_seconds() if proxy else 0.0
        s0 = self.sim.cpu_seconds()
        stream = self.raw.stream
        r = await self.client.call(
            "replay",
            timeout=_REPLAY_TIMEOUT,
            url=f.urls["direct" if variant == RECEIVE_PATH else variant],
            ca=str(self.ca.ca_file),
            start_rv=stream["start_rv"],
            markers=stream["markers"],
            decode="drain" if variant == RECEIVE_PATH else decode,
            loops=loops,
            expect_bytes=stream["recorded_bytes"],
        )
        return Trial(
            variant=variant,
            decode=decode,
            loops=loops,
            wall_s=float(r["wall_s"]),
            client_events=int(r["events"]),
            client_bytes=int(r["bytes"]),
            client_cpu_s=float(r["cpu_s"]),
            decode_s=float(r["decode_s"]),
            proxy_cpu_s=proxy.cpu_seconds() - p0 if proxy else None,
            sim_cpu_s=self.sim.cpu_seconds() - s0,
        )

    async def _saturation(self, f: Fleet) -> None:
        variants = (*MAIN, *ALL_KEPT, RECEIVE_PATH)
        trials, loops = self.settings.run.trials, self.settings.run.loops
        self.progress("saturation: one warm-up replay per variant")
        for v in variants:
            await self._replay(f, v, "none")
        events = sum(c["events"] for c in self.raw.stream["counts"].values()) * loops
        self.progress(f"saturation: {trials} trials, the stream played {loops} times per replay")
        for t in range(trials):
            for v in _rotated(variants, t):
                trial = await self._replay(f, v, "none", loops)
                self.raw.trials.append(trial)
                self.progress(
                    f"saturation {t + 1}/{trials} {v:16s} {events / trial.wall_s:8.0f} events/s "
                    f"{trial.client_events:7d} received"
                )

    async def _decode_pass(self, f: Fleet) -> None:
        decode = self.settings.run.decode
        self.progress(f"client cost: one replay per variant, every received event decoded ({decode})")
        for v in MAIN:
            trial = await self._replay(f, v, decode)
            self.raw.decode_trials.append(trial)
            self.progress(f"client cost {v:16s} client CPU {trial.client_cpu_s:6.2f} s")

    async def _paced(self, f: Fleet) -> None:
        """Each variant in turn at each paced rate, over TLS: CPU per upstream event where every read
        carries one event, and the client's CPU with the istiod decode model for the NET."""
        run, stream = self.settings.run, self.raw.stream
        rates = sorted({*run.paced_rates, run.rate})
        recorded = stream["recorded_events"]
        total = sum(recorded.values())
        variants = [v for v in PACED if v in f.urls or v == BARE]
        if EXCLUSION in f.proxies:
            self.progress(f"paced: a warm-up replay through {EXCLUSION} (its exclusion is adaptive)")
            await self._replay(f, EXCLUSION, "none")
        self.progress(
            f"paced runs over TLS: {', '.join(f'{r:g}' for r in rates)} events/s, {run.paced_seconds:g} s "
            f"each, variants {', '.join(variants)}"
        )
        for rate in rates:
            # Each watch gets its share of the rate, so the four streams end together.
            shares = {r: rate * n / total for r, n in recorded.items()}
            plan = await self.sim.call("paced", rates=shares, seconds=run.paced_seconds)
            for variant in variants:
                self.raw.paced.append(await self._paced_run(f, variant, rate, shares, plan))

    async def _paced_run(
        self, f: Fleet, variant: str, rate: float, shares: dict[str, float], plan: JsonObj
    ) -> PacedRun:
        run, stream = self.settings.run, self.raw.stream
        proxy = f.proxies.get(variant)
        epoch = time.time() + PACED_LEAD_S
        paced = {"rates": shares, "seconds": run.paced_seconds, "epoch": epoch}
        common = {"ca": str(self.ca.ca_file), "start_rv": stream["start_rv"], "paced": paced}
        if variant == BARE:
            expect = {r: p["bytes"] for r, p in plan.items()}
            call = self.client.call(
                "bare", timeout=_REPLAY_TIMEOUT, url=f.urls["direct"], expect_bytes=expect, **common
            )
        else:
            call = self.client.call(
                "replay", timeout=_REPLAY_TIMEOUT, url=f.urls[variant], markers=stream["markers"],
                decode=run.decode, **common,
            )  # fmt: skip
        task = asyncio.ensure_future(call)
        await asyncio.sleep(max(0.0, epoch - time.time()))
        p0 = proxy.cpu_seconds_precise() if proxy else 0.0
        try:
            r = await task
        finally:
            task.cancel()
        proxy_cpu = proxy.cpu_seconds_precise() - p0 if proxy else None
        events = sum(int(p["events"]) for p in plan.values())
        span = float(r["done_t"]) - epoch
        result = PacedRun(
            variant=variant,
            rate=rate,
            upstream_events=events,
            upstream_bytes=sum(int(p["bytes"]) for p in plan.values()),
            achieved_rate=events / span if span > 0 else 0.0,
            wall_s=float(r["wall_s"]),
            client_events=int(r.get("events", events)),
            client_bytes=int(r["bytes"]),
            client_cpu_s=float(r["cpu_s"]),
            proxy_cpu_s=proxy_cpu,
            extra={k: r[k] for k in ("tls_version", "cipher", "scheme", "reads") if k in r},
        )
        if variant == BARE:
            self.raw.upstream = {k: r.get(k) for k in ("scheme", "tls_version", "cipher")}
        cost = (proxy_cpu if proxy_cpu is not None else result.client_cpu_s) / events * 1e6
        self.progress(
            f"paced {rate:6g}/s {variant:22s} {result.achieved_rate:7.1f} events/s achieved, "
            f"{cost:6.1f} us CPU per upstream event ({'proxy' if proxy else 'client'}), "
            f"{result.client_events} received"
        )
        return result

    async def _latency(self, f: Fleet) -> None:
        """One live run per proxy, each beside a direct client (both in their own processes): every event
        reaches both, so the proxy's added latency is taken event by event, while the machine carries one
        proxy at a time, as a deployment would."""
        run = self.settings.run
        self.progress(
            f"latency: {run.rate:g} events/s for {run.latency_seconds:g} s per proxy, beside a direct client "
            f"(flips from {run.latency_seconds * STEADY_SHARE:g} s on, every {run.flip_every:g} s)"
        )
        for v in MAIN[1:]:
            self.raw.live[v] = await self._live_pair(f, v)

    async def _live_pair(self, f: Fleet, variant: str) -> JsonObj:
        run = self.settings.run
        logs = run.out / "logs"
        names = ("direct", variant)
        clients = {
            n: Worker(f"latency-{variant}-client-{n}", "discofilter.bench.client", logs) for n in names
        }
        proxy = f.proxies[variant]
        samples: list[tuple[float, float]] = []
        rss: list[tuple[float, float]] = []
        try:
            await asyncio.gather(*(c.start() for c in clients.values()))
            starts = await asyncio.gather(
                *(
                    c.call("live_start", timeout=_LIVE_TIMEOUT, url=f.urls[n], ca=str(self.ca.ca_file))
                    for n, c in clients.items()
                )
            )
            done = asyncio.Event()
            sampler = asyncio.create_task(_sample(proxy, samples, rss, done))
            try:
                live = await self.sim.call(
                    "live",
                    timeout=run.latency_seconds + _LIVE_TIMEOUT,
                    rate=run.rate,
                    seconds=run.latency_seconds,
                    flip_every=run.flip_every,
                    flip_after=run.latency_seconds * STEADY_SHARE,
                )
                gots = await asyncio.gather(
                    *(
                        c.call("live_stop", timeout=_LIVE_TIMEOUT, markers=live["markers"], wait_s=60)
                        for c in clients.values()
                    )
                )
            finally:
                done.set()
                await sampler
        finally:
            await asyncio.gather(*(c.stop() for c in clients.values()), return_exceptions=True)
        (d_start, v_start), (d_got, v_got) = starts, gots
        self.progress(
            f"latency {variant:12s} {live['achieved_rate']:5.0f} events/s written; received: direct "
            f"{d_got['events']}, {variant} {v_got['events']} ({v_got['expired']} watches expired)"
        )
        return {
            "sim": live,
            "direct": {"start": d_start, "client": d_got, "proxy_cpu_samples": []},
            "variant": {
                "start": v_start,
                "client": v_got,
                "proxy_cpu_samples": samples,
                "proxy_rss_samples": rss,
            },
        }


async def _sample(
    proxy: Proc,
    cpu: list[tuple[float, float]],
    rss: list[tuple[float, float]],
    done: asyncio.Event,
) -> None:
    """(time.time(), proxy CPU seconds) and (time.time(), RSS MB) every 50 ms: the CPU so the steady part
    of a run can be told apart, the RSS to show memory while the label flips make clients relist."""
    while True:
        now = time.time()
        cpu.append((now, proxy.cpu_seconds()))
        mb = proxy.rss_mb()
        if mb is not None:
            rss.append((now, mb))
        if done.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.05)


_REPLAY_TIMEOUT: Final = 900.0
_LIVE_TIMEOUT: Final = 300.0

"""``discofilter demo``: ``discofilter simapi`` and ``discofilter serve`` in front of it, until Ctrl-C.

Both are child processes started through the benchmark's ``Proc`` (``bench/procs.py``): each gets
``PR_SET_PDEATHSIG``, so they end with the demo however it ends, Ctrl-C, SIGTERM or SIGKILL. On Ctrl-C the
terminal signals the whole process group; the demo then stops discofilter before the API server behind it
(SIGTERM, SIGKILL after 10 s), so discofilter drains without upstream errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Final, TypeVar

import aiohttp
import orjson

from discofilter.bench.procs import BenchError, Proc, start_discofilter, writable_dir, write_kubeconfig
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS
from discofilter.demo.settings import DemoSettings

T = TypeVar("T")

_SIMAPI_START_SECONDS: Final = 60.0
"""Seeding 500 namespaces takes a few seconds on a busy machine; the demo's dozen, well under one."""


class Stopped(Exception):
    """Ctrl-C (or SIGTERM) while the demo was starting."""


def simapi_argv(settings: DemoSettings, kubeconfig: Path) -> list[str]:
    w, c = settings.workload, settings.churn
    return [
        sys.executable, "-m", "discofilter", "simapi",
        "--listen", "127.0.0.1:0", "--kubeconfig-out", str(kubeconfig),
        "--namespaces", str(w.namespaces), "--mesh-fraction", repr(w.mesh_fraction),
        "--apps-per-namespace", str(w.apps_per_namespace), "--pods-per-app", str(w.pods_per_app),
        "--seed", str(w.seed), "--churn-rate", repr(c.rate), "--flip-every", repr(c.flip_every),
    ]  # fmt: skip


def prepare_out(out: Path | None) -> Path:
    if out is None:
        return Path(tempfile.mkdtemp(prefix="discofilter-demo-"))
    return writable_dir(out, "--dir")


async def _unless_stopped(step: Awaitable[T], stop: asyncio.Event) -> T:
    task = asyncio.ensure_future(step)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BenchError):
            await task
        raise Stopped
    return task.result()


async def _kubeconfig_written(proc: Proc, path: Path) -> None:
    """``discofilter simapi`` writes its kubeconfig (whole, renamed into place) once it listens."""
    deadline = time.monotonic() + _SIMAPI_START_SECONDS
    while not path.exists():
        if proc.exited:
            raise BenchError(f"the simulated API server ended at start-up: {proc.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"the simulated API server did not start: {proc.log_tail()}")
        await asyncio.sleep(0.05)


async def _first_exit(procs: list[Proc], stop: asyncio.Event) -> Proc | None:
    """The child that ended on its own, or None when the demo was asked to stop."""
    waits = {asyncio.ensure_future(p.proc.wait()): p for p in procs if p.proc is not None}
    stopper = asyncio.ensure_future(stop.wait())
    done, pending = await asyncio.wait({*waits, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return next((waits[t] for t in done if t in waits), None)


def banner(out: Path, direct: Path, through: Path, mesh: list[str], settings: DemoSettings) -> str:
    churn = f"{settings.churn.rate:g} writes/s of churn" if settings.churn.rate > 0 else "no churn"
    tries = [
        (direct, "get pods -A", "every namespace"),
        (through, "get pods -A", "only the mesh namespaces"),
        (through, "get pods -A -w", "live: only mesh pods come through"),
        (direct, "get pods -A -w", "live: the whole cluster's churn"),
        (through, "get namespaces -L istio-injection", "everything else passes unchanged"),
    ]
    commands = [f"kubectl --kubeconfig {path} {args}" for path, args, _ in tries]
    width = max(map(len, commands))
    lines = [
        f"discofilter demo: a simulated API server ({settings.workload.namespaces} namespaces, {churn})",
        "and the real `discofilter serve` in front of it.",
        f"Mesh namespaces (istio-injection=enabled): {', '.join(mesh)}",
        "",
        f"kubeconfig (direct): {direct}",
        f"kubeconfig (through discofilter): {through}",
        "",
        "Try:",
        *(f"  {cmd.ljust(width)}  # {why}" for cmd, (_, _, why) in zip(commands, tries, strict=True)),
        "",
        f"Logs: {out / 'simapi.log'}, {out / 'discofilter.log'}. Ctrl-C ends everything.",
    ]
    return "\n".join(lines)


async def _mesh_namespaces(direct: Path) -> list[str]:
    """Read from the API server, as a user would with ``kubectl get ns -l istio-injection=enabled``."""
    server = orjson.loads(direct.read_bytes())["clusters"][0]["cluster"]["server"]
    async with aiohttp.ClientSession() as session, session.get(f"{server}/api/v1/namespaces") as resp:
        resp.raise_for_status()
        items = orjson.loads(await resp.read())["items"]
    return sorted(
        ns["metadata"]["name"]
        for ns in items
        if DEFAULT_MESH_SELECTORS.matches(ns["metadata"].get("labels") or {})
    )


async def run_demo(settings: DemoSettings) -> int:
    out = prepare_out(settings.out)
    direct, through = out / "direct.kubeconfig", out / "discofilter.kubeconfig"
    for stale in (direct, through):
        stale.unlink(missing_ok=True)  # a rerun in the same --dir must wait for the new server's file
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim = Proc("simapi", simapi_argv(settings, direct), out)
    df: Proc | None = None
    try:
        await sim.start()
        await _unless_stopped(_kubeconfig_written(sim, direct), stop)
        proxy, url = await _unless_stopped(start_discofilter("discofilter", direct, out), stop)
        df = proxy
        write_kubeconfig(through, url)
        mesh = await _unless_stopped(_mesh_namespaces(direct), stop)
        print(banner(out, direct, through, mesh, settings), flush=True)
        ended = await _first_exit([sim, proxy], stop)
        if ended is not None:
            print(f"discofilter demo: {ended.name} ended unexpectedly: {ended.log_tail()}", file=sys.stderr)
            return 1
    except Stopped:
        pass
    finally:
        # discofilter first: it drains its watches while its API server still answers.
        with contextlib.suppress(asyncio.CancelledError):
            if df is not None:
                await asyncio.shield(df.stop())
            await asyncio.shield(sim.stop())
    print("discofilter demo: stopped", flush=True)
    return 0

"""``discofilter simapi``: the simulated API server as a process of its own, seeded and churning.

The cluster and its churn are the benchmark's (``bench/simproc.seeded_store``, ``bench/workload.Churn``):
real kube-apiserver 1.28 objects, pod lives of eleven events, Endpoints and EndpointSlices following them.
Writes go in with ``Store.apply`` as the benchmark's do, so every watch sees them exactly as simapi serves
any event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from discofilter.bench.objects import replaced
from discofilter.bench.procs import write_kubeconfig
from discofilter.bench.simproc import seeded_store
from discofilter.bench.workload import Churn, Write
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS
from discofilter.demo.settings import ChurnSettings, SimApiSettings
from discofilter.errors import ConfigError
from discofilter.simapi import SimSettings, Store, serve

log = logging.getLogger("discofilter.demo.simapi")


@dataclass(frozen=True, slots=True)
class Started:
    """What the server says once it listens."""

    url: str
    namespaces: tuple[str, ...]
    mesh_namespaces: tuple[str, ...]
    pods: int


def commit(store: Store, write: Write) -> None:
    """Apply one write of the generator. A client may have written through the API meanwhile (``kubectl
    create``...), which moves the store's resourceVersion past the generator's: the write then takes the
    next one, as any write would. A write about an object a client deleted is skipped."""
    obj = write.obj
    if write.rv <= store.resource_version:
        rv = str(store.resource_version + 1)
        obj = replaced(obj, metadata=replaced(obj["metadata"], resourceVersion=rv))
    try:
        store.apply(write.resource, write.type, obj)
    except ValueError as exc:
        log.debug("churn write skipped: %s", exc)


async def run_churn(store: Store, churn: Churn, settings: ChurnSettings) -> None:
    """Write at ``settings.rate`` per second, with a label flip every ``settings.flip_every`` s, forever."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / settings.rate
    due = loop.time()
    next_flip = due + settings.flip_every if settings.flip_every > 0 else math.inf
    while True:
        if loop.time() >= next_flip:
            flip = churn.flip()
            commit(store, flip)
            log.info("namespace %s %s the mesh", flip.namespace, "joins" if flip.mesh else "leaves")
            next_flip += settings.flip_every
        commit(store, churn.step())
        due += interval
        # Behind schedule (a busy machine) it catches up without sleeping, never with a burst of sleeps.
        await asyncio.sleep(max(0.0, due - loop.time()))


def write_kubeconfig_atomically(path: Path, server: str, token: str | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_kubeconfig(tmp, server, token=token)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the kubeconfig {str(path)!r}: {exc.strerror or exc}") from exc


async def serve_simapi(
    settings: SimApiSettings, *, started: Callable[[Started], None], stop: asyncio.Event
) -> None:
    """Serve until ``stop`` is set; ``started`` is called once the server listens (and the kubeconfig,
    if asked for, is written)."""
    store, churn, initial = seeded_store(settings.workload, history_window=settings.history_window)
    sim = SimSettings(tokens=settings.tokens)
    try:
        runner, url = await serve(store, sim, host=settings.host, port=settings.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from exc
    task: asyncio.Task[None] | None = None
    try:
        if settings.kubeconfig_out is not None:
            token = next(iter(settings.tokens), None)
            write_kubeconfig_atomically(settings.kubeconfig_out, url, token)
        names = tuple(ns["metadata"]["name"] for ns in initial["namespaces"])
        mesh = tuple(
            ns["metadata"]["name"]
            for ns in initial["namespaces"]
            if DEFAULT_MESH_SELECTORS.matches(ns["metadata"].get("labels") or {})
        )
        started(Started(url, names, mesh, len(initial["pods"])))
        if settings.churn.rate > 0:
            task = asyncio.create_task(run_churn(store, churn, settings.churn), name="churn")
        await stop.wait()
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()


def describe(started: Started, settings: SimApiSettings) -> str:
    churn = settings.churn
    flips = f", a namespace label flip every {churn.flip_every:g} s" if churn.flip_every > 0 else ""
    lines = [
        f"simapi serving {started.url}: {len(started.namespaces)} namespaces, {started.pods} pods; "
        f"in the mesh: {', '.join(started.mesh_namespaces)}",
        f"churn: {churn.rate:g} writes/s{flips}" if churn.rate > 0 else "churn: off",
    ]
    if settings.kubeconfig_out is not None:
        lines.append(f"kubeconfig: {settings.kubeconfig_out}")
    return "\n".join(lines)


async def main(settings: SimApiSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def started(s: Started) -> None:
        print(describe(s, settings), flush=True)

    await serve_simapi(settings, started=started, stop=stop)

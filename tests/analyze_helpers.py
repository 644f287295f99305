"""Shared by the analyze tests: a simulated cluster with the bench's seeded churn, and the real
``discofilter analyze`` subprocess pointed at it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from discofilter.bench.workload import WATCHED, Churn, WorkloadSettings
from discofilter.simapi import REQUEST_LOG, SimSettings, Store, serve
from tests.harness import write_kubeconfig

# Per namespace, per kind, per event type: the generator's own log of what it wrote.
Counts = dict[str, dict[str, dict[str, int]]]


@dataclass
class SimCluster:
    url: str
    runner: web.AppRunner
    store: Store
    churn: Churn
    kubeconfig: Path
    log: Counts = field(default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(int))))
    outside: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Writes per namespace that the generator made while the namespace was outside the mesh."""
    initial: dict[str, dict[str, int]] = field(default_factory=dict)
    """Objects per namespace and kind before the churn (what the first LISTs return)."""

    def requests(self) -> list[tuple[str, str]]:
        app = self.runner.app
        return [(r.path, r.query) for r in app[REQUEST_LOG]]

    def watches_open(self) -> int:
        return sum(1 for _, q in self.requests() if "watch=1" in q)

    def write(self, steps: int) -> None:
        """Write ``steps`` churn events, logging each by namespace, kind and type."""
        for _ in range(steps):
            w = self.churn.step()
            self.store.apply(w.resource, w.type, w.obj)
            self.log[w.namespace][w.resource][w.type] += 1
            if not w.mesh:
                self.outside[w.namespace] += 1


@asynccontextmanager
async def sim_cluster(
    tmp_path: Path,
    *,
    namespaces: int = 12,
    seed: int = 7,
    settings: SimSettings | None = None,
    token: str | None = None,
) -> AsyncIterator[SimCluster]:
    workload = WorkloadSettings(
        namespaces=namespaces, mesh_fraction=0.25, apps_per_namespace=1, pods_per_app=2, seed=seed
    )
    store = Store(history_window=100_000, seed=seed)
    churn = Churn(workload, first_rv=store.resource_version + 1)
    initial = churn.initial_state()
    for resource in ("namespaces", *WATCHED):
        store.load_list(
            resource, {"metadata": {"resourceVersion": str(churn.rv)}, "items": initial[resource]}
        )
    runner, url = await serve(store, settings or SimSettings(bookmark_interval=1.0), host="127.0.0.1", port=0)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url, token=token)
    try:
        counted: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for resource in WATCHED:
            for obj in initial[resource]:
                counted[obj["metadata"]["namespace"]][resource] += 1
        initial_counts = {ns: dict(kinds) for ns, kinds in counted.items()}
        yield SimCluster(url, runner, store, churn, kubeconfig, initial=initial_counts)
    finally:
        await runner.cleanup()


def analyze_cmd(kubeconfig: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "discofilter",
        "analyze",
        "--kubeconfig",
        str(kubeconfig),
        "--out",
        str(out),
        *extra,
    ]


async def start_analyze(kubeconfig: Path, out: Path, *extra: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return await asyncio.create_subprocess_exec(
        *analyze_cmd(kubeconfig, out, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


async def wait_for(predicate: object, timeout: float = 30.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)

"""Real-cluster mode (``discofilter bench --kubeconfig K``): churn scratch namespaces of a real cluster and
compare what reaches a pod watch with and without discofilter.

Safety first, because this writes to somebody's cluster:

- It only ever writes into two namespaces it creates itself, ``BASE`` (the "mesh" one) and
  ``BASE-plain``, labelled ``bench.discofilter.io/id=<random id>``. If either already exists it stops
  before writing anything: it never adopts a namespace.
- Before deleting a namespace it reads it back and checks that label; a namespace without this run's id is
  never deleted.
- Pods carry a ``schedulingGates`` entry, so the scheduler never places them and no container ever runs.
  No ``istio-injection`` label is used anywhere: a real istiod is not disturbed.
- Cleanup (pods, then namespaces) runs in ``finally``; SIGINT and SIGTERM stop the churn and go through
  it, so Ctrl-C leaves nothing behind.

discofilter runs as ``discofilter serve --upstream-credentials`` on 127.0.0.1 with the same kubeconfig,
selecting the mesh namespace by its labels. Two in-process watch clients follow ``/api/v1/pods`` from the
same resourceVersion: one talks to the API server directly (with the kubeconfig's credentials), one to
discofilter (which lends its own). The whole cluster's pod churn reaches the first; only the mesh
namespace's should reach the second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from discofilter.bench.procs import BenchError, Proc, start_discofilter
from discofilter.bench.settings import ClusterSettings
from discofilter.bench.templates import load
from discofilter.core.framing import LineFramer
from discofilter.errors import ConfigError
from discofilter.settings import UpstreamSettings
from discofilter.upstream import Upstream, load_upstream

log = logging.getLogger("discofilter.bench.cluster")

ID_LABEL: Final = "bench.discofilter.io/id"
ROLE_LABEL: Final = "bench.discofilter.io/role"
GATE: Final = "bench.discofilter.io/never-schedule"
_TIMEOUT: Final = aiohttp.ClientTimeout(total=30)
_CATCH_UP_SECONDS: Final = 30.0


def scratch_pod(role: str, bench_id: str) -> dict[str, Any]:
    """A real pod spec (from the templates), gated so it is never scheduled, with nothing that depends on
    objects the scratch namespace lacks (owner, service account token)."""
    t = load("MESH_POD" if role == "mesh" else "PLAIN_POD")
    spec = {
        k: v
        for k, v in t["spec"].items()
        if k not in ("nodeName", "priority", "preemptionPolicy", "serviceAccountName", "serviceAccount")
    }
    spec["volumes"] = [v for v in spec.get("volumes", []) if not v["name"].startswith("kube-api-access")]
    for key in ("containers", "initContainers"):
        if key in spec:
            spec[key] = [
                {
                    **c,
                    "volumeMounts": [
                        m for m in c.get("volumeMounts", []) if not m["name"].startswith("kube-api-access")
                    ],
                }
                for c in spec[key]
            ]
    spec |= {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0}
    spec["schedulingGates"] = [{"name": GATE}]
    meta = t["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"bench-{role}-",
            "labels": {"app": f"bench-{role}", ID_LABEL: bench_id},
            "annotations": meta.get("annotations", {}),
        },
        "spec": spec,
    }


@dataclass(slots=True)
class Api:
    """The few API calls this mode makes, with the kubeconfig's credentials."""

    upstream: Upstream
    session: aiohttp.ClientSession

    async def request(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        headers = {"Accept": "application/json"}
        auth = await self.upstream.authorization()
        if auth:
            headers["Authorization"] = auth
        data = None
        if body is not None:
            headers["Content-Type"] = ctype
            data = orjson.dumps(body)
        url = self.upstream.base_url + path
        async with self.session.request(
            method, url, data=data, headers=headers, ssl=self.upstream.own_ssl, timeout=_TIMEOUT
        ) as resp:
            text = await resp.read()
            if resp.status == 404:
                return None
            if resp.status >= 400:
                raise BenchError(f"{method} {path}: HTTP {resp.status}: {text[:300]!r}")
            return orjson.loads(text) if text else None


@dataclass(slots=True)
class Watcher:
    """Counts the pod events one client receives, by where they come from."""

    name: str
    mesh_ns: str
    plain_ns: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("mesh", "plain", "other"), 0))
    bookmarks: int = 0
    bytes: int = 0
    deleted: set[str] = field(default_factory=set)

    async def run(self, session: aiohttp.ClientSession, url: str, headers: dict[str, str], ssl: Any) -> None:
        async with session.get(url, headers=headers, ssl=ssl) as resp:
            if resp.status != 200:
                raise BenchError(f"{self.name} watch: HTTP {resp.status}")
            framer = LineFramer()
            while chunk := await resp.content.readany():
                for line in framer.feed(chunk):
                    self.bytes += len(line)
                    event = orjson.loads(line)
                    if event["type"] in ("BOOKMARK", "ERROR"):
                        self.bookmarks += 1
                        continue
                    meta = event["object"]["metadata"]
                    ns = meta.get("namespace")
                    where = "mesh" if ns == self.mesh_ns else "plain" if ns == self.plain_ns else "other"
                    self.counts[where] += 1
                    if event["type"] == "DELETED":
                        self.deleted.add(meta["name"])


class ClusterRun:
    def __init__(self, settings: ClusterSettings, out: Path, api: Api) -> None:
        self.settings = settings
        self.out = out
        self.api = api
        self.bench_id = secrets.token_hex(4)
        base = settings.namespace or f"discofilter-bench-{self.bench_id}"
        self.mesh_ns, self.plain_ns = base, f"{base}-plain"
        self.created_namespaces: list[str] = []
        self.pods: dict[str, str] = {}  # name -> namespace, while they exist
        self.stop = asyncio.Event()
        self.writes = 0

    async def create_namespaces(self) -> None:
        for ns in (self.mesh_ns, self.plain_ns):
            if await self.api.request("GET", f"/api/v1/namespaces/{ns}") is not None:
                raise ConfigError(
                    f"namespace {ns!r} already exists: the benchmark only writes into namespaces it creates"
                )
        for ns, role in ((self.mesh_ns, "mesh"), (self.plain_ns, "plain")):
            labels = {ID_LABEL: self.bench_id, ROLE_LABEL: role}
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
            await self.api.request("POST", "/api/v1/namespaces", body)
            self.created_namespaces.append(ns)

    async def create_pod(self, role: str) -> str:
        ns = self.mesh_ns if role == "mesh" else self.plain_ns
        deadline = time.monotonic() + 15
        while True:
            try:
                pod = await self.api.request(
                    "POST", f"/api/v1/namespaces/{ns}/pods", scratch_pod(role, self.bench_id)
                )
                break
            except BenchError as exc:
                # A fresh namespace's default ServiceAccount appears a moment after it; admission waits.
                if "serviceaccount" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        name = str(pod["metadata"]["name"])
        self.pods[name] = ns
        self.writes += 1
        return name

    async def delete_pod(self, name: str) -> None:
        ns = self.pods.pop(name, None)
        if ns is not None:
            await self.api.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}?gracePeriodSeconds=0")
            self.writes += 1

    async def churn(self) -> None:
        """Create pods at ``pods_per_s`` (a ``mesh_fraction`` share in the mesh namespace), relabel each
        once (MODIFIED) and delete it two seconds later."""
        rng = random.Random(self.bench_id)
        interval = 1.0 / self.settings.pods_per_s
        end = time.monotonic() + self.settings.seconds
        born: list[tuple[float, str]] = []
        while not self.stop.is_set() and time.monotonic() < end:
            role = "mesh" if rng.random() < self.settings.mesh_fraction else "plain"
            name = await self.create_pod(role)
            patch = {"metadata": {"labels": {"bench.discofilter.io/stage": "relabelled"}}}
            path = f"/api/v1/namespaces/{self.pods[name]}/pods/{name}"
            await self.api.request("PATCH", path, patch, "application/merge-patch+json")
            self.writes += 1
            born.append((time.monotonic(), name))
            while born and born[0][0] < time.monotonic() - 2.0:
                await self.delete_pod(born.pop(0)[1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), interval)

    async def cleanup(self) -> list[str]:
        """Delete what this run created, checking each namespace's id label first. Returns problems."""
        problems: list[str] = []
        for name in list(self.pods):
            try:
                await self.delete_pod(name)
            except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                problems.append(f"pod {name}: {exc}")
        for ns in self.created_namespaces:
            try:
                obj = await self.api.request("GET", f"/api/v1/namespaces/{ns}")
                if obj is None:
                    continue
                if (obj["metadata"].get("labels") or {}).get(ID_LABEL) != self.bench_id:
                    problems.append(f"namespace {ns} does not carry {ID_LABEL}={self.bench_id}: left alone")
                    continue
                await self.api.request("DELETE", f"/api/v1/namespaces/{ns}")
            except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                problems.append(f"namespace {ns}: {exc}")
        return problems


async def run_cluster(settings: ClusterSettings, out: Path) -> int:
    upstream = await load_upstream(UpstreamSettings(kubeconfig=settings.kubeconfig, context=settings.context))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        run = ClusterRun(settings, out, Api(upstream, session))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, run.stop.set)
        df: Proc | None = None
        result: dict[str, Any] = {}
        try:
            await run.create_namespaces()
            print(
                f"[bench] created namespaces {run.mesh_ns}, {run.plain_ns} (id {run.bench_id})",
                file=sys.stderr,
                flush=True,
            )
            selector = f"{ID_LABEL}={run.bench_id},{ROLE_LABEL}=mesh"
            extra = ["--upstream-credentials"] + (["--context", settings.context] if settings.context else [])
            df, df_url = await start_discofilter(
                "cluster-discofilter",
                Path(settings.kubeconfig),
                out / "logs",
                selectors=(selector,),
                extra=extra,
            )
            result = await _measure(run, upstream, session, df_url)
        finally:
            if df is not None:
                await df.stop()
            problems = await run.cleanup()
            await upstream.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        result["cleanup_problems"] = problems
        (out / "cluster-results.json").write_text(json.dumps(result, indent=2) + "\n")
        _print(result)
        if problems:
            raise BenchError("cleanup incomplete: " + "; ".join(problems))
        return 130 if run.stop.is_set() else 0


async def _measure(
    run: ClusterRun, upstream: Upstream, session: aiohttp.ClientSession, df_url: str
) -> dict[str, Any]:
    listing = await run.api.request("GET", "/api/v1/pods?limit=1")
    rv = listing["metadata"]["resourceVersion"]
    query = f"/api/v1/pods?watch=1&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=600"
    direct = Watcher("direct", run.mesh_ns, run.plain_ns)
    via = Watcher("discofilter", run.mesh_ns, run.plain_ns)
    auth = await upstream.authorization()
    headers = {"Accept": "application/json", **({"Authorization": auth} if auth else {})}
    tasks = [
        asyncio.create_task(direct.run(session, upstream.base_url + query, headers, upstream.own_ssl)),
        asyncio.create_task(via.run(session, df_url + query, {"Accept": "application/json"}, None)),
    ]
    t0 = time.monotonic()
    try:
        await run.churn()
        if not run.stop.is_set():
            # A last pod, deleted at once: when both clients have seen it go, they have seen everything.
            marker = await run.create_pod("mesh")
            await run.delete_pod(marker)
            deadline = time.monotonic() + _CATCH_UP_SECONDS
            while not all(marker in w.deleted for w in (direct, via)) and time.monotonic() < deadline:
                if any(t.done() for t in tasks) or run.stop.is_set():
                    break
                await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, BenchError):
                await t
    return {
        "bench_id": run.bench_id,
        "namespaces": [run.mesh_ns, run.plain_ns],
        "seconds": time.monotonic() - t0,
        "writes": run.writes,
        "interrupted": run.stop.is_set(),
        "direct": {"events": direct.counts, "bytes": direct.bytes, "bookmarks": direct.bookmarks},
        "discofilter": {"events": via.counts, "bytes": via.bytes, "bookmarks": via.bookmarks},
        "mesh_events_match": direct.counts["mesh"] == via.counts["mesh"],
        "only_mesh_through_discofilter": via.counts["plain"] == 0 and via.counts["other"] == 0,
    }


def _print(r: dict[str, Any]) -> None:
    if "direct" not in r:
        return
    d, v = r["direct"], r["discofilter"]
    print(
        f"real cluster: {r['writes']} writes in {r['seconds']:.1f} s "
        f"(namespaces {', '.join(r['namespaces'])})"
    )
    for name, x in (("direct", d), ("discofilter", v)):
        e = x["events"]
        print(
            f"  {name:12s} pod events: mesh {e['mesh']}, plain {e['plain']}, "
            f"rest of the cluster {e['other']}; {x['bytes'] / 1e3:.1f} KB"
        )
    print(
        f"  mesh events identical: {'yes' if r['mesh_events_match'] else 'NO'}; "
        f"nothing else through discofilter: {'yes' if r['only_mesh_through_discofilter'] else 'NO'}; "
        f"cleanup: {'complete' if not r['cleanup_problems'] else r['cleanup_problems']}"
    )

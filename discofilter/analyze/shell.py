"""The asyncio shell of ``discofilter analyze``: list, then watch, for one window; nothing else.

What it asks the API server, and why it stays light:
- one LIST of namespaces (JSON: membership needs labels) and one of each of the four kinds, then one WATCH
  each, from the LIST's resourceVersion, with ``allowWatchBookmarks`` and a ``timeoutSeconds`` that
  outlasts the window: one long request per collection, as istiod's informers make;
- the four kinds ask ``Accept: application/vnd.kubernetes.protobuf, application/json``, what istiod sends
  since Istio 1.18 (istio ``pkg/kube/util.go``), so the format counted is the one istiod would get; the
  pod requests carry istiod's ``fieldSelector=status.phase!=Failed``;
- ``Accept-Encoding: identity``: the bytes counted are the bodies as the API server framed them. (It gzips
  only non-watch answers over 128 KiB, and a client decodes the uncompressed bytes anyway.)
- no LIST after the first, unless a watch says 410 Expired: then one relist with ``resourceVersion=""``
  (client-go's reflector does the same after an expiry), counted in the report. A watch the server ends,
  or a dropped connection, resumes from the last resourceVersion seen, with client-go's backoff.

The first LISTs decide whether the analysis can run at all: an unreachable server or a refused LIST raises
``UpstreamError`` (one line, exit 2). After that, trouble is reported on stderr and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp
import orjson

from discofilter.analyze.accounting import KINDS, Tally, WatchCounter, format_of, parse_list
from discofilter.analyze.report import Context, DecodeRates, build_report
from discofilter.core.framing import LineFramer
from discofilter.core.membership import Membership
from discofilter.core.meshconfig import EVERY_NAMESPACE, MeshSelectors, parse_mesh_config
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, SelectorSet
from discofilter.errors import ConfigError, StreamFramingError, UpstreamError
from discofilter.settings import UpstreamSettings
from discofilter.tracker import Backoff
from discofilter.upstream import Upstream, load_upstream, make_session

log = logging.getLogger("discofilter.analyze")

PATHS = {
    "pods": "/api/v1/pods",
    "services": "/api/v1/services",
    "endpoints": "/api/v1/endpoints",
    "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
}
ISTIOD_ACCEPT = "application/vnd.kubernetes.protobuf, application/json"
POD_FIELD_SELECTOR = "status.phase!=Failed"
RBAC_HINT = (
    "analyze needs list and watch on namespaces, pods, services, endpoints and endpointslices "
    "(kubectl apply -f manifests/analyze/)"
)


@dataclass(frozen=True, slots=True)
class AnalyzeSettings:
    kubeconfig: str | None = None
    context: str | None = None
    duration_seconds: float = 300.0
    """Five minutes: several bookmark periods (60 s) and, at the ClusterLoader2 load test's 10-20 pod
    churn per second, thousands of events; short enough to run before a change window."""
    selectors: SelectorSet | None = None
    """--namespace-selector, if given: it wins over the mesh config's discoverySelectors, as in serve."""
    mesh_config_path: str | None = None
    mesh_configmap: tuple[str, str] | None = None
    mesh_config_key: str = "mesh"
    """The ConfigMap key istiod reads (kubemesh.NewConfigMapWatcher is called with key "mesh")."""
    progress_seconds: float = 1.0
    """Progress line period on a terminal; ten times that when stderr is not one (logs, CI)."""
    watch_grace_seconds: int = 60
    """Watches ask ``timeoutSeconds`` = the window plus this, so the server does not end them early."""
    rates: DecodeRates = field(default_factory=DecodeRates)


class Analyzer:
    def __init__(
        self, settings: AnalyzeSettings, *, stop: asyncio.Event, progress: IO[str] | None = None
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.progress = progress if progress is not None else sys.stderr
        self.tally = Tally()
        self.membership = Membership(settings.selectors or DEFAULT_MESH_SELECTORS)
        self.mesh: MeshSelectors | None = None
        self.mesh_origin: str | None = None
        self.upstream: Upstream | None = None
        self.session: aiohttp.ClientSession | None = None
        self.headers: dict[str, str] = {}
        self.started = 0.0
        self.window_started: float | None = None

    # -- requests ---------------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        assert self.upstream is not None
        return self.upstream.base_url + path

    async def _get(self, path: str, params: dict[str, str], accept: str) -> aiohttp.ClientResponse:
        assert self.session is not None and self.upstream is not None
        headers = dict(self.headers, Accept=accept)
        auth = await self.upstream.authorization()
        if auth:
            headers["Authorization"] = auth
        try:
            return await self.session.get(
                self._url(path), params=params, headers=headers, ssl=self.upstream.own_ssl
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"cannot reach the API server at {self.upstream.base_url}: {exc}") from exc

    async def _read_ok(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        async with resp:
            body = await resp.read()
            if resp.status == 200:
                return body
        message = ""
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            message = str(orjson.loads(body).get("message") or "")
        hint = f" ({RBAC_HINT})" if resp.status in (401, 403) else ""
        raise UpstreamError(
            f"{what}: {resp.status} {resp.reason}{': ' + message if message else ''}{hint}",
            status=resp.status,
        )

    # -- the mesh config --------------------------------------------------------------------------------

    async def load_mesh_config(self) -> None:
        s = self.settings
        if s.mesh_config_path is not None:
            try:
                with open(s.mesh_config_path, "rb") as f:
                    text = f.read()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read mesh config {s.mesh_config_path}: {exc.strerror or exc}"
                ) from exc
            self.mesh = parse_mesh_config(text, source=s.mesh_config_path)
            self.mesh_origin = s.mesh_config_path
        elif s.mesh_configmap is not None:
            ns, name = s.mesh_configmap
            self.mesh_origin = f"ConfigMap {ns}/{name}"
            resp = await self._get(f"/api/v1/namespaces/{ns}/configmaps/{name}", {}, "application/json")
            if resp.status == 404:
                resp.release()
                # istiod then runs on its default mesh config, which discovers every namespace.
                self.mesh = EVERY_NAMESPACE
            else:
                doc = orjson.loads(await self._read_ok(resp, f"GET {self.mesh_origin}"))
                value = (doc.get("data") or {}).get(s.mesh_config_key)
                if not isinstance(value, str):
                    raise ConfigError(f"{self.mesh_origin} has no key {s.mesh_config_key!r}")
                self.mesh = parse_mesh_config(value, source=self.mesh_origin)
        if self.mesh is not None and s.selectors is None:
            # As serve: without --namespace-selector, the mesh config's discoverySelectors decide.
            self.membership.set_selectors(self.mesh.selectors)

    # -- LIST -------------------------------------------------------------------------------------------

    async def list_namespaces(self) -> str:
        resp = await self._get("/api/v1/namespaces", {}, "application/json")
        body = await self._read_ok(resp, "LIST namespaces")
        doc = orjson.loads(body)
        rv = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        self.membership.replace(doc.get("items") or [], rv)
        return rv

    def _params(self, kind: str) -> dict[str, str]:
        return {"fieldSelector": POD_FIELD_SELECTOR} if kind == "pods" else {}

    async def list_kind(self, kind: str, *, first: bool) -> str:
        # The first LIST may come from the watch cache (client-go starts at resourceVersion "0"); after a
        # 410 client-go asks for a consistent read ("").
        params = dict(self._params(kind), resourceVersion="0" if first else "")
        resp = await self._get(PATHS[kind], params, ISTIOD_ACCEPT)
        fmt = format_of(resp.headers.get("Content-Type"))
        body = await self._read_ok(resp, f"LIST {kind}")
        answer = parse_list(body, fmt, kind=kind)
        self.tally.add_list(kind, len(body), answer.items, fmt, self.membership)
        return answer.resource_version

    # -- WATCH ------------------------------------------------------------------------------------------

    def _timeout(self) -> str:
        return str(int(self.settings.duration_seconds) + self.settings.watch_grace_seconds)

    async def watch_kind(self, kind: str, rv: str) -> None:
        backoff = Backoff(0.8, 30.0)
        k = self.tally.kinds[kind]
        while True:
            expired = False
            params = dict(self._params(kind), watch="1", allowWatchBookmarks="true", resourceVersion=rv)
            params["timeoutSeconds"] = self._timeout()
            try:
                resp = await self._get(PATHS[kind], params, ISTIOD_ACCEPT)
                k.watches += 1
                async with resp:
                    if resp.status == 410:
                        expired = True
                    elif resp.status != 200:
                        raise UpstreamError(f"WATCH {kind}: {resp.status} {resp.reason}", status=resp.status)
                    else:
                        fmt = format_of(resp.headers.get("Content-Type"))
                        k.watch_formats.add(fmt)
                        counter = WatchCounter(kind, fmt, self.tally, self.membership)
                        opened, got_any = time.monotonic(), False
                        async for chunk in resp.content.iter_any():
                            got_any = True
                            for seen in counter.feed(chunk):
                                if seen.type == "ERROR":
                                    if seen.error_code == 410:
                                        expired = True
                                        break
                                    raise UpstreamError(f"WATCH {kind}: ERROR event {seen.error_code}")
                                if seen.resource_version:
                                    rv = seen.resource_version
                            if expired:
                                break
                        _short_watch_guard(kind, opened, got_any)
                backoff.reset()
            except (UpstreamError, StreamFramingError, aiohttp.ClientError, OSError) as exc:
                delay = backoff.next()
                self._say(f"watch of {kind} failed ({exc}); resuming in {delay:.1f} s")
                await asyncio.sleep(delay)
                continue
            if expired:
                self._say(f"watch of {kind}: 410 Expired, relisting (counted in the report)")
                rv = await self._relist(kind, backoff)

    async def _relist(self, kind: str, backoff: Backoff) -> str:
        while True:
            try:
                return await self.list_kind(kind, first=False)
            except (UpstreamError, StreamFramingError) as exc:
                delay = backoff.next()
                self._say(f"relist of {kind} failed ({exc}); retrying in {delay:.1f} s")
                await asyncio.sleep(delay)

    async def watch_namespaces(self, rv: str) -> None:
        backoff = Backoff(0.8, 30.0)
        while True:
            params = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": rv}
            params["timeoutSeconds"] = self._timeout()
            expired = False
            try:
                resp = await self._get("/api/v1/namespaces", params, "application/json")
                async with resp:
                    if resp.status == 410:
                        expired = True
                    elif resp.status != 200:
                        raise UpstreamError(
                            f"WATCH namespaces: {resp.status} {resp.reason}", status=resp.status
                        )
                    else:
                        opened = time.monotonic()
                        new_rv, expired = await self._namespace_stream(resp, rv)
                        _short_watch_guard("namespaces", opened, new_rv != rv or expired)
                        rv = new_rv
                backoff.reset()
            except (UpstreamError, StreamFramingError, aiohttp.ClientError, OSError, ValueError) as exc:
                delay = backoff.next()
                self._say(f"watch of namespaces failed ({exc}); resuming in {delay:.1f} s")
                await asyncio.sleep(delay)
                continue
            if expired:
                while True:
                    try:
                        rv = await self.list_namespaces()
                        break
                    except UpstreamError as exc:
                        delay = backoff.next()
                        self._say(f"relist of namespaces failed ({exc}); retrying in {delay:.1f} s")
                        await asyncio.sleep(delay)

    async def _namespace_stream(self, resp: aiohttp.ClientResponse, rv: str) -> tuple[str, bool]:
        """Apply one namespace watch to membership. Returns (the RV to resume from, whether it expired)."""
        events = self.tally.namespace_events
        framer = LineFramer()
        async for chunk in resp.content.iter_any():
            for line in framer.feed(chunk):
                event = orjson.loads(line)
                etype, obj = str(event.get("type")), event.get("object") or {}
                events[etype] = events.get(etype, 0) + 1
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        return rv, True
                    raise UpstreamError(f"WATCH namespaces: ERROR event {obj.get('code')}")
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    self.membership.apply(etype, obj)
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if isinstance(new_rv, str) and new_rv:
                    rv = new_rv
        return rv, False

    # -- the window -------------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self.progress.isatty():
            self.progress.write("\r\x1b[K")
        self.progress.write(f"discofilter analyze: {text}\n")
        self.progress.flush()

    async def _progress_loop(self) -> None:
        tty = self.progress.isatty()
        period = self.settings.progress_seconds * (1 if tty else 10)
        while True:
            await asyncio.sleep(period)
            self._progress_line(tty)

    def _progress_line(self, tty: bool) -> None:
        assert self.window_started is not None
        left = max(0.0, self.settings.duration_seconds - (time.monotonic() - self.window_started))
        t = self.tally
        share = t.outside_events / t.events if t.events else 0.0
        line = (
            f"analyze: {int(left) // 60}m{int(left) % 60:02d}s left, {t.events} events so far, "
            f"{t.outside_events} outside the mesh ({share:.0%})"
        )
        self.progress.write(f"\r\x1b[K{line}" if tty else f"{line}\n")
        self.progress.flush()

    async def run(self) -> dict[str, Any]:
        s = self.settings
        upstream_settings = UpstreamSettings(kubeconfig=s.kubeconfig, context=s.context, pool_size=16)
        self.upstream = await load_upstream(upstream_settings)
        self.session = make_session(upstream_settings)
        self.headers = {"Accept-Encoding": "identity", "User-Agent": "discofilter-analyze"}
        try:
            return await self._run()
        finally:
            await self.session.close()
            await self.upstream.close()

    async def _run(self) -> dict[str, Any]:
        s = self.settings
        self.started = time.monotonic()
        await self.load_mesh_config()
        ns_rv = await self.list_namespaces()
        rvs = {kind: await self.list_kind(kind, first=True) for kind in KINDS}
        cpu0 = _cpu_seconds()
        self.window_started = time.monotonic()
        tasks = [asyncio.create_task(self.watch_namespaces(ns_rv))]
        tasks += [asyncio.create_task(self.watch_kind(kind, rvs[kind])) for kind in KINDS]
        tasks.append(asyncio.create_task(self._progress_loop()))
        ended_early = False
        try:
            remaining = s.duration_seconds - (time.monotonic() - self.window_started)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, remaining)):
                    await self.stop.wait()
                    ended_early = True
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        seconds = time.monotonic() - self.window_started
        if self.progress.isatty():
            self.progress.write("\n")
        cpu = _cpu_seconds() - cpu0
        received = self.tally.events + sum(sum(k.other_events.values()) for k in self.tally.kinds.values())
        usage = {
            "cpu_seconds": round(cpu, 3),
            "cpu_seconds_total": round(_cpu_seconds(), 3),
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "events_received": received,
            "events_per_second": round(received / seconds, 2) if seconds > 0 else 0.0,
            "cpu_us_per_event": round(cpu * 1e6 / received, 1) if received else 0.0,
            "cpu_share_of_one_core": round(cpu / seconds, 4) if seconds > 0 else 0.0,
        }
        return build_report(self.tally, self._context(seconds, ended_early, usage), s.rates)

    def _context(self, seconds: float, ended_early: bool, usage: dict[str, float]) -> Context:
        assert self.upstream is not None
        m = self.membership
        members = m.members
        istiod_only: frozenset[str] = frozenset()
        discofilter_only: frozenset[str] = frozenset()
        mesh_text = None
        if self.mesh is not None:
            mesh_text = f"{self.mesh.describe()} from {self.mesh_origin}"
            istiod = m.matching(self.mesh.selectors)
            istiod_only = istiod - members
            discofilter_only = members - istiod
        if self.settings.selectors is not None:
            selectors = f"{self.settings.selectors} (--namespace-selector)"
        elif self.mesh is not None:
            selectors = f"discoverySelectors of {self.mesh_origin}"
        else:
            selectors = f"{DEFAULT_MESH_SELECTORS} (serve's default)"
        return Context(
            server=self.upstream.base_url,
            selectors=selectors,
            mesh_config=mesh_text,
            planned_seconds=self.settings.duration_seconds,
            seconds=seconds,
            ended_early=ended_early,
            members=members,
            known_namespaces=m.known,
            istiod_only=istiod_only,
            discofilter_only=discofilter_only,
            mesh_selects_everything=self.mesh is not None and self.mesh.selects_everything,
            self_usage=usage,
        )


def _short_watch_guard(kind: str, opened: float, got_any: bool) -> None:
    """client-go's VeryShortWatchError: a watch that ends within a second with nothing in it means
    trouble (a proxy or server that ends every watch at once); back off rather than spin."""
    if not got_any and time.monotonic() - opened < 1.0:
        raise UpstreamError(f"WATCH {kind}: watch lasted less than a second and no items received")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


__all__ = ["AnalyzeSettings", "Analyzer"]

"""MeshWatcher: follows Istio's mesh config (a mounted file or the istio ConfigMap) while running.

Precedence, decided once at start-up:
- ``--namespace-selector`` given: those selectors win (the operator said so explicitly). The mesh config
  is still followed, only to warn, once per namespace per change, about every namespace istiod's
  discoverySelectors admit but discofilter excludes: istiod believes that namespace is in the mesh, yet
  none of its pods, services or endpoints will ever reach it.
- Otherwise the mesh config's discoverySelectors are discofilter's selectors. None (or an empty
  selector) means istiod discovers every namespace, so discofilter keeps everything and says that it
  then saves nothing: it must never cut off what istiod would see.

A change reaches open watches as a namespace label change does: ``Membership.set_selectors`` returns the
namespaces that flipped, and they go to the same ``on_change`` as the tracker's (the proxy's watch
registry ends the affected watches with 410, clients relist).

Bad versions behave as in istiod (``kubemesh.NewConfigMapWatcher`` "keep the last known config"): an
unreadable or invalid new version keeps the last good selectors and is logged at ERROR. At start-up an
invalid file stops the process (``load_file``), as istiod does not start on one either; a missing, keyless
or invalid ConfigMap leaves istiod on its defaults, which discover every namespace, so discofilter keeps
everything too. A deleted ConfigMap is istiod's default config again (``ReadConfigMap(nil)``).

Files are polled (stat-free read and compare): kubelet updates a mounted ConfigMap by swapping a
``..data`` symlink, which inotify on the file itself never sees. The ConfigMap is listed and watched by
name (fieldSelector ``metadata.name``) so RBAC can grant just that one with ``resourceNames``, with the
tracker's reflector rules (resourceVersion resume, 410 -> relist, jittered backoff).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol, cast

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, ApiException, CoreV1Api

from discofilter.core.framing import LineFramer
from discofilter.core.membership import Membership
from discofilter.core.meshconfig import EVERY_NAMESPACE, MeshSelectors, parse_mesh_config
from discofilter.errors import (
    MAX_ERROR_BODY,
    ConfigError,
    DiscofilterError,
    ExpiredError,
    MeshConfigError,
    UpstreamError,
    raise_for_status,
)
from discofilter.settings import MeshConfigSettings, NamespaceWatchSettings
from discofilter.tracker import Backoff, RawDict

log = logging.getLogger("discofilter.meshwatch")


class ConfigMapSource(Protocol):
    async def list(self) -> tuple[list[RawDict], str]:
        """A consistent LIST of the one ConfigMap (0 or 1 items) and the list resourceVersion."""
        ...

    def watch(self, resource_version: str, timeout_seconds: int) -> AsyncIterator[tuple[str, RawDict]]:
        """WATCH the one ConfigMap from ``resource_version`` with bookmarks: yields (type, object)."""
        ...


class KubernetesConfigMapSource:
    """kubernetes-asyncio with discofilter's own credentials; bodies read raw, as the tracker does."""

    def __init__(self, api_client: ApiClient, namespace: str, name: str) -> None:
        self._api = CoreV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self._selector = f"metadata.name={name}"

    def _hint(self, status: int | None) -> str:
        if status != 403:
            return ""
        return f" (discofilter needs list and watch on configmaps {self.name!r} in {self.namespace!r})"

    def _error(self, exc: ApiException) -> UpstreamError:
        cls = ExpiredError if exc.status == 410 else UpstreamError
        hint = self._hint(exc.status)
        return cls(f"ConfigMap list/watch failed: {exc.status} {exc.reason}{hint}", status=exc.status)

    async def list(self) -> tuple[list[RawDict], str]:
        try:
            resp = cast(
                aiohttp.ClientResponse,
                await self._api.list_namespaced_config_map(
                    self.namespace, field_selector=self._selector, resource_version="", _preload_content=False
                ),
            )
        except ApiException as exc:
            raise self._error(exc) from exc
        async with resp:
            body = await resp.read()
            raise_for_status(resp.status, resp.reason, body, "ConfigMap list/watch", self._hint(resp.status))
        doc = orjson.loads(body)
        return list(doc.get("items") or []), str(doc.get("metadata", {}).get("resourceVersion", ""))

    async def watch(self, resource_version: str, timeout_seconds: int) -> AsyncIterator[tuple[str, RawDict]]:
        try:
            resp = cast(
                aiohttp.ClientResponse,
                await self._api.list_namespaced_config_map(
                    self.namespace,
                    field_selector=self._selector,
                    watch=True,
                    allow_watch_bookmarks=True,
                    resource_version=resource_version,
                    timeout_seconds=timeout_seconds,
                    _preload_content=False,
                ),
            )
        except ApiException as exc:
            raise self._error(exc) from exc
        framer = LineFramer()
        async with resp:
            if resp.status >= 300:
                body = await resp.content.read(MAX_ERROR_BODY)
                raise_for_status(
                    resp.status, resp.reason, body, "ConfigMap list/watch", self._hint(resp.status)
                )
            async for chunk in resp.content.iter_any():
                for line in framer.feed(chunk):
                    event = orjson.loads(line)
                    yield str(event.get("type")), event.get("object") or {}
            framer.feed_eof()


class MeshWatcher:
    """Applies the mesh config's discoverySelectors to ``membership`` (or only warns, if flags win).

    ``ready`` is set once discofilter's own selectors are known: at once when flags win or a file was
    loaded at start-up, after the first ConfigMap LIST otherwise. The tracker waits for it, so no
    filtered request is ever answered with selectors that are about to be replaced.
    """

    def __init__(
        self,
        membership: Membership,
        settings: MeshConfigSettings,
        watch: NamespaceWatchSettings,
        on_change: Callable[[frozenset[str]], None],
        *,
        source: ConfigMapSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (settings.path is None) == (source is None):
            raise ConfigError("a mesh config comes from either a file or a ConfigMap, exactly one")
        self.membership = membership
        self.settings = settings
        self.watch_settings = watch
        self.on_change = on_change
        self.source = source
        self.clock = clock
        ns, name = settings.configmap or ("", "")
        self.origin = settings.path if settings.path is not None else f"ConfigMap {ns}/{name}"
        self.flags_win = settings.namespace_selectors_given
        self.ready = asyncio.Event()
        self.current: MeshSelectors | None = None
        """istiod's selectors as last read successfully; None until the first good version."""
        self.istiod_only_namespaces = 0
        """Namespaces istiod's discoverySelectors admit but discofilter's flags exclude (for metrics)."""
        self.versions_applied = 0
        self.versions_rejected = 0
        self.backoff = Backoff(watch.backoff_initial_seconds, watch.backoff_max_seconds)
        self._last_text: bytes | str | None = None
        self._read_problem: str | None = None
        self._warned: frozenset[str] = frozenset()
        self._checked_revision = -1
        if self.flags_win:
            log.info(
                "--namespace-selector given: it wins over the discoverySelectors of %s, which discofilter "
                "follows only to warn about namespaces istiod would expect but never gets",
                self.origin,
            )
            self.ready.set()

    def describe(self) -> str:
        if self.flags_win:
            return f"{self.membership.selectors} (flags; {self.origin} followed for warnings)"
        if self.current is None:
            return f"from {self.origin} (not read yet)"
        return f"{self.current.describe()} from {self.origin}"

    def load_file(self) -> None:
        """Read the mesh config file now, at start-up: ``ConfigError`` if it is unreadable or invalid."""
        path = self.settings.path
        assert path is not None
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read mesh config {path}: {exc.strerror or exc}") from exc
        mesh = parse_mesh_config(data, source=path)
        self._last_text = data
        self.apply(mesh)

    # -- the change path (no awaits) ----------------------------------------------------------------

    def apply(self, mesh: MeshSelectors) -> None:
        """Take one good mesh config version."""
        if mesh == self.current:
            self.ready.set()
            return
        self.current = mesh
        self.versions_applied += 1
        self._warned = frozenset()  # a new istiod view: every mismatch is news again
        self._checked_revision = -1
        if self.flags_win:
            log.info("istiod's mesh config %s now has %s", self.origin, mesh.describe())
        else:
            changed = self.membership.set_selectors(mesh.selectors)
            log.info("discofilter now follows %s of %s", mesh.describe(), self.origin)
            if mesh.selects_everything:
                log.warning(
                    "%s: istiod discovers every namespace, so discofilter keeps every namespace's objects "
                    "and saves istiod nothing; set discoverySelectors to scope the mesh",
                    self.origin,
                )
            if changed:
                log.info(
                    "mesh membership changed by discoverySelectors: %s (now %d of %d namespaces)",
                    ", ".join(sorted(changed)),
                    len(self.membership),
                    self.membership.known,
                )
                self.on_change(changed)
        self.check()
        self.ready.set()

    def reject(self, problem: str) -> None:
        """Take one unreadable or invalid version: keep the last good one, say so loudly."""
        self.versions_rejected += 1
        if self.current is not None or self.settings.path is not None:
            log.error("%s; keeping the last good discoverySelectors: %s", problem, self.describe())
            return
        # First ConfigMap version bad: istiod then stays on its defaults (kubemesh starts its watcher
        # from DefaultMeshConfig and skips bad versions), which discover every namespace.
        log.error("%s; istiod falls back to its default mesh config, and so does discofilter", problem)
        self.apply(EVERY_NAMESPACE)

    def take_text(self, text: bytes | str) -> None:
        """Take one version's mesh config text; the same text twice in a row is one version."""
        if text == self._last_text:
            return
        self._last_text = text
        try:
            mesh = parse_mesh_config(text, source=self.origin)
        except MeshConfigError as exc:
            self.reject(exc.message)
            return
        self.apply(mesh)

    def take_configmap(self, obj: RawDict | None) -> None:
        if obj is None:
            log.warning(
                "%s does not exist: istiod then uses its default mesh config, which discovers "
                "every namespace",
                self.origin,
            )
            self._last_text = None
            self.apply(EVERY_NAMESPACE)
            return
        data = obj.get("data") or {}
        text = data.get(self.settings.key) if isinstance(data, dict) else None
        if not isinstance(text, str):
            self._last_text = None
            self.reject(f"{self.origin} has no key {self.settings.key!r}")
            return
        self.take_text(text)

    def check(self) -> None:
        """Warn about namespaces istiod admits but discofilter's flags exclude (flags win only)."""
        if not self.flags_win or self.current is None or not self.membership.synced:
            return
        if self.membership.revision == self._checked_revision:
            return
        self._checked_revision = self.membership.revision
        excluded = self.membership.matching(self.current.selectors) - self.membership.members
        news = sorted(excluded - self._warned)
        cap = self.settings.max_warnings_per_check
        for name in news[:cap]:
            log.warning(
                "namespace %s: istiod's discoverySelectors (%s) admit it but --namespace-selector excludes "
                "it, so istiod will never see its pods, services or endpoints",
                name,
                self.origin,
            )
        if len(news) > cap:
            log.warning(
                "... and %d more namespaces istiod admits but discofilter excludes (%d in all)",
                len(news) - cap,
                len(excluded),
            )
        self._warned = frozenset(excluded)
        self.istiod_only_namespaces = len(excluded)

    # -- the loops ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run forever: follow the source, and recheck the flags/istiod mismatch periodically."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow_file() if self.source is None else self._follow_configmap())
            if self.flags_win:
                tg.create_task(self._check_loop())

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_seconds)
            self.check()

    async def _follow_file(self) -> None:
        path = self.settings.path
        assert path is not None
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                # Off the loop: a mount can be a network filesystem.
                text = await asyncio.to_thread(Path(path).read_bytes)
            except OSError as exc:
                problem = f"cannot read mesh config {path}: {exc.strerror or exc}"
                if problem != self._read_problem:  # once per problem, not once per poll
                    self._read_problem = problem
                    self.reject(problem)
                continue
            if self._read_problem is not None:
                log.info("mesh config %s is readable again", path)
                self._read_problem = None
            self.take_text(text)

    async def _follow_configmap(self) -> None:
        source = self.source
        assert source is not None
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    items, rv = await source.list()
                    self.take_configmap(items[0] if items else None)
                rv = await self._watch_once(source, rv)
                self.backoff.reset()
            except ExpiredError:
                rv = None
            except (DiscofilterError, aiohttp.ClientError, OSError, ValueError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                delay = self.backoff.next()
                log.warning("%s: list/watch failed (%s); retrying in %.1f s", self.origin, exc, delay)
                await asyncio.sleep(delay)

    async def _watch_once(self, source: ConfigMapSource, rv: str) -> str | None:
        """One WATCH from ``rv``. Returns the RV to resume from, or None to relist."""
        started = self.clock()
        got_any = False
        stream = source.watch(rv, self.watch_settings.timeout_seconds)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.watch_settings.inactivity_seconds):
                        etype, obj = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    return rv
                got_any = True
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise UpstreamError(f"{self.origin}: watch ERROR event: {obj.get('message')}")
                if etype == "DELETED":
                    self.take_configmap(None)
                elif etype in ("ADDED", "MODIFIED"):
                    self.take_configmap(obj)
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if isinstance(new_rv, str) and new_rv:
                    rv = new_rv
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        if not got_any and self.clock() - started < self.watch_settings.short_watch_seconds:
            raise UpstreamError(f"{self.origin}: watch lasted less than a second and no items received")
        return rv

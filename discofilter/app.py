"""Builds the aiohttp applications: the proxy listener and the health listener.

Errors become HTTP answers here and only here (``error_middleware``): every ``DiscofilterError`` turns
into a Kubernetes ``Status`` body with the error's ``status_hint``, so clients such as client-go and
kubectl print a real message instead of failing to decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from kubernetes_asyncio.client import ApiClient

from discofilter.core.membership import Membership
from discofilter.errors import DiscofilterError, NotReadyError
from discofilter.kubeapi import status_body
from discofilter.meshwatch import ConfigMapSource, KubernetesConfigMapSource, MeshWatcher
from discofilter.metrics import build_metrics_app, make_request_metrics_middleware, not_ready_reason
from discofilter.proxy import Proxy, _Abort
from discofilter.resolver import KubernetesNamespaceLookup, ListingLookup, NamespaceLookup, NamespaceResolver
from discofilter.settings import Settings
from discofilter.tracker import KubernetesNamespaceSource, NamespaceSource, NamespaceTracker
from discofilter.upstream import Upstream, make_session

log = logging.getLogger("discofilter.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _status_response(code: int, reason: str, message: str, *, retry_after: int | None = None) -> web.Response:
    resp = web.Response(status=code, body=status_body(code, reason, message), content_type="application/json")
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def make_error_middleware(retry_after: int) -> Middleware:
    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotReadyError as exc:
            return _status_response(exc.status_hint, exc.reason, exc.message, retry_after=retry_after)
        except DiscofilterError as exc:
            log.warning("%s %s: %s", request.method, request.path, exc.message)
            return _status_response(exc.status_hint, exc.reason, exc.message)
        except web.HTTPException as exc:
            return _status_response(exc.status, exc.reason, exc.text or exc.reason)
        except _Abort:
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError from None

    return error_middleware


@dataclass(slots=True)
class Runtime:
    """What one running discofilter holds; tests reach in here."""

    settings: Settings
    upstream: Upstream
    membership: Membership
    proxy: Proxy
    tracker: NamespaceTracker
    session: aiohttp.ClientSession
    mesh: MeshWatcher | None = None
    """Follows Istio's mesh config when --mesh-config or --mesh-configmap is given."""


async def build_runtime(
    settings: Settings,
    upstream: Upstream,
    *,
    source: NamespaceSource | None = None,
    mesh_source: ConfigMapSource | None = None,
) -> tuple[Runtime, Callable[[], Awaitable[None]]]:
    """Create the session, membership, proxy, tracker and mesh watcher. Returns the runtime and its closer.

    A mesh config file is read here, so an invalid one stops start-up with a ``ConfigError``.
    """
    session = make_session(settings.upstream)
    membership = Membership(settings.selectors, always_kept=settings.istiod_namespace)
    proxy = Proxy(settings, upstream, session, membership)
    api_client: ApiClient | None = None
    if source is None or (settings.mesh.configmap is not None and mesh_source is None):
        api_client = ApiClient(upstream._config)
    lookup: NamespaceLookup
    if source is None:
        assert api_client is not None
        source = KubernetesNamespaceSource(api_client)
        lookup = KubernetesNamespaceLookup(source)
    else:
        lookup = ListingLookup(source)  # an injected source (tests): look up through its LIST
    proxy.resolver = NamespaceResolver(membership, lookup)

    def on_change(changed: frozenset[str]) -> None:
        proxy.registry.on_change(changed)
        proxy.exclusion.on_membership_change(changed)  # a joined namespace leaves the exclusion

    tracker = NamespaceTracker(
        membership,
        source,
        settings.namespaces,
        on_change,
        on_unknown=lambda: log.info("ended %d filtered watches", proxy.registry.end_all("unknown")),
    )
    proxy.await_confirmed = tracker.await_confirmed
    proxy.api_server_answered = tracker.api_server_answered
    mesh: MeshWatcher | None = None
    try:
        if settings.mesh.configmap is not None and mesh_source is None:
            assert api_client is not None
            mesh_source = KubernetesConfigMapSource(api_client, *settings.mesh.configmap)
        if settings.mesh.enabled:
            mesh = MeshWatcher(
                membership,
                settings.mesh,
                settings.namespaces,
                on_change,
                source=mesh_source if settings.mesh.path is None else None,
            )
            if settings.mesh.path is not None:
                mesh.load_file()
    except BaseException:
        await session.close()
        if api_client is not None:
            await api_client.close()
        raise
    runtime = Runtime(settings, upstream, membership, proxy, tracker, session, mesh)

    async def close() -> None:
        await session.close()
        if api_client is not None:
            await api_client.close()
        await upstream.close()

    return runtime, close


def build_proxy_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        middlewares=[
            make_request_metrics_middleware(runtime.proxy),
            make_error_middleware(runtime.settings.watch.not_ready_retry_after_seconds),
        ],
        client_max_size=4 * 1024 * 1024,  # the API server's own request-body limit is 3 MiB
    )
    app.router.add_route("*", "/{tail:.*}", runtime.proxy.handle)
    return app


def build_health_app(runtime: Runtime) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        reason = not_ready_reason(runtime.proxy, runtime.tracker, runtime.membership)
        if reason is not None:
            return web.Response(status=503, text=reason)
        return web.Response(
            text=f"ok: {len(runtime.membership)} mesh namespaces of {runtime.membership.known}\n"
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def build_metrics_listener_app(runtime: Runtime) -> web.Application:
    return build_metrics_app(runtime.proxy, runtime.tracker, runtime.membership, runtime.mesh)


@contextlib.asynccontextmanager
async def tracker_running(runtime: Runtime) -> AsyncIterator[asyncio.Task[None]]:
    async def track() -> None:
        if runtime.mesh is not None:
            # Membership must not sync under selectors the mesh config is about to replace.
            await runtime.mesh.ready.wait()
        await runtime.tracker.run()

    task = asyncio.create_task(track(), name="namespace-tracker")
    replan = asyncio.create_task(runtime.proxy.exclusion.run(), name="exclusion-replan")
    mesh_task = None
    if runtime.mesh is not None:
        mesh_task = asyncio.create_task(runtime.mesh.run(), name="mesh-config")
    runtime.upstream.start_refresh()
    try:
        yield task
    finally:
        for t in (task, mesh_task, replan):
            if t is not None:
                t.cancel()
        for t in (task, mesh_task, replan):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

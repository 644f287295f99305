"""The HTTP shell of the simulated API server: aiohttp handlers around a ``Store``.

Everything that decides *what* to answer lives in the sans-I/O modules (store, watch, selection, tables,
listing, discovery, request); this module authenticates (bearer tokens), authorizes (anonymous users and
``forbidden_users``, with the real 403 wording), routes, and serves reads. Writes are in mutations.py,
watches in streaming.py, the wire format of answers in responses.py.

Every request is recorded in ``app[REQUEST_LOG]`` (raw path and query string, headers) so tests can check
what a proxy forwarded. Bad client input is always answered with a Status, never an exception.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from discofilter.simapi import discovery, mutations, tables
from discofilter.simapi import errors as err
from discofilter.simapi.request import ListOptions, Target, parse_resource_path
from discofilter.simapi.resources import FILTERED_RESOURCES
from discofilter.simapi.responses import (
    ADMIN,
    Context,
    KubeResponse,
    render_one,
    representation,
    send,
    status_response,
)
from discofilter.simapi.settings import SimSettings
from discofilter.simapi.store import Store
from discofilter.simapi.streaming import ENCODED, EncodedObjects, serve_watch

__all__ = ["REQUEST_LOG", "SETTINGS", "STORE", "RecordedRequest", "SimSettings", "build_app", "serve"]

JsonObj = dict[str, Any]

# The etcd request limit is 1.5 MiB and the apiserver accepts ~3 MiB request bodies.
_MAX_REQUEST_BODY: Final = 3 * 1024 * 1024
_ANONYMOUS: Final = "system:anonymous"
_HEALTH_PATHS: Final = frozenset({"/healthz", "/readyz", "/livez"})


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as it arrived: ``path`` and ``query`` are the raw bytes of the request line (no
    decoding, no reordering), ``headers`` in arrival order."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    at: float

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


STORE: Final = web.AppKey("simapi_store", Store)
SETTINGS: Final = web.AppKey("simapi_settings", SimSettings)
REQUEST_LOG: Final = web.AppKey("simapi_request_log", deque[RecordedRequest])


def build_app(store: Store, settings: SimSettings | None = None) -> web.Application:
    """The simulated API server as an aiohttp application serving ``store``."""
    settings = settings or SimSettings()
    app = web.Application(client_max_size=_MAX_REQUEST_BODY)
    app[STORE] = store
    app[SETTINGS] = settings
    app[REQUEST_LOG] = deque(maxlen=settings.request_log_limit)
    app[ENCODED] = EncodedObjects()
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def serve(
    store: Store,
    settings: SimSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve ``store`` on ``host:port`` (0 picks a free port); returns the runner (``await
    runner.cleanup()`` stops it) and the base URL, ``http://`` or ``https://`` with the bound port."""
    runner = web.AppRunner(build_app(store, settings), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    return runner, f"{scheme}://{host}:{bound}"


def _record(request: web.Request) -> None:
    path, _, query = request.raw_path.partition("?")
    entry = RecordedRequest(request.method, path, query, tuple(request.headers.items()), time.time())
    request.app[REQUEST_LOG].append(entry)


def _authenticate(request: web.Request, settings: SimSettings) -> str:
    if not settings.tokens:
        return ADMIN
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header or scheme.lower() != "bearer":
        return _ANONYMOUS
    user = settings.tokens.get(token.strip())
    if user is None:
        raise err.unauthorized()
    return user


def _verb(method: str, target: Target, opts: ListOptions | None) -> str:
    if target.watch_path or (method == "GET" and opts is not None and opts.watch):
        return "watch"
    return {
        "GET": "get" if target.name else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if target.name else "deletecollection",
    }.get(method, method.lower())


def _authorize(user: str, verb: str, target: Target, forbidden_users: frozenset[str]) -> None:
    """Anonymous requests may only read discovery and health; ``forbidden_users`` not the filtered types."""
    rt = target.rt
    if user != _ANONYMOUS and not (user in forbidden_users and rt.name in FILTERED_RESOURCES):
        return
    resource = rt.name + (f"/{target.subresource}" if target.subresource else "")
    where = (
        f"in the namespace {err.go_quote(target.namespace)}" if target.namespace else "at the cluster scope"
    )
    problem = (
        f"User {err.go_quote(user)} cannot {verb} resource {err.go_quote(resource)} in API group "
        f"{err.go_quote(rt.group)} {where}"
    )
    raise err.forbidden(rt.name, rt.group, target.name or "", problem)


async def _handle(request: web.Request) -> web.StreamResponse:
    _record(request)
    store, settings = request.app[STORE], request.app[SETTINGS]
    audit_id = request.headers.get("Audit-Id") or str(uuid.uuid4())
    ctx = Context(store, settings, None, audit_id)
    try:
        user = _authenticate(request, settings)
        ctx = Context(store, settings, user, audit_id)
        return await _dispatch(request, ctx)
    except err.ApiError as exc:
        return await status_response(request, ctx, exc)


async def _dispatch(request: web.Request, ctx: Context) -> web.StreamResponse:
    path = request.path.rstrip("/") or "/"
    if path in _HEALTH_PATHS or any(path.startswith(p + "/") for p in _HEALTH_PATHS):
        return KubeResponse(
            body=b"ok",
            headers=ctx.headers("text/plain; charset=utf-8") | {"X-Content-Type-Options": "nosniff"},
        )
    doc = _discovery(path)
    if doc is not None:
        if request.method != "GET":
            raise err.method_not_allowed()
        return await send(request, ctx, 200, doc)
    target = parse_resource_path(path)
    if target is None:
        # Paths outside every served group/version fall through to the mux's NotFound handler.
        return KubeResponse(
            status=404,
            body=b"404 page not found\n",
            headers=ctx.headers("text/plain; charset=utf-8") | {"X-Content-Type-Options": "nosniff"},
        )
    if target.watch_path and request.method != "GET":
        raise err.method_not_allowed()
    opts = ListOptions.from_query(request.query) if request.method == "GET" else None
    verb = _verb(request.method, target, opts)
    assert ctx.user is not None
    _authorize(ctx.user, verb, target, ctx.settings.forbidden_users)
    if opts is not None:
        if verb == "watch":
            return await serve_watch(request, ctx, target, opts)
        if target.name is None:
            return await _list(request, ctx, target, opts)
        return await _get(request, ctx, target)
    if request.method == "POST":
        return await mutations.create(request, ctx, target)
    if request.method == "PUT":
        return await mutations.update(request, ctx, target)
    if request.method == "PATCH":
        return await mutations.patch(request, ctx, target)
    if request.method == "DELETE":
        return await mutations.delete(request, ctx, target)
    raise err.method_not_allowed()


def _discovery(path: str) -> JsonObj | None:
    if path == "/version":
        return dict(discovery.VERSION_INFO)
    if path == "/api":
        return discovery.api_versions()
    if path == "/apis":
        return discovery.api_group_list()
    parts = [p for p in path.split("/") if p]
    if len(parts) == 2 and parts[0] == "api":
        return discovery.api_resource_list(parts[1])
    if len(parts) == 2 and parts[0] == "apis":
        return discovery.api_group(parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return discovery.api_resource_list(f"{parts[1]}/{parts[2]}")
    return None


async def _list(request: web.Request, ctx: Context, target: Target, opts: ListOptions) -> web.StreamResponse:
    opts.validate_list()
    result = ctx.store.list(
        target.rt.name,
        namespace=target.namespace,
        label_selector=opts.label_selector,
        field_selector=opts.field_selector,
        limit=opts.limit,
        continue_token=opts.continue_token,
        resource_version=opts.resource_version,
        resource_version_match=opts.resource_version_match,
    )
    kind = representation(request)
    body: JsonObj
    if kind == "table":
        include = request.query.get("includeObject", "Metadata")
        body = tables.table(
            target.rt, result.items, result.list_meta(), now=ctx.store.clock(), include_object=include
        )
    elif kind == "partial":
        body = tables.partial_list(result.items, result.list_meta())
    else:
        body = result.body()
    return await send(request, ctx, 200, body)


async def _get(request: web.Request, ctx: Context, target: Target) -> web.StreamResponse:
    assert target.name is not None
    obj = ctx.store.get(target.rt.name, target.namespace, target.name)
    if target.subresource == "log":
        containers = [str(c.get("name")) for c in (obj.get("spec") or {}).get("containers") or []]
        wanted = request.query.get("container")
        if wanted is None and len(containers) > 1:
            raise err.bad_request(
                f"a container name must be specified for pod {target.name}, "
                f"choose one of: [{' '.join(containers)}]"
            )
        if wanted is not None and wanted not in containers:
            raise err.bad_request(f"container {wanted} is not valid for pod {target.name}")
        # No container runs here: an empty log, as from a container that printed nothing.
        return KubeResponse(body=b"", headers=ctx.headers("text/plain"))
    return await send(request, ctx, 200, render_one(request, ctx, target.rt, obj))

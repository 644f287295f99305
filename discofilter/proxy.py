"""The proxy handlers: pass-through, filtered LIST and filtered WATCH (pass-through and LIST over one
pooled upstream session; each filtered WATCH over its own connection, see ``watchconn``).

Credentials (discofilter never adds privileges):
- TLS listener: the client's Authorization header is forwarded unchanged; nothing of discofilter's is
  ever attached, so istiod's own identity reaches the API server (RBAC, audit). No header, no identity.
- Loopback listener with ``--upstream-credentials``: a request without Authorization gets
  discofilter's own (bearer token and, if configured, client certificate), like ``kubectl proxy``.
  A client's own Authorization still wins, and then the connection carries no client certificate.
- Plain listener otherwise: whatever the client sent is forwarded.

Membership changes reach open watches as a 410 ``Expired`` ERROR event (see ``WatchRegistry``): the
client relists through discofilter and its store's Replace computes the adds and deletes. A namespace's
creation or deletion is no such change (``core.lifecycle``): an event or LIST item of a namespace not
known yet waits for ``resolver.NamespaceResolver``, and only one nothing can decide ends its watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from discofilter.core.boundary import EventBoundary
from discofilter.core.ledger import ResumeLedger
from discofilter.core.lifecycle import Undecided
from discofilter.core.listfilter import ListResult
from discofilter.core.liststream import ListStream
from discofilter.core.membership import Membership
from discofilter.core.protolist import filter_proto_list
from discofilter.core.protowatch import ProtoWatchFilter, frame_resource_version
from discofilter.core.routing import GO_TRUE, Route, RouteKind, classify, read_verb
from discofilter.core.watchfilter import NamespaceDecisions, WatchFilter, event_resource_version
from discofilter.errors import (
    ForbiddenError,
    NotAcceptableError,
    NotReadyError,
    ObjectTooLargeError,
    StreamFramingError,
    UpstreamError,
)
from discofilter.exclusion import ReopeningStream, ServerSideExclusion
from discofilter.kubeapi import (
    PROTOBUF_WATCH,
    error_event,
    hop_by_hop,
    is_json_content_type,
    is_protobuf_content_type,
    json_accept,
    media_params,
    native_accept,
    prefers_protobuf,
    proto_error_event,
)
from discofilter.resolver import NamespaceResolver
from discofilter.settings import Settings
from discofilter.stats import FilterCounts, ProxyStats
from discofilter.upstream import Upstream, describe_connect_error
from discofilter.watchconn import UpstreamClosed, WatchConnection, request_bytes

log = logging.getLogger("discofilter.proxy")

# The API server gzips non-watch answers over 128 KiB (REFERENCE.md, "Compression"); a filtered list
# is re-compressed on the same rule so a client sees what it would have seen.
GZIP_THRESHOLD = 128 * 1024

_NOTHING: frozenset[str] = frozenset()
_IDENTITY_HEADER_PREFIXES = ("impersonate-", "x-remote-")


EndReason = Literal["shutdown", "unknown"]
"""shutdown: the stream just ends, as at an API server watch timeout, and the client re-watches from
its last resourceVersion (on another replica). unknown: mesh membership went unconfirmed too long; the
stream ends with a 503 ERROR event, and new filtered requests are refused until it is known again."""


class _SlowClient(Exception):
    """A watch client took no bytes for ``client_write_timeout_seconds``."""


class Endable(Protocol):
    """An open upstream answer that can be ended from outside: its relay's pending read returns EOF
    at once, and the connection goes. Whole events already forwarded stay forwarded; a partial one is
    never sent. (``WatchConnection`` for filtered watches, ``PooledAnswer`` for pass-through ones.)"""

    def end(self) -> None: ...


@dataclass(slots=True)
class PooledAnswer:
    """A pass-through answer read through aiohttp's pool."""

    resp: aiohttp.ClientResponse

    def end(self) -> None:
        # Closing the response alone does not wake a read already waiting on its StreamReader, hence
        # the EOF. Close first: an EOF fed while the connection is still attached would hand the
        # connection, mid-stream, back to the pool for the next request to trip over.
        self.resp.close()
        self.resp.content.feed_eof()


@dataclass(eq=False, slots=True)
class OpenWatch:
    resource: str
    namespace: str | None
    generation: int
    upstream: Endable | None = None
    expired: bool = False
    """Set when a membership change ended this watch: the client gets a 410 and relists."""
    closing: EndReason | None = None
    """Set when discofilter ends this watch for its own reasons (shutdown, membership unknown)."""
    filter: StreamFilter | None = None
    """The watch's filter, whose event and byte counts /metrics reads while the watch is open."""

    @property
    def stopped(self) -> bool:
        return self.expired or self.closing is not None


@dataclass(slots=True)
class WatchRegistry:
    """The open filtered watches, so a membership change can end the ones it affects."""

    watches: set[OpenWatch] = field(default_factory=set)
    passthrough: set[OpenWatch] = field(default_factory=set)
    """Pass-through watches: membership changes do not concern them, shutdown does."""
    expired_total: int = 0
    draining: bool = False
    """Shutting down: every open watch is ended and any watch that opens from now on ends at once."""

    def end_all(self, reason: EndReason) -> int:
        """End every open watch at an event boundary (whole events already sent stay sent)."""
        if reason == "shutdown":
            self.draining = True
        ended = 0
        for w in [*self.watches, *(self.passthrough if reason == "shutdown" else ())]:
            if w.stopped:
                continue
            w.closing = reason
            ended += 1
            if w.upstream is not None:
                w.upstream.end()
        return ended

    def on_change(self, changed: frozenset[str]) -> None:
        ended: dict[str, int] = {}
        for w in list(self.watches):
            if w.expired or (w.namespace is not None and w.namespace not in changed):
                continue
            w.expired = True
            self.expired_total += 1
            ended[w.resource] = ended.get(w.resource, 0) + 1
            if w.upstream is not None:
                w.upstream.end()
        if ended:
            # One line per change, not per watch: a change can end every istiod's every informer at once.
            log.info(
                "membership change ended %d open watches with 410 Expired (%s); clients relist",
                sum(ended.values()),
                ", ".join(f"{r} {n}" for r, n in sorted(ended.items())),
                extra={"watches_ended": ended},
            )


class Proxy:
    """Holds what every request needs; ``handle`` is the one aiohttp handler."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        session: aiohttp.ClientSession,
        membership: Membership,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.session = session
        self.membership = membership
        self.registry = WatchRegistry()
        self.ledger = ResumeLedger()
        self.malformed_streams = 0
        """Filtered answers ended because the upstream bytes could not be parsed (never forwarded)."""
        self.slow_clients_ended = 0
        """Filtered watches dropped because their client stopped reading (client_write_timeout_seconds)."""
        self.in_flight = 0
        """Requests being handled now, watches included (logged at shutdown)."""
        self.await_confirmed: Callable[[], Awaitable[None]] = _always_confirmed
        """Returns once mesh membership is confirmed, or raises NotReadyError past its bound; the
        namespace tracker's (app.py). See core.confirmation."""
        self.api_server_answered: Callable[[], None] = lambda: None
        """Told of every answer from the API server, so the namespace tracker retries at once after
        an outage (app.py)."""
        self.stats = ProxyStats()
        self.decisions = NamespaceDecisions()
        """The JSON watch filters' namespace decisions, shared by every watch (see WatchFilter)."""
        self.resolver = NamespaceResolver(membership, _NoLookup())
        """Decides namespaces a stream met before the namespace watch showed them (app.py sets the real
        one; this one can look nothing up, so such a stream relists)."""
        self.stale_resumes = 0
        """Watches refused with 410 because the client's state predates a membership change."""
        self.undecided_ended = 0
        """Filtered watches ended with 410 because an event's namespace could not be decided."""
        self.exclusion = ServerSideExclusion(settings.exclusion, membership)
        """Server-side exclusion: the upstream queries of filtered reads (discofilter.exclusion)."""
        self.tls = settings.server.tls_cert_file is not None
        self.lend_credentials = settings.server.upstream_credentials and not self.tls

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        transport = request.transport  # aiohttp unsets it when it force-closes the connection
        try:
            return await self._handle(request)
        except asyncio.CancelledError:
            if self.registry.draining and transport is not None:
                # Past the shutdown grace period: drop the connection now. aiohttp close()s it, which
                # still flushes whatever the transport holds, for as long as the client takes (and
                # keeps the process alive meanwhile). An aborted body is cut where it stands (short
                # of its Content-Length, or without the final chunk), so the client knows.
                transport.abort()
            raise
        finally:
            self.in_flight -= 1

    async def _confirm_membership(self) -> None:
        """A filtered answer never rests on membership that may be stale: before the first sync it is
        refused at once, and while the namespace watch is broken it waits for a confirming namespace
        LIST (``await_confirmed``, bounded; past the bound, the same 503)."""
        if not self.membership.synced:
            raise NotReadyError("discofilter has not synced mesh membership yet; retry shortly")
        await self.await_confirmed()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        path = raw.partition("?")[0]
        if request.headers.get("Upgrade"):
            raise UpstreamError(
                "discofilter does not proxy connection upgrades (exec, attach, port-forward); "
                "use the API server directly for those",
            )
        route = classify(request.method, path, request.query.getall("watch", []))
        if route.kind is RouteKind.PASSTHROUGH:
            return await self._passthrough(request, raw)
        if route.kind is RouteKind.REJECTED:
            raise web.HTTPBadRequest(reason="BadRequest", text=route.reason)
        await self._confirm_membership()
        if route.kind is RouteKind.LIST:
            return await self._list(request, raw, route)
        return await self._watch(request, raw, route)

    # -- upstream request building ------------------------------------------------------------------

    async def _headers(
        self, request: web.Request, *, accept: str | None = None
    ) -> tuple[CIMultiDict[str], ssl.SSLContext | bool]:
        drop = hop_by_hop(request.headers) | {"host", "content-length"}
        identity_dropped = sorted(
            h for h in drop if h == "authorization" or h.startswith(_IDENTITY_HEADER_PREFIXES)
        )
        if identity_dropped:
            # "Connection: Authorization" would make discofilter drop the client's identity headers
            # as hop-by-hop, and (with lending) put its own identity in their place.
            raise web.HTTPBadRequest(
                reason="BadRequest",
                text=f"Connection may not name identity headers ({', '.join(identity_dropped)})",
            )
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in drop
        )
        if accept is not None:
            headers["Accept"] = accept
        ssl_ctx = self.upstream.client_ssl
        if self.lend_credentials and "Authorization" not in headers:
            # Lending is decided on the client's own headers. Impersonate-* (and the front-proxy
            # X-Remote-* headers, honoured for some client certificates) would act with discofilter's
            # rights, not the client's: a loopback client could become anyone discofilter may
            # impersonate. Refused, never stripped: stripping would silently change who the request is.
            dangerous = sorted({k for k in headers if k.lower().startswith(_IDENTITY_HEADER_PREFIXES)})
            if dangerous:
                raise ForbiddenError(
                    "discofilter does not lend its own credentials to a request carrying "
                    f"{', '.join(dangerous)}; send your own Authorization to impersonate"
                )
            own = await self.upstream.authorization()
            if own:
                headers["Authorization"] = own
            ssl_ctx = self.upstream.own_ssl
        return headers, ssl_ctx

    async def _open(
        self,
        request: web.Request,
        raw: str,
        *,
        accept: str | None = None,
        decompress: bool = False,
        stream_body: bool = False,
    ) -> aiohttp.ClientResponse:
        headers, ssl_ctx = await self._headers(request, accept=accept)
        body: aiohttp.StreamReader | None = None
        if stream_body and request.body_exists:
            # Streamed through, never buffered: write bodies up to the API server's 3 MiB and beyond.
            body = request.content
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
        url = URL(self.upstream.base_url + raw, encoded=True)
        try:
            resp = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                ssl=ssl_ctx,
                allow_redirects=False,
                auto_decompress=decompress,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                read_bufsize=self.settings.watch.read_chunk_bytes,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        if resp.status < 500:  # a 5xx may come from a load balancer in front of a dead API server
            self.api_server_answered()
        return resp

    def _unreachable(self, exc: BaseException) -> UpstreamError:
        """Count a failed connect to the API server; raise what this returns."""
        self.stats.upstream_error("unreachable")
        url = URL(self.upstream.base_url)
        address = f"[{url.host}]:{url.port}" if ":" in (url.host or "") else f"{url.host}:{url.port}"
        return UpstreamError(f"API server unreachable: {describe_connect_error(exc, address)}")

    @staticmethod
    def _copy_headers(
        headers: CIMultiDictProxy[str] | CIMultiDict[str], out: web.StreamResponse, *, rewritten: bool
    ) -> None:
        drop = hop_by_hop(headers)
        if rewritten:
            drop = drop | {"content-length", "content-encoding"}
        for k, v in headers.items():
            if k.lower() not in drop:
                out.headers.add(k, v)

    # -- pass-through -------------------------------------------------------------------------------

    async def _passthrough(self, request: web.Request, raw: str) -> web.StreamResponse:
        resp = await self._open(request, raw, stream_body=True)
        watch: OpenWatch | None = None
        try:
            out = web.StreamResponse(status=resp.status, reason=resp.reason)
            self._copy_headers(resp.headers, out, rewritten=False)
            await out.prepare(request)
            if request.method != "HEAD":
                is_watch = resp.status == 200 and _is_watch(request)
                boundary = _watch_boundary(resp) if is_watch else None
                if is_watch:
                    # Registered so a shutdown can end it (at an event boundary when one is known).
                    answer = PooledAnswer(resp)
                    watch = OpenWatch("", None, 0, upstream=answer)
                    self.registry.passthrough.add(watch)
                    if self.registry.draining:
                        watch.closing = "shutdown"
                        answer.end()
                try:
                    async for chunk in resp.content.iter_any():
                        await self._write(out, chunk, request.transport)
                        if boundary is not None:
                            boundary.feed(chunk)
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                    if watch is None or watch.closing is None:
                        raise
                    # PooledAnswer.end() closed it: what was forwarded is all there is
                ended_mid_event = boundary is None or not boundary.at_boundary
                if watch is not None and watch.closing is not None and ended_mid_event:
                    log.info("shutdown cut pass-through watch %s mid-event", request.path)
                    raise _Abort
            await out.write_eof()
            return out
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            self.stats.upstream_error("ended_early")
            log.info("upstream ended %s %s mid-body: %s", request.method, request.path, exc)
            raise _Abort from exc
        except _SlowClient as exc:
            raise self._drop_slow_client(request) from exc
        finally:
            if watch is not None:
                self.registry.passthrough.discard(watch)
            resp.release()

    # -- filtered reads -----------------------------------------------------------------------------

    def _members_for(self, route: Route, *, watch: bool = False) -> Container[str]:
        """A per-namespace LIST of a namespace known to be outside the mesh keeps nothing, whatever the
        API server sends; otherwise the live membership decides per object. A watch always follows the
        live membership: its namespace may be deleted and created again in the mesh, which is not a
        membership change that would end it (``core.lifecycle``)."""
        ns = route.namespace
        if not watch and ns is not None and not self.membership.undecided(ns) and ns not in self.membership:
            return _NOTHING
        return self.membership

    async def _resolve_list_item(self, undecided: Undecided, *, started: bool) -> None:
        """A LIST stopped at an item of a namespace not known yet: resolve it, or fail the LIST (the
        client retries) rather than answer it with a guess."""
        if await self.resolver.resolve(undecided.namespace, undecided.rv):
            return
        msg = f"namespace {undecided.namespace!r} could not be decided yet; retry"
        if started:
            log.warning("LIST ended: %s", msg)
            raise _Abort
        raise NotReadyError(msg)

    def _accept(self, request: web.Request) -> str:
        accept = request.headers.get("Accept")
        return native_accept(accept) if self.settings.watch.wire_format == "native" else json_accept(accept)

    def _check_table_request(self, request: web.Request) -> None:
        wants_table = any(p.get("as") == "Table" for p in media_params(request.headers.get("Accept")))
        if wants_table and request.query.get("includeObject") == "None":
            raise NotAcceptableError(
                "includeObject=None Tables carry no namespaces, so discofilter cannot filter them"
            )

    async def _list(self, request: web.Request, raw: str, route: Route) -> web.StreamResponse:
        self._check_table_request(request)
        resp = await self._open_list(request, raw, route)
        try:
            limit = self.settings.watch.max_list_bytes
            if resp.content_length is not None and resp.content_length > limit:
                raise ObjectTooLargeError(f"LIST answer of {resp.content_length} bytes exceeds {limit}")
            if resp.status == 200 and is_json_content_type(resp.headers.get("Content-Type")):
                return await self._stream_list(request, resp, route)
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(self.settings.watch.read_chunk_bytes):
                size += len(chunk)
                if size > limit:
                    raise ObjectTooLargeError(f"LIST answer exceeds the {limit}-byte limit")
                chunks.append(chunk)
            body = b"".join(chunks)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            self.stats.upstream_error("ended_early")
            raise UpstreamError(f"API server ended the LIST answer early: {exc}") from exc
        finally:
            resp.release()
        out = web.Response(status=resp.status, reason=resp.reason)
        self._copy_headers(resp.headers, out, rewritten=True)
        if resp.status != 200:
            out.body = body  # an error Status: there are no objects to filter
            return out
        ctype = resp.headers.get("Content-Type")
        if not is_protobuf_content_type(ctype):
            raise StreamFramingError(f"API server answered a filtered LIST with {ctype!r}: cannot filter it")
        # Protobuf lists (what istiod gets with wire_format native) stay buffered and are filtered in one
        # piece: protolist skips items by their length prefix without decoding them, so the cost is
        # one copy of the body, but memory is not bounded by one item as for JSON (no incremental reader).
        generation = self.membership.generation
        members = self._members_for(route)
        while True:
            try:
                result = filter_proto_list(body, members)
            except StreamFramingError:
                self.stats.malformed_lists += 1
                raise
            except Undecided as undecided:
                await self._resolve_list_item(undecided, started=False)
                continue
            break
        self._list_filtered(route, result, len(body), len(result.body))
        self._record_list_page(request, route, result, generation)
        out.body = result.body
        if len(result.body) > GZIP_THRESHOLD and self._accepts_gzip(request):
            out.enable_compression(web.ContentCoding.gzip)
        log.debug("LIST %s: kept %d of %d items", request.path, result.items_kept, result.items_in)
        # Written here rather than by aiohttp after the handler returns: then a shutdown sees the
        # LIST in flight and bounds it by the grace period (runner.py), instead of leaving megabytes
        # in a transport buffer that keeps the process alive for as long as the client reads.
        await out.prepare(request)
        await out.write_eof()
        return out

    async def _open_list(self, request: web.Request, raw: str, route: Route) -> aiohttp.ClientResponse:
        """The upstream LIST, with server-side exclusion when it applies (discofilter.exclusion). If
        the API server refuses the requirements (400) but takes the request without them: without."""
        path, _, query = raw.partition("?")
        up = self.exclusion.list_query(route, query, request.query)
        request[_EXCLUDED] = up.excluded
        accept = self._accept(request)
        resp = await self._open(
            request, raw if up.raw == query else f"{path}?{up.raw}", accept=accept, decompress=True
        )
        if resp.status != 400 or not up.excluded:
            return resp
        try:
            body = await resp.content.read(self.settings.watch.max_event_bytes)
        finally:
            resp.release()
        plain = await self._open(request, raw, accept=accept, decompress=True)
        if plain.status != 400:
            self.exclusion.refused(route.resource or "", body)
        request[_EXCLUDED] = ()
        return plain

    async def _stream_list(
        self, request: web.Request, resp: aiohttp.ClientResponse, route: Route
    ) -> web.StreamResponse:
        """Filter a JSON list as it arrives (core.liststream): one item in memory at a time, and the event
        loop never blocked for more than one read's worth of scanning (a 25 MB pod list decoded in one
        piece blocked it 0.93 s). The first 128 KiB of output are held back, so a small answer goes out
        whole with a Content-Length and the gzip rule (GZIP_THRESHOLD) still decides on its real size;
        past it, the answer streams (gzip'd if the client accepts it, as the API server would have)."""
        generation = self.membership.generation
        limit = self.settings.watch.max_list_bytes
        stream = ListStream(
            self._members_for(route),
            max_item_bytes=self.settings.watch.max_event_bytes,
            max_whole_bytes=limit,
        )
        held: list[bytes] = []
        held_size = 0
        out: web.StreamResponse | None = None
        size = written = 0
        try:
            async for chunk in resp.content.iter_chunked(self.settings.watch.read_chunk_bytes):
                size += len(chunk)
                if size > limit:
                    raise ObjectTooLargeError(f"LIST answer exceeds the {limit}-byte limit")
                piece = stream.feed(chunk)
                while stream.blocked is not None:
                    await self._resolve_list_item(stream.blocked, started=out is not None)
                    piece += stream.feed(b"")
                if not piece:
                    continue
                if out is None:
                    held.append(piece)
                    held_size += len(piece)
                    if held_size <= GZIP_THRESHOLD:
                        continue
                    out = web.StreamResponse(status=resp.status, reason=resp.reason)
                    self._copy_headers(resp.headers, out, rewritten=True)
                    if self._accepts_gzip(request):
                        out.enable_compression(web.ContentCoding.gzip)
                    await out.prepare(request)
                    piece = b"".join(held)
                    held.clear()
                    held_size = 0
                written += len(piece)
                await out.write(piece)
            while True:
                try:
                    last, result = stream.finish()
                except Undecided as undecided:
                    await self._resolve_list_item(undecided, started=out is not None)
                    continue
                break
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            self.stats.upstream_error("ended_early")
            if out is None:
                raise UpstreamError(f"API server ended the LIST answer early: {exc}") from exc
            log.info("upstream ended LIST %s mid-body: %s", request.path, exc)
            raise _Abort from exc
        except StreamFramingError as exc:
            if size <= limit:  # the filter's verdict, not the size limit on the whole body
                self.stats.malformed_lists += 1
            if out is None:
                raise
            # Part of the list is out already: cut the answer so the client fails to decode it,
            # never finishing it as a shorter list.
            log.warning("LIST %s ended: %s", request.path, exc)
            raise _Abort from exc
        self._list_filtered(route, result, size, held_size + len(last) + written)
        self._record_list_page(request, route, result, generation)
        log.debug("LIST %s: kept %d of %d items", request.path, result.items_kept, result.items_in)
        if out is None:
            whole = web.Response(status=resp.status, reason=resp.reason)
            self._copy_headers(resp.headers, whole, rewritten=True)
            whole.body = b"".join(held) + last
            if held_size + len(last) > GZIP_THRESHOLD and self._accepts_gzip(request):
                whole.enable_compression(web.ContentCoding.gzip)
            return whole
        await out.write(last)
        await out.write_eof()
        return out

    def _list_filtered(self, route: Route, result: ListResult, bytes_in: int, bytes_out: int) -> None:
        self.stats.list_filtered(
            route.resource or "",
            items_in=result.items_in,
            items_kept=result.items_kept,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
        )

    @staticmethod
    def _accepts_gzip(request: web.Request) -> bool:
        return "gzip" in request.headers.get("Accept-Encoding", "")

    def _record_list_page(
        self, request: web.Request, route: Route, result: ListResult, generation: int
    ) -> None:
        self.exclusion.remember_page(result.continue_token, request.get(_EXCLUDED, ()))
        if result.resource_version is not None:
            self.ledger.record_page(
                route.resource or "",
                result.resource_version,
                generation,
                continue_in=request.query.get("continue"),
                continue_out=result.continue_token,
            )

    # -- filtered WATCH -----------------------------------------------------------------------------

    def _resume_is_stale(self, request: web.Request, route: Route) -> str | None:
        """If the client's state may predate a membership change, return its resourceVersion."""
        q = request.query
        rv = q.get("resourceVersion", "")
        if rv in ("", "0") or q.get("sendInitialEvents") in GO_TRUE:
            return None  # the API server sends the whole current state first: nothing to be stale
        generation = self.ledger.generation(route.resource or "", rv)
        if generation is not None:
            stale = self.membership.changed_since(generation, route.namespace)
        else:
            stale = not self.membership.resume_is_current(rv, route.namespace)
        return rv if stale else None

    async def _expired_answer(self, request: web.Request, message: str) -> web.StreamResponse:
        """Answer as the API server does a too-old resourceVersion: 200, then one 410 ERROR event, in
        the encoding the API server would have chosen for this client."""
        protobuf = self.settings.watch.wire_format == "native" and prefers_protobuf(
            request.headers.get("Accept")
        )
        out = web.StreamResponse(status=200)
        out.headers["Content-Type"] = PROTOBUF_WATCH if protobuf else "application/json"
        out.headers["Cache-Control"] = "no-cache, private"
        event = proto_error_event if protobuf else error_event
        with contextlib.suppress(ConnectionError):  # the client may already be gone
            await out.prepare(request)
            await out.write(event(410, "Expired", message))
            await out.write_eof()
        return out

    async def _watch(self, request: web.Request, raw: str, route: Route) -> web.StreamResponse:
        self._check_table_request(request)
        stale_rv = self._resume_is_stale(request, route)
        if stale_rv is not None:
            self.stale_resumes += 1
            return await self._expired_answer(
                request, f"too old resource version: {stale_rv} (mesh membership changed since; relist)"
            )
        watch = OpenWatch(route.resource or "", route.namespace, self.membership.generation)
        if self.registry.draining:
            watch.closing = "shutdown"  # opened during shutdown: end it at once, the client goes elsewhere
        self.registry.watches.add(watch)
        try:
            return await self._relay_watch(request, raw, route, watch)
        finally:
            self.registry.watches.discard(watch)
            if watch.filter is not None:
                self.stats.watch_ended(watch.resource, watch.filter)

    async def _open_watch(self, request: web.Request, raw: str) -> WatchConnection:
        headers, ssl_ctx = await self._headers(request, accept=self._accept(request))
        base = URL(self.upstream.base_url, encoded=True)
        try:
            return await WatchConnection.open(
                base,
                request_bytes(request.method, base, raw, headers),
                ssl_ctx,
                connect_timeout=self.settings.upstream.connect_timeout_seconds,
                max_pending=self.settings.watch.read_chunk_bytes,
            )
        except (OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    async def _relay_watch(
        self, request: web.Request, raw: str, route: Route, watch: OpenWatch
    ) -> web.StreamResponse:
        path, _, query = raw.partition("?")
        up = self.exclusion.watch_query(route, query, request.query)
        conn = await self._open_watch(request, raw if up.raw == query else f"{path}?{up.raw}")
        if up.excluded:
            # A 400 to the requirements (an API server that cannot filter by namespace): again without
            # them, and client-side only from now on for this kind (discofilter.exclusion).
            try:
                head = await conn.head()
            except UpstreamClosed:
                head = None
            if head is not None and head.status == 400:
                try:
                    body = await conn.read_all(self.settings.watch.max_event_bytes)
                except UpstreamClosed:
                    body = b""
                conn.close()
                up.excluded, up.bookmarks_added = (), False
                conn = await self._open_watch(request, raw)
                with contextlib.suppress(UpstreamClosed):
                    if (await conn.head()).status != 400:
                        self.exclusion.refused(route.resource or "", body)
        watch.upstream = conn
        stream: ReopeningStream | WatchConnection = conn
        if watch.stopped:
            # Membership changed while the upstream connection was opening: on_change could not end it
            # then, and an idle upstream may send nothing for a long time. End it now.
            conn.end()
        try:
            try:
                head = await conn.head()
            except UpstreamClosed as exc:
                if watch.expired:
                    return await self._expired_answer(request, "mesh membership changed; relist")
                if watch.stopped:
                    raise NotReadyError("discofilter ended this watch before it began; retry") from exc
                self.stats.upstream_error("ended_early")
                raise UpstreamError(f"API server closed the WATCH before answering: {exc}") from exc
            if head.status < 500:
                self.api_server_answered()
            if head.status != 200:
                try:
                    body = await conn.read_all(self.settings.watch.max_event_bytes)
                except UpstreamClosed as exc:
                    self.stats.upstream_error("ended_early")
                    raise UpstreamError(f"API server ended its error answer early: {exc}") from exc
                error = web.Response(status=head.status, reason=head.reason, body=body)
                self._copy_headers(head.headers, error, rewritten=True)
                return error
            ctype = head.headers.get("Content-Type")
            if head.headers.get("Content-Encoding", "identity") != "identity":
                raise StreamFramingError(
                    f"API server answered a filtered WATCH with Content-Encoding "
                    f"{head.headers['Content-Encoding']!r} after Accept-Encoding: identity"
                )
            members = self._members_for(route, watch=True)
            limit = self.settings.watch.max_event_bytes
            wf: StreamFilter
            event: Callable[[int, str, str], bytes]
            rv_of: Callable[[bytes], str | None]
            if is_json_content_type(ctype):
                decisions = self.decisions if members is self.membership else None
                wf, event, rv_of = (
                    WatchFilter(members, max_line_bytes=limit, decisions=decisions),
                    error_event,
                    event_resource_version,
                )
            elif is_protobuf_content_type(ctype):
                wf, event, rv_of = (
                    ProtoWatchFilter(members, max_frame_bytes=limit),
                    proto_error_event,
                    frame_resource_version,
                )
            else:
                raise StreamFramingError(
                    f"API server answered a filtered WATCH with {ctype!r}: cannot filter it"
                )
            watch.filter = wf
            if self.exclusion.applies(route):
                if up.bookmarks_added:
                    wf.forward_bookmarks = False  # asked for discofilter's own use only
                wf.tally = self.exclusion.planner.tally
                stream = ReopeningStream(
                    self.exclusion,
                    conn,
                    wf,
                    opener=lambda target: self._open_watch(request, target),
                    resource=watch.resource,
                    path=path,
                    query=query,
                    params=request.query,
                    active=up.excluded,
                    rv_of=rv_of,
                    protobuf=event is proto_error_event,
                    content_type=ctype,
                    watch=watch,
                    set_upstream=lambda new: setattr(watch, "upstream", new),
                )
            out = web.StreamResponse(status=200, reason=head.reason)
            self._copy_headers(head.headers, out, rewritten=True)
            await out.prepare(request)  # headers go out now, before the first event
            try:
                ended_by = await self._pump(stream, out, wf, watch, request.transport)
                current = stream.conn if isinstance(stream, ReopeningStream) else stream
                if current.undecided is not None and not watch.stopped:
                    self.undecided_ended += 1
                    msg = (
                        f"namespace {current.undecided.namespace!r} of an event could not be decided; relist"
                    )
                    await self._write(out, event(410, "Expired", msg), request.transport)
                elif watch.expired:
                    msg = "mesh membership changed during this watch; relist"
                    await self._write(out, event(410, "Expired", msg), request.transport)
                elif watch.closing == "unknown":
                    msg = "discofilter: mesh membership unconfirmed (namespace watch down); retry later"
                    await self._write(out, event(503, "ServiceUnavailable", msg), request.transport)
                elif ended_by is not None:
                    self.malformed_streams += 1
                    log.warning("watch %s ended: %s", request.path, ended_by)
                    ended = event(500, "InternalError", f"discofilter: {ended_by}")
                    await self._write(out, ended, request.transport)
                elif wf.last_kept is not None:
                    rv = rv_of(wf.last_kept)
                    if rv is not None:
                        self.ledger.record(watch.resource, rv, watch.generation)
                with contextlib.suppress(ConnectionError):
                    async with asyncio.timeout(self.settings.watch.client_write_timeout_seconds):
                        await out.write_eof()
            except (_SlowClient, TimeoutError) as exc:
                raise self._drop_slow_client(request) from exc
            return out
        finally:
            conn.close()
            if stream is not conn:
                stream.close()

    def _drop_slow_client(self, request: web.Request) -> _Abort:
        """Count and log a client that took nothing for the write timeout; raise what this returns."""
        self.slow_clients_ended += 1
        log.warning(
            "%s %s: client took nothing for %.0f s; dropping it",
            request.method,
            request.path,
            self.settings.watch.client_write_timeout_seconds,
        )
        return _Abort()

    async def _write(self, out: web.StreamResponse, data: bytes, transport: asyncio.Transport | None) -> None:
        """Write whole events; a client that takes none of them for the write timeout is dropped.

        Awaiting the write is the backpressure: while it waits nothing more is read from upstream, so
        a stalled client holds at most one upstream read plus the socket buffers."""
        if transport is not None and (
            transport.get_write_buffer_size() + len(data) <= transport.get_write_buffer_limits()[1]
        ):
            # It fits under the high-water mark, so the transport will not pause and the write cannot
            # wait: skip the timer, which costs ~5 us a write here (asyncio.timeout, uvloop).
            await out.write(data)
            return
        try:
            async with asyncio.timeout(self.settings.watch.client_write_timeout_seconds):
                await out.write(data)
        except TimeoutError as exc:
            raise _SlowClient from exc

    async def _pump(
        self,
        conn: WatchConnection | ReopeningStream,
        out: web.StreamResponse,
        wf: StreamFilter,
        watch: OpenWatch,
        transport: asyncio.Transport | None,
    ) -> str | None:
        """Relay until upstream EOF. Returns why the stream had to be ended early, or None.

        The filter runs in the connection's read callback (``WatchConnection.attach``); this task only
        wakes for kept bytes, one write per wakeup: whole events only, flushed now, never held for the
        next read; awaiting the write is the backpressure on a slow client."""
        conn.attach(wf.feed_spans, wf, self.resolver.resolve)
        read = conn.read
        try:
            while True:
                kept = await read()
                if not kept:
                    break
                if watch.expired or watch.closing is not None:  # watch.stopped, inlined: once per read
                    return None
                await self._write(out, kept, transport)
            if not watch.stopped:
                wf.feed_eof()
        except StreamFramingError as exc:
            return f"malformed upstream watch stream: {exc}"
        except UpstreamClosed as exc:
            if not watch.stopped:
                self.stats.upstream_error("ended_early")
                log.info("upstream watch connection ended: %s", exc)
        return None


async def _always_confirmed() -> None:
    """Until app.py wires the namespace tracker in: nothing to wait for."""


def _is_watch(request: web.Request) -> bool:
    return read_verb(request.raw_path.partition("?")[0], request.query.getall("watch", [])) == "watch"


def _watch_boundary(resp: aiohttp.ClientResponse) -> EventBoundary | None:
    """Event-boundary tracking for a pass-through watch whose encoding is known (not compressed)."""
    if resp.headers.get("Content-Encoding"):
        return None
    ctype = resp.headers.get("Content-Type")
    if is_json_content_type(ctype):
        return EventBoundary(protobuf=False)
    if is_protobuf_content_type(ctype):
        return EventBoundary(protobuf=True)
    return None


class StreamFilter(FilterCounts, Protocol):
    """What the relay needs of a watch filter: the JSON line filter and the protobuf frame filter."""

    last_kept: bytes | None
    blocked: Undecided | None

    def resume(self) -> bytes: ...

    def feed_spans(self, data: bytes, spans: list[int]) -> bytes: ...

    def feed_eof(self) -> None: ...


class _NoLookup:
    """A lookup that can find nothing out: until app.py gives the real one, streams relist instead."""

    async def lookup(self, name: str) -> tuple[dict[str, object] | None, str]:
        raise NotReadyError(f"no namespace lookup configured to resolve {name!r}")


_EXCLUDED = web.RequestKey("discofilter.excluded", tuple[str, ...])
"""request key: the namespaces a LIST page's upstream request excluded (for the next page's)."""


class _Abort(Exception):
    """A response already started cannot become an error answer: drop the client connection."""

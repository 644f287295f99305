"""Writing answers the way kube-apiserver does: headers, Content-Length or chunked, gzip, representations.

The wire details the captures show (README facts 1, 7, 8): every answer has ``Audit-Id``,
``Cache-Control: no-cache, private`` and ``Date``; authenticated ones the ``X-Kubernetes-Pf-*`` pair; 403s
``X-Content-Type-Options: nosniff``; there is no ``Server`` header. Bodies up to 2 KiB carry
``Content-Length`` (Go's net/http buffers 2048 bytes before it chunks), larger ones are chunked, and
non-watch bodies over the gzip threshold are gzipped for clients that accept it.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from discofilter.simapi import errors as err
from discofilter.simapi import tables
from discofilter.simapi.encoding import encode_body
from discofilter.simapi.request import Representation, negotiate
from discofilter.simapi.resources import ResourceType
from discofilter.simapi.settings import SimSettings
from discofilter.simapi.store import Store

JsonObj = dict[str, Any]

# Go's net/http answers with Content-Length when the whole body fits its 2048-byte chunking buffer.
_CONTENT_LENGTH_MAX: Final = 2048
# Flow-schema uids of the captured server: "exempt" (system:masters) and "global-default" (everyone else).
_PF_EXEMPT: Final = ("121d9c25-5557-41bf-b7b1-6c1ba87720e0", "7c0f05f9-e3a4-44d7-bebe-efd399270f6c")
_PF_DEFAULT: Final = ("db2a9211-93a7-4a2d-9c42-7afaf4f86492", "fa643d71-d92d-42bb-a9b8-d600b4a24d0b")
ADMIN: Final = "admin"
"""The user of every request when authentication is off (group system:masters in the captures)."""


class KubeResponse(web.Response):
    """A Response without aiohttp's ``Server`` header, which kube-apiserver does not send."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Server", None)


class KubeStreamResponse(web.StreamResponse):
    """A StreamResponse without aiohttp's ``Server`` header."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Server", None)


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler needs besides the request: the store, the settings, who asks, the audit id."""

    store: Store
    settings: SimSettings
    user: str | None
    audit_id: str

    def headers(self, content_type: str = "application/json", *, status: int = 200) -> dict[str, str]:
        out = {"Audit-Id": self.audit_id, "Cache-Control": "no-cache, private", "Content-Type": content_type}
        if status == 403:
            out["X-Content-Type-Options"] = "nosniff"
        if self.user is not None:
            flow, level = _PF_EXEMPT if self.user == ADMIN else _PF_DEFAULT
            out["X-Kubernetes-Pf-Flowschema-Uid"] = flow
            out["X-Kubernetes-Pf-Prioritylevel-Uid"] = level
        return out


def pretty(request: web.Request, settings: SimSettings) -> bool:
    agent = request.headers.get("User-Agent", "")
    return any(agent.startswith(prefix) for prefix in settings.pretty_user_agents)


def accepts_gzip(request: web.Request) -> bool:
    for token in request.headers.get("Accept-Encoding", "").split(","):
        name, _, params = token.strip().partition(";")
        if name.strip().lower() == "gzip" and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


async def send_bytes(
    request: web.Request, ctx: Context, status: int, body: bytes, content_type: str = "application/json"
) -> web.StreamResponse:
    headers = ctx.headers(content_type, status=status)
    if len(body) > ctx.settings.gzip_threshold and accepts_gzip(request):
        # Level 1 like the apiserver's gzip writer; Go's deflate picks other matches, so the bytes differ.
        body = gzip.compress(body, compresslevel=1, mtime=0)
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
    elif len(body) <= _CONTENT_LENGTH_MAX:
        return KubeResponse(status=status, body=body, headers=headers)
    response = KubeStreamResponse(status=status, headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()
    return response


async def send(request: web.Request, ctx: Context, status: int, obj: Any) -> web.StreamResponse:
    return await send_bytes(request, ctx, status, encode_body(obj, pretty=pretty(request, ctx.settings)))


async def status_response(request: web.Request, ctx: Context, exc: err.ApiError) -> web.StreamResponse:
    return await send(request, ctx, exc.code, exc.status())


def representation(request: web.Request) -> Representation:
    return negotiate(request.headers.get("Accept"))


def render_one(request: web.Request, ctx: Context, rt: ResourceType, obj: JsonObj) -> JsonObj:
    kind = representation(request)
    if kind == "table":
        meta = {"resourceVersion": str((obj.get("metadata") or {}).get("resourceVersion", ""))}
        include = request.query.get("includeObject", "Metadata")
        return tables.table(rt, [obj], meta, now=ctx.store.clock(), include_object=include)
    if kind == "partial":
        return tables.partial_object(obj)
    return rt.with_type_meta(obj)

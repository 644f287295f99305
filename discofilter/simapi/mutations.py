"""The write verbs over HTTP: POST, PUT, PATCH, DELETE (and deletecollection), and ``pods/binding``.

The semantics are the store's; this module reads bodies and DeleteOptions, picks the patch flavour from the
Content-Type, and answers like the real server: 201 with the object for a create, the object for updates,
and for a DELETE the object (pods, services, namespaces, and anything still waiting for a grace period or
finalizers) or a ``Status`` of ``Success``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from discofilter.simapi import errors as err
from discofilter.simapi.encoding import loads
from discofilter.simapi.request import ListOptions, Target
from discofilter.simapi.responses import Context, render_one, send

JsonObj = dict[str, Any]

_PATCH_TYPES: Final = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
    "application/apply-patch+yaml": "apply",
}


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise err.bad_request("the request body is empty")
    try:
        return loads(raw)
    except ValueError as exc:
        raise err.bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc


def _object_body(data: Any) -> JsonObj:
    if not isinstance(data, dict):
        raise err.bad_request("the request body must be a JSON object")
    return data


async def create(request: web.Request, ctx: Context, target: Target) -> web.StreamResponse:
    rt = target.rt
    if target.subresource == "binding" and target.name is not None:
        binding = _object_body(await _body(request))
        binding_target = binding.get("target")
        node = str(binding_target.get("name") or "") if isinstance(binding_target, dict) else ""
        if not node:
            raise err.invalid(rt.group, "Binding", target.name, [err.FieldError("Required", "target.name")])
        ctx.store.bind(str(target.namespace), target.name, node)
        return await send(
            request,
            ctx,
            201,
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201},
        )
    if target.name is not None:
        raise err.method_not_allowed()
    obj = _object_body(await _body(request))
    created = ctx.store.create(rt.name, obj, namespace=target.namespace)
    return await send(request, ctx, 201, render_one(request, ctx, rt, created))


async def update(request: web.Request, ctx: Context, target: Target) -> web.StreamResponse:
    if target.name is None:
        raise err.method_not_allowed()
    obj = _object_body(await _body(request))
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise err.bad_request("metadata must be an object")
    if meta.get("name") is not None and meta.get("name") != target.name:
        raise err.bad_request("the name of the object and the name on the URL do not match")
    meta["name"] = target.name
    updated = ctx.store.update(
        target.rt.name, obj, namespace=target.namespace, subresource=target.subresource
    )
    return await send(request, ctx, 200, render_one(request, ctx, target.rt, updated))


async def patch(request: web.Request, ctx: Context, target: Target) -> web.StreamResponse:
    if target.name is None:
        raise err.method_not_allowed()
    content_type = request.content_type
    patch_type = _PATCH_TYPES.get(content_type)
    if patch_type is None:
        raise err.unsupported_media_type(content_type)
    data = await _body(request)
    rt = target.rt
    if patch_type == "apply":
        # Server-side apply, approximated: create when absent, else a strategic merge of the applied fields.
        applied = _object_body(data)
        try:
            ctx.store.get(rt.name, target.namespace, target.name)
        except err.ApiError as exc:
            if exc.code != 404:
                raise
            meta = applied.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise err.bad_request("metadata must be an object") from exc
            meta["name"] = target.name
            created = ctx.store.create(rt.name, applied, namespace=target.namespace)
            return await send(request, ctx, 201, render_one(request, ctx, rt, created))
        patch_type = "strategic"
        data = {k: v for k, v in applied.items() if k not in ("kind", "apiVersion")}
    patched = ctx.store.patch(
        rt.name, target.namespace, target.name, data, patch_type=patch_type, subresource=target.subresource
    )
    return await send(request, ctx, 200, render_one(request, ctx, rt, patched))


def _delete_options(request: web.Request, raw: bytes) -> tuple[int | None, str | None, str | None]:
    """(gracePeriodSeconds, preconditions.uid, preconditions.resourceVersion) from the DeleteOptions body
    and the query (the query wins, as in the real server's option decoding)."""
    options: Mapping[str, Any] = {}
    if raw.strip():
        try:
            options = _object_body(loads(raw))
        except ValueError as exc:
            raise err.bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc
    grace = options.get("gracePeriodSeconds")
    if "gracePeriodSeconds" in request.query:
        text = request.query["gracePeriodSeconds"]
        try:
            grace = int(text, 10)
        except ValueError:
            raise err.bad_request(f'strconv.ParseInt: parsing "{text}": invalid syntax') from None
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
        raise err.bad_request(
            "json: cannot unmarshal into Go struct field DeleteOptions.gracePeriodSeconds of type int64"
        )
    preconditions = options.get("preconditions") or {}
    if not isinstance(preconditions, dict):
        raise err.bad_request("json: cannot unmarshal into Go struct field DeleteOptions.preconditions")
    uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
    return grace, None if uid is None else str(uid), None if rv is None else str(rv)


async def delete(request: web.Request, ctx: Context, target: Target) -> web.StreamResponse:
    rt = target.rt
    grace, uid, rv = _delete_options(request, await request.read() if request.can_read_body else b"")
    if target.name is None:
        return await _delete_collection(request, ctx, target, grace)
    result = ctx.store.delete(
        rt.name, target.namespace, target.name, grace_period_seconds=grace, uid=uid, resource_version=rv
    )
    if rt.returns_deleted_object or not result.deleted:
        return await send(request, ctx, 200, render_one(request, ctx, rt, result.object))
    details: JsonObj = {"name": target.name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.name
    details["uid"] = (result.object.get("metadata") or {}).get("uid", "")
    return await send(
        request,
        ctx,
        200,
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details},
    )


async def _delete_collection(
    request: web.Request, ctx: Context, target: Target, grace: int | None
) -> web.StreamResponse:
    rt = target.rt
    opts = ListOptions.from_query(request.query)
    result = ctx.store.list(
        rt.name,
        namespace=target.namespace,
        label_selector=opts.label_selector,
        field_selector=opts.field_selector,
    )
    names = [
        (str(o["metadata"].get("namespace") or "") or None, str(o["metadata"]["name"])) for o in result.items
    ]
    deleted = [ctx.store.delete(rt.name, ns, name, grace_period_seconds=grace).object for ns, name in names]
    body = {
        "kind": rt.list_kind,
        "apiVersion": rt.api_version,
        "metadata": {"resourceVersion": str(ctx.store.resource_version)},
        "items": deleted,
    }
    return await send(request, ctx, 200, body)

"""The start-up gateway check: warn about each namespace that runs Istio gateway pods but is not kept.

A gateway's Service, pods and endpoints are what istiod builds its listeners and routes from, so a
gateway namespace discofilter filters out loses its config, as it does in istiod itself when
``discoverySelectors`` leave it out (istio/istio#33586: the ingress gateway in istio-system lost
every listener until istio-system was selected; #39520 for the egress gateway). istiod's own namespace
is kept by name (``Settings.istiod_namespace``); any other gateway namespace needs a mesh label.

One-off and best effort: once membership has synced, one LIST per gateway label selector, paged with
``limit``, with discofilter's own credentials (RBAC: ``list`` on pods, cluster-wide). No watch: a
gateway deployed later is the operator's change, made with the README's rule in hand, and a standing
pod watch would cost discofilter what it exists to save istiod. A failure (403 included) is one warning
line, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final, cast

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, ApiException, CoreV1Api

from discofilter.app import Runtime
from discofilter.core.membership import Membership
from discofilter.core.selectors import SelectorSet
from discofilter.errors import UpstreamError, raise_for_status

log = logging.getLogger("discofilter.gateways")

GATEWAY_SELECTORS: Final = ("istio.io/gateway-name", "istio in (ingressgateway,egressgateway)")
"""Gateway pods: Gateway API gateways that istiod deploys carry istio.io/gateway-name; the gateway
chart's ingress and egress gateways carry istio=ingressgateway / istio=egressgateway. A label selector
cannot OR two keys, hence two LISTs."""

PAGE: Final = 500
"""Pods per LIST page, as kubectl's default chunk size: gateway pods are few, but a selector the API
server cannot index walks every pod, and a page bounds each answer."""

MAX_NAMED: Final = 100
"""Namespaces warned about one per line; past it one line gives the count (as meshwatch does)."""


def unkept_gateways(
    gateway_namespaces: Iterable[str], membership: Membership, istiod: SelectorSet | None
) -> list[str]:
    """The warning lines for gateway namespaces: not kept by discofilter, or kept but not selected by
    istiod's own discoverySelectors (``istiod``; None when not known or selecting everything)."""
    lines = []
    for ns in sorted(set(gateway_namespaces)):
        if ns not in membership:
            lines.append(
                f"namespace {ns} runs Istio gateway pods but is not kept (selectors "
                f"{membership.selectors}): istiod will never see their Service, pods or endpoints; "
                "select it, as Istio's discoverySelectors must select gateway namespaces"
            )
        elif istiod is not None and ns not in membership.matching(istiod):
            lines.append(
                f"namespace {ns} runs Istio gateway pods, but istiod's discoverySelectors ({istiod}) do "
                "not select it, so istiod ignores them itself (istio/istio#33586); label it to match"
            )
    return lines


async def _gateway_namespaces(api: CoreV1Api) -> set[str]:
    found: set[str] = set()
    for selector in GATEWAY_SELECTORS:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"_continue": token} if token else {}
            resp = cast(
                aiohttp.ClientResponse,
                await api.list_pod_for_all_namespaces(
                    label_selector=selector, limit=PAGE, _preload_content=False, **kwargs
                ),
            )
            async with resp:
                body = await resp.read()
            # kubernetes-asyncio raises ApiException only when it preloads the body itself.
            hint = " (discofilter needs list on pods)" if resp.status in (401, 403) else ""
            raise_for_status(resp.status, resp.reason, body, "gateway pod list", hint)
            doc = orjson.loads(body)
            for item in doc.get("items") or []:
                ns = (item.get("metadata") or {}).get("namespace")
                if isinstance(ns, str):
                    found.add(ns)
            token = (doc.get("metadata") or {}).get("continue") or None
            if token is None:
                break
    return found


async def check_gateways(runtime: Runtime) -> None:
    """Once membership has synced: say what is kept by name, and warn about unkept gateway namespaces."""
    await runtime.tracker.ready.wait()
    membership = runtime.membership
    kept = membership.always_kept
    if kept is None:
        log.info("no namespace is kept by name (--istiod-namespace ''): only the selectors decide")
    elif membership.exists(kept):
        log.info("namespace %s (istiod's) is kept whatever its labels", kept)
    else:
        log.warning(
            "namespace %s (--istiod-namespace or POD_NAMESPACE) does not exist; it is kept once it does",
            kept,
        )
    try:
        async with ApiClient(runtime.upstream._config) as client:
            namespaces = await _gateway_namespaces(CoreV1Api(client))
    except (UpstreamError, ApiException) as exc:
        log.warning(
            "cannot list gateway pods to check their namespaces are kept (%s); check by hand that every "
            "gateway namespace is selected",
            exc,
        )
        return
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        log.warning("cannot list gateway pods to check their namespaces are kept (%s)", exc)
        return
    mesh = runtime.mesh.current if runtime.mesh is not None else None
    istiod = None if mesh is None or mesh.selects_everything else mesh.selectors
    lines = unkept_gateways(namespaces, runtime.membership, istiod)
    for line in lines[:MAX_NAMED]:
        log.warning("%s", line)
    if len(lines) > MAX_NAMED:
        log.warning("... and %d more gateway namespaces with the same problem", len(lines) - MAX_NAMED)


@contextlib.asynccontextmanager
async def gateways_checked(runtime: Runtime) -> AsyncIterator[None]:
    """Runs ``check_gateways`` beside the body; it is cancelled if still running when the body ends."""
    task = asyncio.create_task(check_gateways(runtime), name="gateway-check")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

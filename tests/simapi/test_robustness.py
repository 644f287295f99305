"""Whatever a client sends, the simulated server answers with a Status, never a crash.

Hypothesis throws JSON made of the field names the server looks at (so the checks, defaults and printers
are reached) at the store's write verbs, then renders what was accepted every way a client can ask for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from discofilter.simapi import RESOURCES, ApiError, Store
from discofilter.simapi.encoding import encode_body
from discofilter.simapi.tables import partial_list, table
from tests.simapi.conftest import CAPTURE_TIME, Sim

FIELDS = [
    "metadata",
    "name",
    "namespace",
    "generateName",
    "labels",
    "annotations",
    "finalizers",
    "uid",
    "resourceVersion",
    "deletionTimestamp",
    "spec",
    "status",
    "containers",
    "initContainers",
    "image",
    "ports",
    "port",
    "containerPort",
    "nodePort",
    "protocol",
    "targetPort",
    "resources",
    "requests",
    "limits",
    "phase",
    "conditions",
    "type",
    "containerStatuses",
    "initContainerStatuses",
    "state",
    "lastState",
    "terminated",
    "waiting",
    "running",
    "reason",
    "exitCode",
    "restartCount",
    "ready",
    "started",
    "finishedAt",
    "podIPs",
    "ip",
    "nodeName",
    "readinessGates",
    "conditionType",
    "selector",
    "clusterIP",
    "externalIPs",
    "subsets",
    "addresses",
    "endpoints",
    "data",
    "stringData",
    "secrets",
    "holderIdentity",
    "livenessProbe",
    "httpGet",
    "addressType",
    "loadBalancer",
    "ingress",
    "hostname",
    "nodeInfo",
    "unschedulable",
    "involvedObject",
]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70000), st.sampled_from(["", "x", "Running", "TCP", "a=b", "1"])
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(FIELDS), children, max_size=5)
    ),
    max_leaves=25,
)
OBJECTS = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"name": st.just("x")}, optional={"labels": JSON, "finalizers": JSON}
        )
    },
    optional={"spec": JSON, "status": JSON, "data": JSON, "subsets": JSON, "endpoints": JSON, "ports": JSON},
)


def _render(store: Store, resource: str) -> None:
    rt = RESOURCES[resource]
    items = list(store.objects(resource))
    for doc in (
        store.list(resource).body(),
        table(rt, items, {}, now=CAPTURE_TIME),
        partial_list(items, {}),
    ):
        encode_body(doc)


@pytest.mark.parametrize("resource", sorted(RESOURCES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=OBJECTS, patch=JSON)
def test_writes_answer_or_refuse(resource: str, obj: dict[str, Any], patch: Any) -> None:
    store = Store(clock=lambda: CAPTURE_TIME)
    store.create("namespaces", {"metadata": {"name": "default"}})
    namespace = "default" if RESOURCES[resource].namespaced else None
    try:
        store.create(resource, obj, namespace=namespace)
    except ApiError:
        return
    _render(store, resource)
    for patch_type in ("merge", "strategic", "json"):
        try:
            store.patch(resource, namespace, "x", patch, patch_type=patch_type)
        except ApiError:
            continue
        _render(store, resource)
    with contextlib.suppress(ApiError):
        store.delete(resource, namespace, "x")
    _render(store, resource)


async def test_http_fuzz_never_gets_a_server_error(
    sim: Sim, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Seeded random requests over the routes, methods, bodies and parameters a client could garble."""
    rng = random.Random(7)
    paths = [
        "/api/v1/pods",
        "/api/v1/namespaces/mesh-a/pods",
        "/api/v1/namespaces/mesh-a/pods/checkout-d8fdjt9jxq-6sfbt",
        "/api/v1/namespaces/mesh-a/pods/checkout-d8fdjt9jxq-6sfbt/status",
        "/api/v1/namespaces/mesh-a/pods/checkout-d8fdjt9jxq-6sfbt/binding",
        "/api/v1/namespaces/mesh-a/pods/checkout-d8fdjt9jxq-6sfbt/log",
        "/api/v1/namespaces/mesh-a",
        "/api/v1/namespaces/mesh-a/configmaps",
        "/api/v1/namespaces/mesh-a/configmaps/x",
        "/api/v1/nodes/n",
        "/apis/discovery.k8s.io/v1/namespaces/mesh-a/endpointslices",
        "/apis/coordination.k8s.io/v1/leases",
        "/api/v1/watch/pods",
        "/api",
        "/apis/nope",
        "/api/v2/pods",
        "/api/v1/namespaces/mesh-a/nope/x/y/z",
    ]
    queries = [
        "",
        "watch=1&timeoutSeconds=1",
        "limit=-1",
        "limit=x",
        "continue=%00",
        "labelSelector=%28",
        "fieldSelector=a",
        "resourceVersion=99999999&watch=1&timeoutSeconds=1",
        "resourceVersionMatch=Exact&resourceVersion=x",
        "sendInitialEvents=1&watch=1&resourceVersionMatch=NotOlderThan&timeoutSeconds=1",
        "gracePeriodSeconds=q",
        "includeObject=Object",
        "container=nope",
    ]
    bodies: list[bytes] = [
        b"",
        b"{",
        b"[]",
        b"null",
        b'"x"',
        b'{"metadata":[]}',
        b'{"metadata":{"name":5}}',
        b'{"metadata":{"name":"x","labels":{"a":1}},"spec":{"containers":"no"}}',
        b'{"target":"n"}',
        b'[{"op":"move","path":"/x"}]',
        b'{"gracePeriodSeconds":"soon","preconditions":[]}',
        b'{"metadata":{"name":"x"},"data":{"k":"v"}}',
    ]
    content_types = [
        "application/json",
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
        "text/plain",
    ]
    accepts = [
        "application/json",
        "application/json;as=Table;v=v1;g=meta.k8s.io",
        "*/*",
        "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
        "application/vnd.kubernetes.protobuf",
    ]
    for _ in range(400):
        method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
        query = rng.choice(queries)
        url = URL(sim.url + rng.choice(paths) + ("?" + query if query else ""), encoded=True)
        headers = {"Content-Type": rng.choice(content_types), "Accept": rng.choice(accepts)}
        async with http.request(method, url, data=rng.choice(bodies), headers=headers) as resp:
            assert resp.status < 500, (method, url, resp.status)
            with contextlib.suppress(TimeoutError):  # a watch streams on; its status is what counts
                await asyncio.wait_for(resp.read(), 0.1)
    async with http.get(sim.url + "/api/v1/pods") as resp:
        assert resp.status == 200
    # A handler that failed after its headers went out would only show in the server's log.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []

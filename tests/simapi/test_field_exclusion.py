"""``fieldSelector=metadata.namespace!=A,metadata.namespace!=B``: what server-side exclusion asks of the API
server, on LIST and WATCH of the four filtered kinds.

kube-apiserver 1.28 accepts such selectors on pods, services, endpoints and endpointslices, ANDs the
requirements, evaluates them in its watch cache before serializing, and combines them with istiod's own
``status.phase!=Failed`` (REFERENCE.md, "Field selectors on metadata.namespace", tested there with 42 and
2,042 requirements). The benchmark's exclusion variant and its replay pump rely on simapi behaving so.
Expected answers come from the captures (their objects and their namespaces), never from simapi.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests import fixtures
from tests.simapi.conftest import SimFactory, capture, seeded_store
from tests.simapi.test_watch import LIVE_CASES, WATCH_PATHS, events_then_bookmark, read_watch, replay, split

KINDS = ("pods", "services", "endpoints", "endpointslices")
EXCLUDED = ("plain-1", "plain-2")
FILLER = tuple(f"never-there-{i}" for i in range(100))
"""Requirements naming namespaces that do not exist: a selector as long as the default K of exclusions."""


def exclusion(*namespaces: str, base: str = "") -> str:
    reqs = [base] if base else []
    reqs += [f"metadata.namespace!={ns}" for ns in namespaces]
    return ",".join(reqs)


def namespaces_of(items: list[dict[str, Any]]) -> list[str]:
    return [str(i["metadata"]["namespace"]) for i in items]


@pytest.mark.parametrize("resource", KINDS)
@pytest.mark.parametrize("filler", [(), FILLER], ids=["two", "102-requirements"])
async def test_list_leaves_out_the_excluded_namespaces(
    sim_factory: SimFactory, http: aiohttp.ClientSession, resource: str, filler: tuple[str, ...]
) -> None:
    sim = await sim_factory(seeded_store())
    items = capture(f"list-{resource}.json")["items"]
    expected = [ns for ns in namespaces_of(items) if ns not in EXCLUDED]
    assert len(expected) < len(items), "the capture has objects in the excluded namespaces"
    params = {"fieldSelector": exclusion(*EXCLUDED, *filler)}
    async with http.get(f"{sim.url}{WATCH_PATHS[resource]}", params=params) as resp:
        assert resp.status == 200, await resp.text()
        body = json.loads(await resp.read())
    assert sorted(namespaces_of(body["items"])) == sorted(expected)


async def test_pod_list_combines_exclusion_with_istiods_own_requirement(
    sim_factory: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(seeded_store())
    items = capture("list-pods.json")["items"]
    expected = sorted(
        i["metadata"]["name"]
        for i in items
        if i["metadata"]["namespace"] != "plain-1" and i.get("status", {}).get("phase") != "Failed"
    )
    params = {"fieldSelector": exclusion("plain-1", base="status.phase!=Failed")}
    async with http.get(f"{sim.url}/api/v1/pods", params=params) as resp:
        assert resp.status == 200
        got = sorted(i["metadata"]["name"] for i in json.loads(await resp.read())["items"])
    assert got == expected


@pytest.mark.parametrize(("watch", "base", "resource"), [c for c in LIVE_CASES if c[2] in KINDS][:4])
async def test_watch_never_sends_events_of_excluded_namespaces(
    sim_factory: SimFactory, http: aiohttp.ClientSession, watch: str, base: str, resource: str
) -> None:
    store = seeded_store(**{resource: base})
    sim = await sim_factory(store)
    events, _ = split(watch)
    kept = [e for e in events if json.loads(e)["object"]["metadata"]["namespace"] not in EXCLUDED]
    assert 0 < len(kept) < len(events), "the capture has events on both sides"
    rv = capture(base)["metadata"]["resourceVersion"]
    params = {
        "watch": "1",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "2",
        "resourceVersion": rv,
        "fieldSelector": exclusion(*EXCLUDED, *FILLER),
    }
    async with http.get(f"{sim.url}{WATCH_PATHS[resource]}", params=params) as resp:
        assert resp.status == 200
        replay(store, events)
        got = await read_watch(resp, events_then_bookmark(len(kept)))
    # The kept events, byte for byte as the capture has them: nothing of plain-1 or plain-2.
    assert [x for x in got if not x.startswith(b'{"type":"BOOKMARK"')] == kept


@pytest.mark.parametrize("watch", [False, True], ids=["list", "watch"])
async def test_an_unsupported_field_is_the_real_400(
    sim_factory: SimFactory, http: aiohttp.ClientSession, watch: bool
) -> None:
    sim = await sim_factory(seeded_store())
    params = {"fieldSelector": "metadata.namespace!=plain-1,spec.foo=bar"}
    if watch:
        params |= {"watch": "1", "resourceVersion": "0"}
    async with http.get(f"{sim.url}/api/v1/pods", params=params) as resp:
        assert resp.status == 400
        body = await resp.read()
    assert body.rstrip(b"\n") == fixtures.body("error-400-fieldselector.json").rstrip(b"\n")

"""LIST answers of the simulated server against the real captures: bytes, headers, paging, gzip, tables."""

from __future__ import annotations

import gzip
import json

import aiohttp
import pytest

from discofilter.simapi import Store
from tests import fixtures
from tests.simapi.conftest import BASE_LISTS, Sim, SimFactory, capture, header_names, seeded_store

JSON = {"Accept": "application/json"}
LIST_PATHS = {
    "pods": "/api/v1/pods",
    "services": "/api/v1/services",
    "endpoints": "/api/v1/endpoints",
    "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
    "namespaces": "/api/v1/namespaces",
}


@pytest.mark.parametrize("resource", sorted(BASE_LISTS))
async def test_seeded_list_is_byte_identical_to_the_capture(
    sim: Sim, http: aiohttp.ClientSession, resource: str
) -> None:
    async with http.get(sim.url + LIST_PATHS[resource], headers=JSON) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert body == fixtures.body(BASE_LISTS[resource])
        _, real = fixtures.headers(BASE_LISTS[resource])
        assert header_names(resp.headers) == header_names(real)
        assert resp.headers["Content-Type"] == dict(real)["Content-Type"] == "application/json"
        assert "Content-Length" not in resp.headers  # chunked, like every list over 2 KiB


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/v1/namespaces/mesh-a/pods", "list-pods-mesh-a.json"),
        ("/api/v1/pods?limit=2", "list-pods-page1.json"),
    ],
)
async def test_namespaced_and_paged_lists_are_byte_identical(
    sim: Sim, http: aiohttp.ClientSession, path: str, name: str
) -> None:
    async with http.get(sim.url + path, headers=JSON) as resp:
        assert await resp.read() == fixtures.body(name)


async def test_second_page_follows_the_real_continue_token(sim: Sim, http: aiohttp.ClientSession) -> None:
    token = capture("list-pods-page1.json")["metadata"]["continue"]
    async with http.get(f"{sim.url}/api/v1/pods?limit=2&continue={token}", headers=JSON) as resp:
        assert await resp.read() == fixtures.body("list-pods-page2.json")


async def test_paging_walks_every_item_at_a_constant_resource_version(
    sim: Sim, http: aiohttp.ClientSession
) -> None:
    names: list[str] = []
    token = ""
    versions = set()
    first = True
    while first or token:
        first = False
        query = "limit=5" + (f"&continue={token}" if token else "")
        async with http.get(f"{sim.url}/api/v1/pods?{query}", headers=JSON) as resp:
            page = json.loads(await resp.read())
        # A write between pages must not show up: the token pins the list's resourceVersion.
        sim.store.patch_labels("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"churn": str(len(names))})
        names += [i["metadata"]["name"] for i in page["items"]]
        versions.add(page["metadata"]["resourceVersion"])
        token = page["metadata"].get("continue", "")
    assert versions == {"503"}
    assert names == [i["metadata"]["name"] for i in capture("list-pods.json")["items"]]


async def test_paging_with_a_selector_omits_remaining_item_count(store: Store) -> None:
    page = store.list("pods", label_selector="app=checkout", limit=1)
    assert page.continue_token and page.remaining_item_count is None
    unfiltered = store.list("pods", limit=1)
    assert unfiltered.remaining_item_count == 17


async def test_pretty_json_for_curl_user_agents(sim: Sim, http: aiohttp.ClientSession) -> None:
    headers = JSON | {"User-Agent": "curl/7.88.1"}
    async with http.get(sim.url + "/api/v1/namespaces", headers=headers) as resp:
        assert await resp.read() == fixtures.body("list-namespaces.curl-ua-pretty.json")


async def test_list_in_a_missing_namespace_is_an_empty_200(
    sim_factory: SimFactory, http: aiohttp.ClientSession
) -> None:
    store = seeded_store()
    for _ in range(606 - store.resource_version):
        store.patch_labels("namespaces", None, "smoke-a", {"bump": str(store.resource_version)})
    sim = await sim_factory(store)
    async with http.get(sim.url + "/api/v1/namespaces/no-such-ns/pods", headers=JSON) as resp:
        body = await resp.read()
        assert body == fixtures.body("list-pods-unknown-namespace.json")
        _, real = fixtures.headers("list-pods-unknown-namespace.json")
        assert header_names(resp.headers) == header_names(real)
        assert resp.headers["Content-Length"] == str(len(body))


async def test_gzip_over_the_threshold_only(sim: Sim, http: aiohttp.ClientSession) -> None:
    headers = JSON | {"Accept-Encoding": "gzip"}
    async with http.get(sim.url + "/api/v1/pods", headers=headers) as resp:
        body = await resp.read()
        _, real = fixtures.headers("list-pods.json.gz")
        assert header_names(resp.headers) == header_names(real)
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Vary"] == "Accept-Encoding"
        assert gzip.decompress(body) == gzip.decompress(fixtures.body("list-pods.json.gz"))
    async with http.get(sim.url + "/api/v1/services", headers=headers) as resp:
        assert "Content-Encoding" not in resp.headers
        assert await resp.read() == fixtures.body("list-services.gzip-not-applied.json")


async def test_table_matches_the_capture(sim: Sim, http: aiohttp.ClientSession) -> None:
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    async with http.get(sim.url + "/api/v1/pods", headers=headers) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        assert await resp.read() == fixtures.body("list-pods-table.json")


async def test_table_with_kubectl_fallbacks_and_partial_metadata(
    sim: Sim, http: aiohttp.ClientSession
) -> None:
    kubectl = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
        "application/json"
    )
    async with http.get(sim.url + "/api/v1/pods", headers={"Accept": kubectl}) as resp:
        assert json.loads(await resp.read())["kind"] == "Table"
    partial = {"Accept": "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"}
    async with http.get(sim.url + "/api/v1/pods", headers=partial) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        assert await resp.read() == fixtures.body("list-pods-partial.json")


async def test_protobuf_preference_is_answered_with_json(sim: Sim, http: aiohttp.ClientSession) -> None:
    istiod = {"Accept": "application/vnd.kubernetes.protobuf,application/json"}
    async with http.get(sim.url + "/api/v1/namespaces", headers=istiod) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        assert await resp.read() == fixtures.body("list-namespaces.json")


async def test_resource_version_zero_is_served_whole(sim: Sim, http: aiohttp.ClientSession) -> None:
    # 1.28 serves resourceVersion=0 from the watch cache, which ignored limit.
    async with http.get(sim.url + "/api/v1/pods?resourceVersion=0&limit=2", headers=JSON) as resp:
        page = json.loads(await resp.read())
        assert len(page["items"]) == 18 and "continue" not in page["metadata"]


async def test_exact_list_at_an_older_resource_version(store: Store) -> None:
    store.patch_labels("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"new": "label"})
    store.delete("pods", "plain-1", "redis-c6h4d4dlz6-zjf55")
    old = store.list("pods", resource_version="503", resource_version_match="Exact")
    assert old.resource_version == 503
    assert [json.dumps(i) for i in old.items] == [json.dumps(i) for i in capture("list-pods.json")["items"]]
    assert store.list("pods").resource_version == store.resource_version

"""WATCH answers of the simulated server against the real captures.

The churn of each capture is replayed into a store seeded from the list it continued (manifest.json
``relations``); what a watch then sends must be the captured stream, byte for byte, bookmarks included.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from discofilter.simapi import SimSettings, Store
from tests import fixtures
from tests.simapi.conftest import Sim, SimFactory, capture, event_lines, header_names, seeded_store

WATCH_PATHS = {
    "pods": "/api/v1/pods",
    "services": "/api/v1/services",
    "endpoints": "/api/v1/endpoints",
    "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
    "namespaces": "/api/v1/namespaces",
}
KIND_RESOURCE = {
    "Pod": "pods",
    "Service": "services",
    "Endpoints": "endpoints",
    "EndpointSlice": "endpointslices",
}
KIND_RESOURCE["Namespace"] = "namespaces"


def split(name: str) -> tuple[list[bytes], list[bytes]]:
    """A capture's event lines and bookmark lines."""
    lines = event_lines(fixtures.body(name))
    return [x for x in lines if not x.startswith(b'{"type":"BOOKMARK"')], [
        x for x in lines if x.startswith(b'{"type":"BOOKMARK"')
    ]


def replay(store: Store, lines: list[bytes]) -> None:
    for line in lines:
        event = json.loads(line)
        store.apply(KIND_RESOURCE[event["object"]["kind"]], event["type"], event["object"])


async def read_watch(
    resp: aiohttp.ClientResponse, stop: Callable[[list[bytes]], bool] | None = None
) -> list[bytes]:
    """The event lines of a watch until it ends, or until ``stop(lines)`` says enough (then the client hangs
    up, which the server must take calmly). Asserts that every event ends with a newline."""
    lines: list[bytes] = []
    rest = b""
    async for chunk in resp.content.iter_any():
        *complete, rest = (rest + chunk).split(b"\n")
        lines += [line + b"\n" for line in complete]
        if stop is not None and stop(lines):
            return lines
    assert rest == b"", "every event ends with a newline"
    return lines


def is_bookmark(line: bytes) -> bool:
    return line.startswith(b'{"type":"BOOKMARK"')


def events_then_bookmark(count: int) -> Callable[[list[bytes]], bool]:
    """Stop once ``count`` non-bookmark events and then a bookmark have come."""
    return lambda lines: sum(not is_bookmark(x) for x in lines) >= count and is_bookmark(lines[-1])


# (watch capture, list it continues, resource)
LIVE_CASES = [
    ("watch-pods.json", "list-pods.json", "pods"),
    ("watch-services.json", "list-services.json", "services"),
    ("watch-endpoints.json", "list-endpoints.json", "endpoints"),
    ("watch-endpointslices.json", "list-endpointslices.json", "endpointslices"),
    ("watch-namespaces.json", "list-namespaces-before-ns-watch.json", "namespaces"),
    ("watch-pods-during-ns-changes.json", "list-pods-before-selectors.json", "pods"),
]


@pytest.mark.parametrize(("watch", "base", "resource"), LIVE_CASES)
async def test_live_watch_replays_the_capture_byte_for_byte(
    sim_factory: SimFactory, http: aiohttp.ClientSession, watch: str, base: str, resource: str
) -> None:
    store = seeded_store(**{resource: base})
    sim = await sim_factory(store)
    events, bookmarks = split(watch)
    rv = capture(base)["metadata"]["resourceVersion"]
    query = f"watch=1&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={rv}"
    url = f"{sim.url}{WATCH_PATHS[resource]}?{query}"
    async with http.get(url, headers={"Accept": "application/json"}) as resp:
        _, real = fixtures.headers(watch)
        assert resp.status == 200
        assert header_names(resp.headers) == header_names(real)
        replay(store, events)
        got = await read_watch(resp, events_then_bookmark(len(events)))
    assert [x for x in got if not x.startswith(b'{"type":"BOOKMARK"')] == events
    got_bookmarks = [x for x in got if x.startswith(b'{"type":"BOOKMARK"')]
    assert got_bookmarks, "a watch that saw live events gets bookmarks"
    assert set(got_bookmarks) == set(bookmarks)


async def test_replayed_watch_ends_without_a_bookmark(sim: Sim, http: aiohttp.ClientSession) -> None:
    events, _ = split("watch-pods.json")
    replay(sim.store, events)
    url = f"{sim.url}/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion=503"
    async with http.get(url) as resp:
        got = await read_watch(resp)
    # The replay reached the newest pod RV: nothing newer to bookmark (README fact 6).
    assert got == events


async def test_watch_from_the_head_sends_nothing(sim: Sim, http: aiohttp.ClientSession) -> None:
    url = f"{sim.url}/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion=503"
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with http.get(url) as resp:
        assert await resp.read() == fixtures.body("watch-pods-no-bookmark-at-head.json") == b""
        _, real = fixtures.headers("watch-pods-no-bookmark-at-head.json")
        assert header_names(resp.headers) == header_names(real)
    assert 0.9 < loop.time() - start < 2.0, "ends cleanly at timeoutSeconds"


async def test_too_old_resource_version_is_a_200_with_one_error_event(
    sim_factory: SimFactory, http: aiohttp.ClientSession
) -> None:
    store = Store()
    store.load_list("pods", {"metadata": {"resourceVersion": "400"}, "items": []})
    sim = await sim_factory(store)
    url = f"{sim.url}/api/v1/pods?watch=1&allowWatchBookmarks=true&resourceVersion=1&timeoutSeconds=10"
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == fixtures.body("watch-pods-410.json")
        _, real = fixtures.headers("watch-pods-410.json")
        assert header_names(resp.headers) == header_names(real)
    assert loop.time() - start < 1.0, "the stream ends at once"


async def test_compaction_expires_watches_on_demand(sim: Sim, http: aiohttp.ClientSession) -> None:
    sim.store.patch_labels("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"a": "1"})
    sim.store.patch_labels("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"a": "2"})
    url = f"{sim.url}/api/v1/pods?watch=1&timeoutSeconds=5&resourceVersion=504"
    async with http.get(url) as resp:
        (first,) = await read_watch(resp, lambda lines: len(lines) >= 1)
        assert json.loads(first)["object"]["metadata"]["resourceVersion"] == "505"
    sim.store.compact(505)
    async with http.get(url) as resp:
        (line,) = await read_watch(resp)
        assert json.loads(line)["object"] == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "too old resource version: 504 (505)",
            "reason": "Expired",
            "code": 410,
        }


def _selector_run(store: Store) -> None:
    """The unfiltered churn of the selector run (README "Selector run"), rebuilt from the filtered captures:
    what the field-selector stream shows, plus the eviction and the deletion it hides."""
    field_events = [json.loads(x) for x in split("watch-pods-fieldselector.json")[0]]
    evicted = store.get("pods", "plain-1", "batch-runner-5lq49ql5fw-bhtfn")
    evicted["status"]["phase"] = "Failed"
    evicted["status"]["reason"] = "Evicted"
    evicted["metadata"]["resourceVersion"] = "574"
    store.apply("pods", "MODIFIED", evicted)
    for event in field_events[1:6]:  # qvmgf created and started, 577-580; 6sfbt relabelled, 583
        store.apply("pods", event["type"], event["object"])
    evicted["metadata"]["resourceVersion"] = "585"
    store.apply("pods", "DELETED", evicted)
    store.apply("pods", "MODIFIED", field_events[6]["object"])  # payments-api relabelled, 589


async def test_selector_watches_match_the_captures(
    sim_factory: SimFactory, http: aiohttp.ClientSession
) -> None:
    store = seeded_store(pods="list-pods-before-selectors.json")
    sim = await sim_factory(store)
    base = f"{sim.url}/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion=573"
    label_url = base + "&labelSelector=app%3Dcheckout"
    field_url = base + "&fieldSelector=status.phase%21%3DFailed"
    async with http.get(label_url) as by_label, http.get(field_url) as by_field:
        _selector_run(store)
        got_label, got_field = await asyncio.gather(
            read_watch(by_label, events_then_bookmark(5)), read_watch(by_field, events_then_bookmark(7))
        )
    for got, name in (
        (got_label, "watch-pods-labelselector.json"),
        (got_field, "watch-pods-fieldselector.json"),
    ):
        events, bookmarks = split(name)
        assert [x for x in got if not x.startswith(b'{"type":"BOOKMARK"')] == events, name
        assert {x for x in got if x.startswith(b'{"type":"BOOKMARK"')} == set(bookmarks), name


async def test_selector_membership_changes_become_added_and_deleted(
    sim: Sim, http: aiohttp.ClientSession
) -> None:
    store = sim.store
    url = (
        f"{sim.url}/api/v1/namespaces/mesh-b/pods?watch=1&timeoutSeconds=5&allowWatchBookmarks=1"
        "&labelSelector=rollout%3Dblue"
    )
    async with http.get(url + f"&resourceVersion={store.resource_version}") as resp:
        before = store.get("pods", "mesh-b", "catalog-nr2nvx9ssb-4dfr9")
        joined = store.patch_labels("pods", "mesh-b", "catalog-nr2nvx9ssb-4dfr9", {"rollout": "blue"})
        store.patch_labels("pods", "mesh-b", "catalog-nr2nvx9ssb-4dfr9", {"tier": "x"})
        left = store.patch_labels("pods", "mesh-b", "catalog-nr2nvx9ssb-4dfr9", {"rollout": None})
        store.patch_labels(
            "pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"rollout": "blue"}
        )  # other namespace
        got = [json.loads(x) for x in await read_watch(resp, events_then_bookmark(3)) if not is_bookmark(x)]
    assert [e["type"] for e in got] == ["ADDED", "MODIFIED", "DELETED"]
    assert got[0]["object"]["metadata"] == joined["metadata"]
    deleted = got[2]["object"]["metadata"]
    assert deleted["labels"]["rollout"] == "blue", "DELETED carries the last state that matched"
    assert deleted["resourceVersion"] == left["metadata"]["resourceVersion"], (
        "...with the new resourceVersion"
    )
    assert "rollout" not in before["metadata"]["labels"]


async def test_streaming_list_matches_the_capture(
    sim_factory: SimFactory, http: aiohttp.ClientSession
) -> None:
    added, bookmarks = split("watchlist-pods.json")
    store = Store()
    items = []
    for line in added:
        obj = json.loads(line)["object"]
        items.append({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
    store.load_list("pods", {"metadata": {"resourceVersion": "621"}, "items": items})
    sim = await sim_factory(store)
    url = (
        f"{sim.url}/api/v1/pods?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        "&allowWatchBookmarks=true&timeoutSeconds=1"
    )
    async with http.get(url) as resp:
        _, real = fixtures.headers("watchlist-pods.json")
        assert header_names(resp.headers) == header_names(real)
        got = await read_watch(resp)
    assert sorted(got[:-1]) == sorted(added)
    assert got[-1:] == bookmarks, "one initial-events-end bookmark, and none after it with nothing newer"


async def test_streaming_list_then_live_events(sim: Sim, http: aiohttp.ClientSession) -> None:
    url = (
        f"{sim.url}/api/v1/namespaces/mesh-a/pods?watch=true&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"
    )
    async with http.get(url) as resp:
        sim.store.patch_labels("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"x": "y"})
        got = [json.loads(x) for x in await read_watch(resp, events_then_bookmark(4))]
    types = [e["type"] for e in got]
    assert types[:4] == ["ADDED"] * 3 + ["BOOKMARK"]
    assert got[3]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert got[3]["object"]["metadata"]["resourceVersion"] == "503"
    assert types[4] == "MODIFIED" and set(types[5:]) == {"BOOKMARK"} and len(types) > 5
    assert all(e["object"]["metadata"]["resourceVersion"] == "504" for e in got[5:])


async def test_watch_from_zero_sends_the_current_state_first(sim: Sim, http: aiohttp.ClientSession) -> None:
    async with http.get(
        f"{sim.url}/api/v1/namespaces/mesh-a/pods?watch=1&resourceVersion=0&timeoutSeconds=5"
    ) as r:
        got = [json.loads(x) for x in await read_watch(r, lambda lines: len(lines) >= 3)]
    assert [e["type"] for e in got] == ["ADDED"] * 3
    assert got[0]["object"]["kind"] == "Pod" and list(got[0]["object"])[:2] == ["kind", "apiVersion"]


async def test_table_watch(sim: Sim, http: aiohttp.ClientSession) -> None:
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    url = f"{sim.url}/api/v1/namespaces/mesh-a/pods?watch=true&resourceVersion=503&timeoutSeconds=5"
    async with http.get(url, headers=headers) as resp:
        sim.store.patch_labels("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"x": "y"})
        sim.store.delete("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt")
        got: list[dict[str, Any]] = [
            json.loads(x) for x in await read_watch(resp, lambda lines: len(lines) >= 3)
        ]
    assert [e["type"] for e in got] == ["MODIFIED", "MODIFIED", "DELETED"]
    assert all(e["object"]["kind"] == "Table" and len(e["object"]["rows"]) == 1 for e in got)
    assert got[0]["object"]["columnDefinitions"][0]["name"] == "Name"
    assert got[1]["object"]["columnDefinitions"] is None, "headers only on the first event"
    assert got[1]["object"]["rows"][0]["cells"][2] == "Terminating"
    assert got[2]["object"]["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


async def test_watch_timeout_and_flush(
    sim_factory: SimFactory, store: Store, http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(store, SimSettings(bookmark_interval=60.0))
    url = f"{sim.url}/api/v1/pods?watch=1&resourceVersion=503&timeoutSeconds=1"
    async with http.get(url) as resp:
        store.patch_labels("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"x": "y"})
        first = await asyncio.wait_for(resp.content.readuntil(b"\n"), 1.0)  # flushed at once, not at the end
        assert json.loads(first)["type"] == "MODIFIED"
        assert await resp.read() == b""


async def test_a_stalled_watcher_is_cut_off(
    sim_factory: SimFactory, store: Store, http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(store, SimSettings(watch_queue_limit=3))
    url = f"{sim.url}/api/v1/pods?watch=1&resourceVersion=503&timeoutSeconds=5"
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with http.get(url) as resp:
        for n in range(10):  # no await in between: the watcher cannot drain
            store.patch_labels("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"n": str(n)})
        assert await resp.read() == b""
    assert loop.time() - start < 3.0

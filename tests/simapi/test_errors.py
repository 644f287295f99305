"""Refusals of the simulated server against the real captures: Status bodies and headers, byte for byte."""

from __future__ import annotations

import aiohttp
import pytest

from discofilter.simapi import SimSettings, Store
from tests import fixtures
from tests.simapi.conftest import FAST, Sim, SimFactory, header_names

TOKENS = {"admin-token": "admin", "lowpriv-token": "lowpriv"}
AUTH = SimSettings(
    bookmark_interval=FAST.bookmark_interval, tokens=TOKENS, forbidden_users=frozenset({"lowpriv"})
)


async def _check(http: aiohttp.ClientSession, url: str, name: str, token: str | None = "admin-token") -> None:
    """GET ``url`` and compare status, body and header names with capture ``name``."""
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.get(url, headers=headers) as resp:
        body = await resp.read()
        status, real = fixtures.headers(name)
        assert resp.status == status
        assert body == fixtures.body(name)
        assert header_names(resp.headers) == header_names(real)
        assert resp.headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize(
    "name",
    [
        "error-404-pod.json",
        "error-404-namespace.json",
        "error-404-unknown-resource.json",
        "error-400-labelselector.json",
        "error-400-labelselector-watch.json",
        "error-400-fieldselector.json",
        "error-410-list-exact.json",
    ],
)
async def test_error_bodies_match(
    sim_factory: SimFactory, store: Store, http: aiohttp.ClientSession, name: str
) -> None:
    sim = await sim_factory(store, AUTH)
    await _check(http, sim.url + fixtures.request_path(name), name)


async def test_expired_continue_token(
    sim_factory: SimFactory, store: Store, http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(store, AUTH)
    store.patch_labels("namespaces", None, "default", {"bump": "1"})
    store.compact()  # like etcdctl compact: the token's resourceVersion 503 is gone
    await _check(
        http, sim.url + fixtures.request_path("error-410-list-continue.json"), "error-410-list-continue.json"
    )


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("error-401-bad-token.json", "made-up-token"),
        ("error-403-anonymous.json", None),
        ("error-403-lowpriv.json", "lowpriv-token"),
        ("error-403-lowpriv-watch.json", "lowpriv-token"),
    ],
)
async def test_authentication_and_authorization(
    sim_factory: SimFactory, store: Store, http: aiohttp.ClientSession, name: str, token: str | None
) -> None:
    sim = await sim_factory(store, AUTH)
    await _check(http, sim.url + fixtures.request_path(name), name, token)


async def test_lowpriv_may_still_read_namespaces(
    sim_factory: SimFactory, store: Store, http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(store, AUTH)
    headers = {"Authorization": "Bearer lowpriv-token"}
    async with http.get(sim.url + "/api/v1/namespaces", headers=headers) as resp:
        assert resp.status == 200
    async with http.get(sim.url + "/version") as resp:  # discovery is open to anonymous users
        assert resp.status == 200


async def test_watch_list_refused_when_the_gate_is_off(
    sim_factory: SimFactory, store: Store, http: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(store, SimSettings(watch_list_enabled=False))
    name = "watchlist-pods-gate-off.json"
    await _check(http, sim.url + fixtures.request_path(name), name)


async def test_send_initial_events_requires_not_older_than(sim: Sim, http: aiohttp.ClientSession) -> None:
    async with http.get(sim.url + "/api/v1/pods?watch=1&sendInitialEvents=true") as resp:
        assert resp.status == 422
        status = await resp.json()
        problem = "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
        assert (
            status["message"]
            == f'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: {problem}'
        )
        assert status["details"]["causes"] == [
            {
                "reason": "FieldValueForbidden",
                "message": f"Forbidden: {problem}",
                "field": "resourceVersionMatch",
            }
        ]


@pytest.mark.parametrize(
    "query",
    [
        "limit=ten",
        "timeoutSeconds=x&watch=1",
        "resourceVersion=abc",
        "continue=not-a-token",
        "labelSelector=a%3D%3D%3D",
        "fieldSelector=metadata.name",
        "resourceVersionMatch=Sometimes&resourceVersion=5",
        "watch=1&resourceVersion=-3",
    ],
)
async def test_bad_input_gets_a_status_not_a_crash(sim: Sim, http: aiohttp.ClientSession, query: str) -> None:
    async with http.get(f"{sim.url}/api/v1/pods?{query}") as resp:
        assert resp.status in (400, 422)
        status = await resp.json()
        assert status["kind"] == "Status" and status["code"] == resp.status
    async with http.get(sim.url + "/api/v1/pods", headers={"Accept": "application/json"}) as resp:
        assert resp.status == 200  # still serving

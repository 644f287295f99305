"""Shared pieces of the simapi tests: stores seeded from the real captures, and servers on real ports."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from discofilter.simapi import REQUEST_LOG, RecordedRequest, SimSettings, Store, serve
from tests import fixtures

# Capture time of the list files (their Date header): the clock of stores whose tables are compared.
CAPTURE_TIME = 1795314771.0  # 2026-11-22T02:32:51Z

BASE_LISTS = {
    "pods": "list-pods.json",
    "services": "list-services.json",
    "endpoints": "list-endpoints.json",
    "endpointslices": "list-endpointslices.json",
    "namespaces": "list-namespaces.json",
}
FAST = SimSettings(bookmark_interval=0.2, bookmark_lead=0.1)
"""Test timings: bookmarks every 0.2 s and 0.1 s before a watch's timeout."""


def capture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fixtures.body(name))
    return data


def seeded_store(**overrides: str) -> Store:
    """A store holding the state of the base captures (RV 503); ``overrides`` swap a resource's list file."""
    store = Store(clock=lambda: CAPTURE_TIME, seed=1)
    for resource, name in {**BASE_LISTS, **overrides}.items():
        store.load_list(resource, capture(name))
    return store


@pytest.fixture
def store() -> Store:
    return seeded_store()


@dataclass
class Sim:
    """A served store."""

    url: str
    store: Store
    app: web.Application

    @property
    def requests(self) -> list[RecordedRequest]:
        log = self.app[REQUEST_LOG]
        return list(log)


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    runners: list[web.AppRunner] = []

    async def start(store: Store, settings: SimSettings = FAST, **kwargs: Any) -> Sim:
        runner, url = await serve(store, settings, **kwargs)
        runners.append(runner)
        return Sim(url, store, runner.app)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def sim(sim_factory: SimFactory, store: Store) -> Sim:
    return await sim_factory(store)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that shows bodies as sent (no gzip decoding) and sends no Accept-Encoding unless told."""
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=["Accept-Encoding"]) as session:
        yield session


def header_names(headers: list[tuple[str, str]] | Any) -> set[str]:
    """Header names, lower-cased, as a set (order and case differ between Go and aiohttp)."""
    return {str(k).lower() for k, _ in (headers.items() if hasattr(headers, "items") else headers)}


def event_lines(body: bytes) -> list[bytes]:
    """The events of a JSON watch body, each with its newline."""
    return [line + b"\n" for line in body.split(b"\n")[:-1]]


def write_kubeconfig(
    path: Path, server: str, *, token: str | None = None, ca_file: str | None = None
) -> Path:
    """A kubeconfig for kubectl and the Python clients (JSON is valid YAML)."""
    cluster: dict[str, str] = {"server": server}
    if ca_file:
        cluster["certificate-authority"] = ca_file
    user = {"token": token} if token else {}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sim", "cluster": cluster}],
        "users": [{"name": "sim", "user": user}],
        "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim"}}],
        "current-context": "sim",
    }
    path.write_text(json.dumps(doc))
    return path

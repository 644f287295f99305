"""analyze against real kube-apiserver 1.28 captures replayed over HTTP, split where the real reads split:
the bytes counted are those on the wire (each capture's body_bytes in manifest.json), not a re-encoding,
and the per-namespace counts are the manifest's, in protobuf as in JSON."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from discofilter.analyze.shell import Analyzer, AnalyzeSettings
from tests import fixtures
from tests.harness import write_kubeconfig
from tests.replay import Replay

LISTS = {
    "pods": "list-pods.pb",
    "services": "list-services.json",
    "endpoints": "list-endpoints.json",
    "endpointslices": "list-endpointslices.pb",
}
WATCHES = {
    "pods": "watch-pods.pb",
    "services": "watch-services.json",
    "endpoints": "watch-endpoints.json",
    "endpointslices": "watch-endpointslices.pb",
}
PATHS = {
    "pods": "/api/v1/pods",
    "services": "/api/v1/services",
    "endpoints": "/api/v1/endpoints",
    "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
}


def _entry(name: str) -> dict[str, Any]:
    return next(f for f in fixtures.manifest()["files"] if f["file"] == name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One analysis of the replayed captures, shared by the module's checks."""
    tmp_path = tmp_path_factory.mktemp("analyze-replay")
    hold = asyncio.Event()
    routes = {
        "/api/v1/namespaces": "list-namespaces.json",
        "/api/v1/namespaces?watch": "watch-namespaces.json",
    }
    for kind, path in PATHS.items():
        routes[path] = LISTS[kind]
        routes[path + "?watch"] = WATCHES[kind]
    replay = Replay(routes=routes, hold_open=hold)
    runner = web.AppRunner(replay.app(), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
    try:
        settings = AnalyzeSettings(kubeconfig=str(kubeconfig), duration_seconds=3.0)
        return await Analyzer(settings, stop=asyncio.Event(), progress=io.StringIO()).run()
    finally:
        hold.set()
        await runner.cleanup()


@pytest.mark.parametrize("kind", list(PATHS))
def test_watch_bytes_are_the_wire(report: dict[str, Any], kind: str) -> None:
    entry = _entry(WATCHES[kind])
    k = report["kinds"][kind]
    assert k["bytes"] + k["bookmark_and_error_bytes"] == entry["body_bytes"]
    assert k["watch_format"] == [entry["encoding"]]
    assert k["watches"] == 1


@pytest.mark.parametrize("kind", list(PATHS))
def test_list_bytes_are_the_wire(report: dict[str, Any], kind: str) -> None:
    entry = _entry(LISTS[kind])
    k = report["kinds"][kind]
    assert k["list_body_bytes"] == entry["body_bytes"]
    assert k["list_format"] == [entry["encoding"]]
    by_ns = {
        ns: e["list_objects"][kind] for ns, e in report["per_namespace"].items() if kind in e["list_objects"]
    }
    assert by_ns == entry["list"]["items_by_namespace"]
    # Each item's own bytes, summed, fit inside the body (the rest is the list's envelope and metadata).
    items = sum(e["list_bytes"].get(kind, 0) for e in report["per_namespace"].values())
    assert 0.9 * entry["body_bytes"] < items < entry["body_bytes"]


@pytest.mark.parametrize("kind", list(PATHS))
def test_events_per_namespace_are_the_manifests(report: dict[str, Any], kind: str) -> None:
    expected = dict(_entry(WATCHES[kind])["watch"]["by_namespace"])
    bookmarks = expected.pop("")
    got = {ns: e["events"][kind] for ns, e in report["per_namespace"].items() if kind in e["events"]}
    assert got == expected
    assert report["kinds"][kind]["bookmark_and_error_events"] == bookmarks

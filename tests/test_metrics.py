"""/metrics, scraped over HTTP and parsed with prometheus_client's own parser, after real traffic.

Requests go through the proxy to replays of real kube-apiserver 1.28 captures; every expected number is
derived from the capture (its bytes, or manifest.json), never from discofilter's own output.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from discofilter.settings import MeshConfigSettings, Settings
from tests import fixtures
from tests.harness import running_discofilter, write_kubeconfig
from tests.helpers import manifest_entry
from tests.test_proxy import ISTIOD_ACCEPT, MESH, get, namespace_source, stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def watch_counts(name: str) -> tuple[int, int, int]:
    """(events, forwarded, dropped) of a watch capture, from manifest.json's per-namespace counts."""
    by_ns: dict[str, dict[str, int]] = manifest_entry(name)["watch"]["by_namespace"]  # type: ignore[index]
    total = sum(sum(t.values()) for t in by_ns.values())
    kept = sum(sum(t.values()) for ns, t in by_ns.items() if ns in MESH or ns == "")
    return total, kept, total - kept


def assert_no_namespace_labels(samples: Samples) -> None:
    """Bounded cardinality: no label value anywhere is a namespace of the cluster."""
    namespaces = set(fixtures.manifest()["namespaces"])
    for _, labels in samples:
        assert not {v for _, v in labels} & namespaces, labels


async def test_json_watch_counts_events_and_bytes_from_the_capture(tmp_path: Path) -> None:
    name = "watch-pods.json"
    async with stack(tmp_path, {"/api/v1/pods": name}) as (df, _, _):
        status, _, body = await get(df.url + "/api/v1/pods?watch=1&allowWatchBookmarks=true")
        samples = await scrape(df.metrics_url)
    assert status == 200
    total, kept, dropped = watch_counts(name)
    assert (total, kept, dropped) == (29, 16, 13)  # 13 mesh events + 3 bookmarks; 13 in plain-1/2
    assert value(samples, "discofilter_watch_events_received_total", resource="pods") == total
    assert value(samples, "discofilter_watch_events_forwarded_total", resource="pods") == kept
    assert value(samples, "discofilter_watch_events_dropped_total", resource="pods") == dropped
    raw = fixtures.body(name)
    mesh_lines = [
        line
        for line in raw.splitlines(keepends=True)
        if (ev := orjson.loads(line))["type"] == "BOOKMARK" or ev["object"]["metadata"]["namespace"] in MESH
    ]
    assert value(samples, "discofilter_received_bytes_total", resource="pods", verb="watch") == len(raw)
    assert value(samples, "discofilter_sent_bytes_total", resource="pods", verb="watch") == len(
        b"".join(mesh_lines)
    )
    assert len(body) == len(b"".join(mesh_lines))
    assert value(samples, "discofilter_requests_total", verb="watch", resource="pods", code="200") == 1
    assert value(samples, "discofilter_watch_duration_seconds_count", resource="pods") == 1
    assert ("discofilter_open_watches", frozenset({("resource", "pods")})) not in samples
    assert ("discofilter_request_duration_seconds_count", frozenset({("verb", "watch")})) not in samples
    assert_no_namespace_labels(samples)


async def test_protobuf_watch_is_counted_the_same(tmp_path: Path) -> None:
    name = "watch-pods.pb"
    async with stack(tmp_path, {"/api/v1/pods": name}) as (df, _, _):
        await get(df.url + "/api/v1/pods?watch=1", headers={"Accept": ISTIOD_ACCEPT})
        samples = await scrape(df.metrics_url)
    total, kept, dropped = watch_counts(name)
    assert value(samples, "discofilter_watch_events_received_total", resource="pods") == total
    assert value(samples, "discofilter_watch_events_forwarded_total", resource="pods") == kept
    assert value(samples, "discofilter_watch_events_dropped_total", resource="pods") == dropped
    assert (
        value(samples, "discofilter_received_bytes_total", resource="pods", verb="watch")
        == (manifest_entry(name)["body_bytes"])
    )


async def test_open_watch_is_counted_live_and_a_membership_change_is_seen(tmp_path: Path) -> None:
    hold = asyncio.Event()
    name = "watch-pods.json"
    _, kept, _ = watch_counts(name)
    async with stack(tmp_path, {"/api/v1/pods": name}, hold_open=hold) as (df, _, src):
        async with aiohttp.ClientSession() as s, s.get(df.url + "/api/v1/pods?watch=1") as r:
            got = b""
            while got.count(b"\n") < kept:
                got += await asyncio.wait_for(r.content.readany(), 5)
            samples = await scrape(df.metrics_url)
            # Still open: its filter's counts are read live, before the watch ends.
            assert value(samples, "discofilter_open_watches", resource="pods") == 1
            assert value(samples, "discofilter_in_flight_requests") == 1  # the watch itself
            assert value(samples, "discofilter_watch_events_forwarded_total", resource="pods") == kept
            assert value(samples, "discofilter_mesh_namespaces") == len(MESH)
            assert value(samples, "discofilter_namespaces") == len(fixtures.manifest()["namespaces"])
            changes = value(samples, "discofilter_membership_changes_total")
            src.modify("plain-1", **{"istio-injection": "enabled"})
            await asyncio.wait_for(r.content.read(), 5)  # ended by the change with a 410
        hold.set()
        samples = await scrape(df.metrics_url)
    assert value(samples, "discofilter_mesh_namespaces") == len(MESH) + 1
    assert value(samples, "discofilter_membership_changes_total") == changes + 1
    assert value(samples, "discofilter_watches_expired_total") == 1
    assert value(samples, "discofilter_in_flight_requests") == 0
    assert value(samples, "discofilter_watch_events_forwarded_total", resource="pods") == kept
    assert value(samples, "discofilter_namespace_relists_total") == 1
    assert value(samples, "discofilter_namespace_watch_failures_total") == 0
    assert 0 <= value(samples, "discofilter_namespace_last_event_age_seconds") < 60
    assert value(samples, "discofilter_ready") == 1
    assert_no_namespace_labels(samples)


async def test_list_items_bytes_and_latency(tmp_path: Path) -> None:
    name = "list-pods.json"
    async with stack(tmp_path, {"/api/v1/pods": name}) as (df, _, _):
        status, _, body = await get(df.url + "/api/v1/pods")
        samples = await scrape(df.metrics_url)
    assert status == 200
    by_ns: dict[str, int] = manifest_entry(name)["list"]["items_by_namespace"]  # type: ignore[index]
    kept = sum(n for ns, n in by_ns.items() if ns in MESH)
    assert value(samples, "discofilter_list_items_total", resource="pods", outcome="kept") == kept
    assert value(samples, "discofilter_list_items_total", resource="pods", outcome="dropped") == (
        sum(by_ns.values()) - kept
    )
    assert value(samples, "discofilter_received_bytes_total", resource="pods", verb="list") == len(
        fixtures.body(name)
    )
    assert value(samples, "discofilter_sent_bytes_total", resource="pods", verb="list") == len(body)
    assert value(samples, "discofilter_requests_total", verb="list", resource="pods", code="200") == 1
    count = value(samples, "discofilter_request_duration_seconds_count", verb="list", resource="pods")
    inf = value(
        samples, "discofilter_request_duration_seconds_bucket", verb="list", resource="pods", le="+Inf"
    )
    assert count == inf == 1


async def test_passthrough_unparseable_and_upstream_errors(tmp_path: Path) -> None:
    routes = {"/api/v1/pods": "watch-pods.json", "/api/v1/namespaces/mesh-a/pods": "list-pods.json"}
    async with stack(tmp_path, routes) as (df, _, _):
        assert (await get(df.url + "/api/v1/namespaces/mesh-a/configmaps"))[0] == 404  # pass-through
        # A watch stream where a LIST is expected, and a LIST where a watch is: neither can be parsed.
        assert (await get(df.url + "/api/v1/pods"))[0] == 502
        await get(df.url + "/api/v1/namespaces/mesh-a/pods?watch=1")
        samples = await scrape(df.metrics_url)
    assert value(samples, "discofilter_requests_total", verb="list", resource="other", code="404") == 1
    assert value(samples, "discofilter_requests_total", verb="list", resource="pods", code="502") == 1
    assert value(samples, "discofilter_unparseable_answers_total", verb="list") == 1
    assert value(samples, "discofilter_unparseable_answers_total", verb="watch") == 1


async def test_unreachable_api_server_is_an_upstream_error(tmp_path: Path) -> None:
    # An API server address nothing listens on: the namespace watch is the in-memory source, so
    # discofilter syncs, and every proxied request finds the API server down.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    kc = write_kubeconfig(tmp_path / "kubeconfig", dead)
    async with running_discofilter(kc, source=namespace_source()) as df:
        status, _, _ = await get(df.url + "/api/v1/pods")
        samples = await scrape(df.metrics_url)
    assert status == 502
    assert value(samples, "discofilter_upstream_errors_total", kind="unreachable") == 1
    assert value(samples, "discofilter_requests_total", verb="list", resource="pods", code="502") == 1


async def test_every_metric_of_the_grafana_dashboard_is_exported(tmp_path: Path) -> None:
    dashboard = Path(__file__).resolve().parents[1] / "manifests" / "grafana" / "discofilter-dashboard.json"
    doc = json.loads(dashboard.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|total|count|sum)$", "", m) for e in exprs for m in METRIC.findall(e)}
    assert len(used) > 15
    async with stack(tmp_path, {}) as (df, _, _), aiohttp.ClientSession() as s, s.get(df.metrics_url) as r:
        text = await r.text()
    exported = {family.name for family in text_string_to_metric_families(text)}
    assert used <= exported, used - exported


METRIC = re.compile(r"\b((?:discofilter|process)_[a-z_]+)\b")


async def test_pass_through_watches_stay_out_of_the_latency_histogram(tmp_path: Path) -> None:
    routes = {"/api/v1/namespaces/mesh-a/configmaps": "watch-pods.json"}  # any stream will do
    async with stack(tmp_path, routes) as (df, _, _):
        await get(df.url + "/api/v1/namespaces/mesh-a/configmaps?watch=true")
        await get(df.url + "/api/v1/namespaces/mesh-a/configmaps")
        samples = await scrape(df.metrics_url)
    assert value(samples, "discofilter_requests_total", verb="watch", resource="other", code="200") == 1
    assert value(samples, "discofilter_requests_total", verb="list", resource="other", code="200") == 1
    assert value(samples, "discofilter_watch_duration_seconds_count", resource="other") == 1
    assert value(samples, "discofilter_request_duration_seconds_count", verb="list", resource="other") == 1
    assert not [
        k for k in samples if k[0].startswith("discofilter_request_duration") and ("verb", "watch") in k[1]
    ]


async def test_mesh_config_versions_are_counted(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh"
    mesh.write_text("discoverySelectors:\n- matchLabels: {istio-injection: enabled}\n")
    settings = replace(Settings(), mesh=MeshConfigSettings(path=str(mesh), poll_seconds=0.02))
    async with stack(tmp_path, {}, settings=settings) as (df, _, _):
        samples = await scrape(df.metrics_url)
        assert value(samples, "discofilter_mesh_config_versions_total", outcome="applied") == 1
        mesh.write_text("discoverySelectors: [{matchExpressions: [{key: a, operator: Gt, values: ['1']}]}]\n")
        assert df.runtime.mesh is not None
        while df.runtime.mesh.versions_rejected == 0:
            await asyncio.sleep(0.02)
        samples = await scrape(df.metrics_url)
    assert value(samples, "discofilter_mesh_config_versions_total", outcome="rejected") == 1
    assert value(samples, "discofilter_mesh_namespaces") == len(MESH) - 1  # mesh-rev has only istio.io/rev

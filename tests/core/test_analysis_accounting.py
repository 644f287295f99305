"""The analysis accounting (sans-I/O) on real kube-apiserver 1.28 captures: split-independent, counting
the bytes as received, and reading namespaces and gateway labels in JSON and protobuf alike."""

from __future__ import annotations

import orjson
import pytest

from discofilter.analyze.accounting import (
    Format,
    Seen,
    Tally,
    WatchCounter,
    format_of,
    is_gateway,
    parse_list,
)
from discofilter.analyze.report import Context, ServerSideBound, build_report, render_text
from discofilter.errors import StreamFramingError
from tests import fixtures
from tests.helpers import feed_every_split

MESH = frozenset({"mesh-a", "mesh-b", "mesh-rev"})


@pytest.mark.parametrize(
    "name",
    [
        "watch-pods.json",
        "watch-pods.pb",
        "watch-endpointslices.pb",
        "watch-services.json",
        "watch-pods-410.pb",
    ],
)
def test_watch_counts_do_not_depend_on_splits(name: str) -> None:
    data = fixtures.body(name)
    fmt: Format = "protobuf" if name.endswith(".pb") else "json"

    def make() -> WatchCounter:
        return WatchCounter("pods", fmt, Tally(), MESH)

    seen: list[Seen] = feed_every_split(data, lambda: make().feed)
    assert sum(s.size for s in seen) == len(data)
    entry = next(f for f in fixtures.manifest()["files"] if f["file"] == name)
    assert len(seen) == entry["watch"]["events"]
    if entry["watch"]["errors"]:
        assert seen[-1].type == "ERROR" and seen[-1].error_code == 410


def test_outside_is_decided_by_membership_at_arrival() -> None:
    tally = Tally()
    members = set(MESH)
    counter = WatchCounter("pods", "json", tally, members)
    lines = fixtures.body("watch-pods.json").splitlines(keepends=True)
    counter.feed(b"".join(lines[:5]))
    members.add("plain-2")  # plain-2 joins the mesh halfway
    counter.feed(b"".join(lines[5:]))
    by_ns = {ns: c.outside_events for ns, c in tally.namespaces.items()}
    assert by_ns["mesh-a"] == 0
    early = sum(1 for line in lines[:5] if b'"namespace":"plain-2"' in line)
    assert by_ns["plain-2"] == early
    assert by_ns["plain-1"] == tally.namespaces["plain-1"].total_events


@pytest.mark.parametrize("name", ["list-pods.json", "list-pods.pb", "list-endpointslices.pb"])
def test_list_items_by_namespace(name: str) -> None:
    entry = next(f for f in fixtures.manifest()["files"] if f["file"] == name)
    answer = parse_list(fixtures.body(name), "protobuf" if name.endswith(".pb") else "json", kind="pods")
    counts: dict[str, int] = {}
    for item in answer.items:
        counts[item.namespace] = counts.get(item.namespace, 0) + 1
    assert counts == entry["list"]["items_by_namespace"]
    assert answer.resource_version == entry["list"]["resourceVersion"]


def test_gateway_pods_are_found_and_warned_about() -> None:
    assert is_gateway({"istio.io/gateway-name": "gw"})
    assert is_gateway({"istio": "ingressgateway"}) and is_gateway({"istio": "egressgateway"})
    assert not is_gateway({"istio": "pilot"}) and not is_gateway({})
    event = orjson.loads(fixtures.body("watch-pods.json").splitlines()[0])
    event["object"]["metadata"]["labels"] = {"istio": "ingressgateway"}
    ns, name = event["object"]["metadata"]["namespace"], event["object"]["metadata"]["name"]
    tally = Tally()
    WatchCounter("pods", "json", tally, frozenset()).feed(orjson.dumps(event) + b"\n")
    assert tally.namespaces[ns].gateways == {name}
    report = build_report(tally, _ctx(frozenset()))
    assert any("gateway pods" in w and ns in w for w in report["warnings"])
    assert build_report(tally, _ctx(frozenset({ns})))["warnings"] == []


def test_a_namespace_churning_more_than_the_rest_of_the_mesh_is_warned_about() -> None:
    tally = Tally()
    WatchCounter("pods", "json", tally, MESH).feed(fixtures.body("watch-pods.json"))
    report = build_report(tally, _ctx(MESH))
    # Exactly the namespaces whose events exceed those of the rest of the mesh are named.
    mesh_total = sum(tally.namespaces[n].total_events for n in MESH)
    loud = [w for w in report["warnings"] if "more than the rest of the mesh" in w]
    for ns, c in tally.namespaces.items():
        rest = mesh_total - c.total_events if ns in MESH else mesh_total
        assert any(repr(ns) in w for w in loud) == (c.total_events > rest)
    assert "ESTIMATE" in render_text(report)


def test_server_side_exclusion_covers_the_top_k() -> None:
    tally = Tally()
    WatchCounter("pods", "json", tally, MESH).feed(fixtures.body("watch-pods.json"))
    s = build_report(tally, _ctx(MESH), bound=ServerSideBound(k=1))["server_side_exclusion"]
    assert s["namespaces"] == ["plain-2"]  # 9 events against plain-1's 4
    assert s["share_of_outside_events"] == round(9 / 13, 4)


def test_garbage_is_a_framing_error() -> None:
    with pytest.raises(StreamFramingError):
        WatchCounter("pods", "json", Tally(), MESH).feed(b"not json\n")
    with pytest.raises(StreamFramingError):
        parse_list(b"k8s\x00garbage", "protobuf", kind="pods")
    assert format_of("application/vnd.kubernetes.protobuf;stream=watch") == "protobuf"
    assert format_of(None) == "json"


def _ctx(members: frozenset[str]) -> Context:
    return Context(
        server="http://test",
        selectors="istio-injection=enabled",
        mesh_config=None,
        planned_seconds=60,
        seconds=60,
        ended_early=False,
        members=members,
        known_namespaces=12,
    )

"""The sans-I/O store: writes, resourceVersions, history, deletion flows. No server, no awaits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discofilter.simapi import ApiError, Store, StoreEvent
from discofilter.simapi.schema import normalize
from tests import fixtures
from tests.simapi.conftest import CAPTURE_TIME, capture, event_lines, seeded_store

KIND_RESOURCE = {
    "Pod": "pods",
    "Service": "services",
    "Endpoints": "endpoints",
    "EndpointSlice": "endpointslices",
}
VOLATILE_META = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "managedFields")


def record(store: Store, resource: str) -> list[StoreEvent]:
    events: list[StoreEvent] = []
    store.subscribe(resource, events.append)
    return events


def stable(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without what differs between two servers (uids, times, RVs, managedFields)."""
    out: dict[str, Any] = json.loads(json.dumps(obj))
    out.pop("kind", None)
    out.pop("apiVersion", None)
    for key in VOLATILE_META:
        out["metadata"].pop(key, None)
    for condition in (out.get("status") or {}).get("conditions") or []:
        condition.pop("lastTransitionTime", None)
    return out


def test_churn_of_watch_pods_gives_the_next_list() -> None:
    """manifest relations: list-pods.json + watch-pods.json events = list-pods-before-selectors.json."""
    relation = next(r for r in fixtures.manifest()["relations"] if r.get("applying_all_events_gives"))
    store = Store()
    store.load_list("pods", capture(relation["list"]))
    for line in event_lines(fixtures.body(relation["then_watch"][0])):
        event = json.loads(line)
        if event["type"] != "BOOKMARK":
            store.apply("pods", event["type"], event["object"])
    expected = capture(relation["applying_all_events_gives"])
    assert [json.dumps(o) for o in store.objects("pods")] == [json.dumps(o) for o in expected["items"]]


def test_one_counter_for_all_resources_and_per_resource_bookmark_versions(store: Store) -> None:
    assert store.resource_version == 503
    ns = store.patch_labels("namespaces", None, "plain-1", {"a": "b"})
    pod = store.patch_labels("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", {"a": "b"})
    assert (ns["metadata"]["resourceVersion"], pod["metadata"]["resourceVersion"]) == ("504", "505")
    assert store.resource_rv("pods") == 505 and store.resource_rv("namespaces") == 504
    assert store.resource_rv("services") == 503
    assert store.list("services").resource_version == 505, "a list answers the global resourceVersion"


def test_create_fills_what_the_real_server_does() -> None:
    """The minimal pod of the namespace run, created through the API, equals the captured one."""
    store = seeded_store(namespaces="list-namespaces-before-ns-watch.json")
    store.create("namespaces", {"metadata": {"name": "late-joiner", "labels": {"team": "growth"}}})
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": {"app": "web"}, "name": "web-0"},
        "spec": {
            "containers": [
                {
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "image": "registry.example.com/growth/web:1.0.0",
                    "name": "web",
                }
            ]
        },
    }
    created = store.create("pods", manifest, namespace="late-joiner")
    captured_ns = json.loads(fixtures.body("watch-namespaces.json").split(b"\n")[0])["object"]
    captured_pod = json.loads(fixtures.body("watch-pods-during-ns-changes.json").split(b"\n")[0])["object"]
    assert json.dumps(stable(created)) == json.dumps(stable(captured_pod))  # same fields, same order
    assert json.dumps(stable(store.get("namespaces", None, "late-joiner"))) == json.dumps(stable(captured_ns))
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"] == "2026-11-22T02:32:51Z"


def test_namespace_deletion_goes_like_the_real_one() -> None:
    store = seeded_store(namespaces="list-namespaces-before-ns-watch.json")
    store.clock = lambda: CAPTURE_TIME
    ns_events, pod_events = record(store, "namespaces"), record(store, "pods")
    store.create("namespaces", {"metadata": {"name": "late-joiner", "labels": {"team": "growth"}}})
    store.create(
        "pods",
        {"metadata": {"name": "web-0"}, "spec": {"containers": [{"name": "w", "image": "x:1"}]}},
        namespace="late-joiner",
    )
    store.patch_labels("namespaces", None, "late-joiner", {"istio-injection": "enabled"})
    store.patch_labels("namespaces", None, "late-joiner", {"istio-injection": None})
    result = store.delete("namespaces", None, "late-joiner")
    assert result.object["status"]["phase"] == "Terminating"

    captured = [json.loads(x) for x in event_lines(fixtures.body("watch-namespaces.json"))]
    captured_late = [e for e in captured if e["object"]["metadata"].get("name") == "late-joiner"]
    assert [e.type for e in ns_events] == [e["type"] for e in captured_late]
    for ours, theirs in zip(ns_events, captured_late, strict=True):
        assert stable(ours.object) == stable(theirs["object"])
    assert [e.type for e in pod_events] == ["ADDED", "MODIFIED", "DELETED"]
    assert pod_events[1].object["metadata"]["deletionGracePeriodSeconds"] == 0
    # The namespace's RVs bracket its content's deletion, as in the captures (599 < 602, 603 < 604).
    assert ns_events[3].rv < pod_events[1].rv < pod_events[2].rv < ns_events[4].rv
    with pytest.raises(ApiError) as refused:
        store.get("namespaces", None, "late-joiner")
    assert refused.value.code == 404


def test_terminating_namespace_refuses_new_content() -> None:
    store = Store(finalize_namespaces=False)
    store.create("namespaces", {"metadata": {"name": "going"}})
    store.create("configmaps", {"metadata": {"name": "c"}}, namespace="going")
    store.delete("namespaces", None, "going")
    with pytest.raises(ApiError) as refused:
        store.create("configmaps", {"metadata": {"name": "d"}}, namespace="going")
    assert refused.value.code == 403
    assert refused.value.message == (
        'configmaps "d" is forbidden: '
        "unable to create new content in namespace going because it is being terminated"
    )
    store.finalize_namespace("going")
    assert list(store.objects("configmaps")) == [] and list(store.objects("namespaces")) == []
    with pytest.raises(ApiError) as missing:
        store.create("configmaps", {"metadata": {"name": "d"}}, namespace="going")
    assert missing.value.status()["message"] == 'namespaces "going" not found'


def test_graceful_pod_deletion_waits_for_the_kubelet(store: Store) -> None:
    store.graceful_pod_deletion = True
    events = record(store, "pods")
    first = store.delete("pods", "mesh-b", "catalog-nr2nvx9ssb-pmth5")
    assert not first.deleted and first.object["metadata"]["deletionGracePeriodSeconds"] == 30
    assert first.object["metadata"]["deletionTimestamp"] == "2026-11-22T02:33:21Z"  # now + 30 s
    again = store.delete("pods", "mesh-b", "catalog-nr2nvx9ssb-pmth5")
    assert not again.deleted and len(events) == 1, "a second delete with the same grace changes nothing"
    final = store.delete("pods", "mesh-b", "catalog-nr2nvx9ssb-pmth5", grace_period_seconds=0)
    assert final.deleted
    assert [e.type for e in events] == ["MODIFIED", "MODIFIED", "DELETED"]
    # A shorter grace period counts from the first request (rest/delete.go BeforeDelete).
    assert events[1].object["metadata"]["deletionTimestamp"] == "2026-11-22T02:32:51Z"
    assert events[2].object["metadata"]["resourceVersion"] == str(events[2].rv)


def test_unscheduled_and_terminal_pods_go_at_once(store: Store) -> None:
    store.graceful_pod_deletion = True
    events = record(store, "pods")
    assert store.delete("pods", "smoke-a", "p1").deleted  # never scheduled
    assert [e.type for e in events] == ["MODIFIED", "DELETED"]


def test_finalizers_hold_a_deletion(store: Store) -> None:
    store.create(
        "configmaps", {"metadata": {"name": "held", "finalizers": ["example.com/x"]}}, namespace="mesh-a"
    )
    events = record(store, "configmaps")
    assert not store.delete("configmaps", "mesh-a", "held").deleted
    cm = store.get("configmaps", "mesh-a", "held")
    assert cm["metadata"]["deletionTimestamp"]
    cm["metadata"]["finalizers"] = []
    store.update("configmaps", cm)
    assert [e.type for e in events] == ["MODIFIED", "DELETED"]


def test_update_conflicts_and_noops(store: Store) -> None:
    pod = store.get("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt")
    events = record(store, "pods")
    assert store.update("pods", pod) == pod and events == [], "an unchanged object is not written"
    pod["metadata"]["labels"]["x"] = "y"
    updated = store.update("pods", pod)
    assert updated["metadata"]["resourceVersion"] == "504"
    with pytest.raises(ApiError) as stale:
        store.update("pods", pod)  # still carries RV 476
    assert stale.value.code == 409 and stale.value.reason == "Conflict"
    assert stale.value.message.startswith('Operation cannot be fulfilled on pods "checkout-d8fdjt9jxq-6sfbt"')


def test_status_subresource_and_main_resource_keep_apart(store: Store) -> None:
    pod = store.get("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt")
    pod["status"]["phase"] = "Failed"
    pod["metadata"]["labels"]["ignored"] = "by-status"
    del pod["metadata"]["resourceVersion"]
    after = store.update("pods", pod, subresource="status")
    assert after["status"]["phase"] == "Failed" and "ignored" not in after["metadata"]["labels"]
    pod["status"]["phase"] = "Running"
    after = store.update("pods", pod)
    assert after["status"]["phase"] == "Failed" and after["metadata"]["labels"]["ignored"] == "by-status"


def test_strategic_merge_patch_merges_conditions_by_type(store: Store) -> None:
    before = store.get("pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt")["status"]["conditions"]
    patch = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Probe"}]}}
    after = store.patch(
        "pods", "mesh-a", "checkout-d8fdjt9jxq-6sfbt", patch, patch_type="strategic", subresource="status"
    )
    by_type = {c["type"]: c for c in after["status"]["conditions"]}
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "Probe"
    assert list(by_type) == [c["type"] for c in before], "the other conditions stay, in place"
    json_patched = store.patch(
        "pods",
        "mesh-a",
        "checkout-d8fdjt9jxq-6sfbt",
        [{"op": "add", "path": "/metadata/labels/j", "value": "p"}],
        patch_type="json",
    )
    assert json_patched["metadata"]["labels"]["j"] == "p"


def test_binding(store: Store) -> None:
    store.bind("smoke-a", "p1", "node-1")
    pod = store.get("pods", "smoke-a", "p1")
    assert pod["spec"]["nodeName"] == "node-1"
    assert pod["status"]["conditions"][0] == {
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": "2026-11-22T02:32:51Z",
    }
    with pytest.raises(ApiError) as twice:
        store.bind("smoke-a", "p1", "node-2")
    assert twice.value.code == 409


def test_generate_name_and_validation(store: Store) -> None:
    created = store.create("configmaps", {"metadata": {"generateName": "cfg-"}}, namespace="mesh-a")
    assert created["metadata"]["name"].startswith("cfg-") and len(created["metadata"]["name"]) == 9
    with pytest.raises(ApiError) as bad:
        store.create("services", {"metadata": {"name": "9-lives"}, "spec": {}}, namespace="mesh-a")
    assert bad.value.code == 422 and bad.value.status()["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiError) as dup:
        store.create("pods", {"metadata": {"name": "p1"}, "spec": {"containers": []}}, namespace="smoke-a")
    assert dup.value.code == 409 and dup.value.message == 'pods "p1" already exists'


def test_service_defaults_and_cluster_ip(store: Store) -> None:
    svc = store.create(
        "services",
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
        namespace="mesh-a",
    )
    spec = svc["spec"]
    assert list(spec) == [
        "ports",
        "selector",
        "clusterIP",
        "clusterIPs",
        "type",
        "sessionAffinity",
        "ipFamilies",
        "ipFamilyPolicy",
        "internalTrafficPolicy",
    ]
    assert spec["ports"] == [{"protocol": "TCP", "port": 80, "targetPort": 80}]
    assert spec["clusterIP"] not in {s["spec"]["clusterIP"] for s in capture("list-services.json")["items"]}
    assert svc["status"] == {"loadBalancer": {}}


def test_history_window_and_compaction() -> None:
    store = Store(history_window=3)
    store.create("namespaces", {"metadata": {"name": "a"}})
    for n in range(5):
        store.patch_labels("namespaces", None, "a", {"n": str(n)})
    assert [e.rv for e in store.events_since("namespaces", store.floor("namespaces"))] == [5, 6, 7]
    with pytest.raises(ApiError) as gone:
        store.events_since("namespaces", 3)
    assert gone.value.code == 410 and gone.value.message == "too old resource version: 3 (4)"
    store.compact(6)
    assert store.floor("namespaces") == 6
    with pytest.raises(ApiError):
        store.list("namespaces", resource_version="5", resource_version_match="Exact")


def test_load_list_keeps_objects_verbatim() -> None:
    store = Store()
    store.load_list("endpointslices", capture("list-endpointslices.json"))
    body = store.list("endpointslices").body()
    assert (
        json.dumps(body, separators=(",", ":")) + "\n" == fixtures.body("list-endpointslices.json").decode()
    )


@pytest.mark.parametrize(
    "name", ["list-pods.json", "list-services.json", "list-endpoints.json", "list-namespaces.json"]
)
def test_schema_order_agrees_with_every_captured_object(name: str) -> None:
    body = capture(name)
    resource = {"PodList": "pods", "ServiceList": "services", "EndpointsList": "endpoints"}.get(
        body["kind"], "namespaces"
    )
    for item in body["items"]:
        assert json.dumps(normalize(resource, item)) == json.dumps(item)
    for watch in (
        "watch-pods.json",
        "watch-services.json",
        "watch-endpoints.json",
        "watch-endpointslices.json",
    ):
        for line in event_lines(fixtures.body(watch)):
            obj = json.loads(line)["object"]
            if obj.get("metadata", {}).get("name"):
                resource = KIND_RESOURCE[obj.pop("kind")]
                obj.pop("apiVersion")
                assert json.dumps(normalize(resource, obj)) == json.dumps(obj)


def test_a_pod_with_finalizers_goes_when_they_do(store: Store) -> None:
    pod = {"metadata": {"name": "held", "finalizers": ["example.com/x"]}, "spec": {"containers": []}}
    store.create("pods", pod, namespace="mesh-a")
    events = record(store, "pods")
    assert not store.delete("pods", "mesh-a", "held").deleted
    held = store.get("pods", "mesh-a", "held")
    assert held["metadata"]["deletionGracePeriodSeconds"] == 0
    store.patch("pods", "mesh-a", "held", {"metadata": {"finalizers": None}})
    assert [e.type for e in events] == ["MODIFIED", "DELETED"]

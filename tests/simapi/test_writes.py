"""Writes, single reads, subresources, discovery and health over HTTP; and the request log."""

from __future__ import annotations

import json

import aiohttp
from yarl import URL

from tests import fixtures
from tests.simapi.conftest import Sim

CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"b": "2", "a": "1"}}


async def test_create_get_update_patch_delete(sim: Sim, http: aiohttp.ClientSession) -> None:
    base = f"{sim.url}/api/v1/namespaces/mesh-a/configmaps"
    async with http.post(base, json=CM) as resp:
        assert resp.status == 201
        created = await resp.json()
        assert list(created) == ["kind", "apiVersion", "metadata", "data"]
        assert list(created["data"]) == ["a", "b"], "maps come back sorted, as Go prints them"
        assert created["metadata"]["resourceVersion"] == "504"
    async with http.post(base, json=CM) as resp:
        assert resp.status == 409 and (await resp.json())["reason"] == "AlreadyExists"
    async with http.get(f"{base}/cfg") as resp:
        assert await resp.json() == created
    created["data"]["c"] = "3"
    async with http.put(f"{base}/cfg", json=created) as resp:
        assert resp.status == 200 and (await resp.json())["metadata"]["resourceVersion"] == "505"
    async with http.put(f"{base}/cfg", json=created) as resp:
        assert resp.status == 409 and (await resp.json())["reason"] == "Conflict"
    merge = {"Content-Type": "application/merge-patch+json"}
    async with http.patch(f"{base}/cfg", data=json.dumps({"data": {"a": None}}), headers=merge) as resp:
        assert (await resp.json())["data"] == {"b": "2", "c": "3"}
    jsonpatch = {"Content-Type": "application/json-patch+json"}
    ops = [{"op": "replace", "path": "/data/b", "value": "20"}]
    async with http.patch(f"{base}/cfg", data=json.dumps(ops), headers=jsonpatch) as resp:
        assert (await resp.json())["data"]["b"] == "20"
    async with http.delete(f"{base}/cfg") as resp:
        status = await resp.json()
        assert status["status"] == "Success" and status["details"]["name"] == "cfg"
        assert status["details"]["kind"] == "configmaps"
    async with http.get(f"{base}/cfg") as resp:
        assert resp.status == 404 and (await resp.json())["message"] == 'configmaps "cfg" not found'


async def test_pod_lifecycle_with_subresources(sim: Sim, http: aiohttp.ClientSession) -> None:
    base = f"{sim.url}/api/v1/namespaces/plain-1/pods"
    pod = {"metadata": {"name": "job"}, "spec": {"containers": [{"name": "main", "image": "busybox"}]}}
    async with http.post(base, json=pod) as resp:
        created = await resp.json()
        assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
        assert created["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "job"},
        "target": {"name": "node-9"},
    }
    async with http.post(f"{base}/job/binding", json=binding) as resp:
        assert resp.status == 201 and (await resp.json())["status"] == "Success"
    strategic = {"Content-Type": "application/strategic-merge-patch+json"}
    status = {"status": {"phase": "Running", "podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}]}}
    async with http.patch(f"{base}/job/status", data=json.dumps(status), headers=strategic) as resp:
        running = await resp.json()
        assert running["status"]["phase"] == "Running" and running["spec"]["nodeName"] == "node-9"
    async with http.get(f"{base}/job/log") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/plain"
    async with http.delete(f"{base}/job", json={"gracePeriodSeconds": 0}) as resp:
        gone = await resp.json()
        assert gone["kind"] == "Pod" and gone["metadata"]["deletionTimestamp"]
    async with http.get(f"{base}/job") as resp:
        assert resp.status == 404


async def test_get_one_object_as_table(sim: Sim, http: aiohttp.ClientSession) -> None:
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    async with http.get(
        f"{sim.url}/api/v1/namespaces/mesh-rev/pods/ranker-gzcwmgsbm8-x2wws", headers=headers
    ) as r:
        doc = await r.json()
    expected = next(
        row
        for row in json.loads(fixtures.body("list-pods-table.json"))["rows"]
        if row["cells"][0] == doc["rows"][0]["cells"][0]
    )
    assert doc["rows"] == [expected]
    assert doc["metadata"] == {"resourceVersion": "483"}


async def test_method_and_path_errors(sim: Sim, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/api/v1/namespaces/mesh-a/pods/x", json={}) as resp:
        assert resp.status == 405
    async with http.get(f"{sim.url}/api/v1/pods/x") as resp:
        assert resp.status == 404
    async with http.get(f"{sim.url}/apis/apps/v1/deployments") as resp:
        assert resp.status == 404 and await resp.text() == "404 page not found\n"  # the mux's NotFound
    async with http.post(f"{sim.url}/api/v1/namespaces/mesh-a/configmaps", data=b"{not json") as resp:
        assert resp.status == 400 and (await resp.json())["kind"] == "Status"
    patch = {"Content-Type": "text/plain"}
    async with http.patch(f"{sim.url}/api/v1/namespaces/mesh-a/pods/x", data=b"{}", headers=patch) as resp:
        assert resp.status == 415


async def test_discovery_and_health(sim: Sim, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/version") as resp:
        assert (await resp.json())["gitVersion"] == "v1.28.7"
    async with http.get(f"{sim.url}/api") as resp:
        assert (await resp.json())["versions"] == ["v1"]
    async with http.get(f"{sim.url}/apis") as resp:
        groups = {g["name"] for g in (await resp.json())["groups"]}
        assert groups == {"discovery.k8s.io", "coordination.k8s.io"}
    async with http.get(f"{sim.url}/api/v1") as resp:
        doc = await resp.json()
        assert "apiVersion" not in doc
        pods = next(r for r in doc["resources"] if r["name"] == "pods")
        assert pods["shortNames"] == ["po"] and pods["namespaced"] and "watch" in pods["verbs"]
        assert {r["name"] for r in doc["resources"]} >= {
            "pods/status",
            "pods/binding",
            "pods/log",
            "services",
        }
    async with http.get(f"{sim.url}/apis/discovery.k8s.io/v1") as resp:
        assert (await resp.json())["resources"][0]["kind"] == "EndpointSlice"
    for path in ("/healthz", "/readyz", "/livez"):
        async with http.get(sim.url + path) as resp:
            assert resp.status == 200 and await resp.text() == "ok"


async def test_request_log_keeps_the_query_string_as_sent(sim: Sim, http: aiohttp.ClientSession) -> None:
    raw = "labelSelector=app%20in%20%28checkout%29&limit=1&fieldSelector=status.phase%21%3DFailed"
    headers = {"Authorization": "Bearer abc", "Audit-Id": "fixed-id"}
    async with http.get(URL(f"{sim.url}/api/v1/pods?{raw}", encoded=True), headers=headers) as resp:
        assert resp.status == 200 and resp.headers["Audit-Id"] == "fixed-id"
    entry = sim.requests[-1]
    assert (entry.method, entry.path, entry.query) == ("GET", "/api/v1/pods", raw)
    assert entry.header("authorization") == "Bearer abc"

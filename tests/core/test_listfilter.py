from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discofilter.core.listfilter import ListResult, filter_list, filter_list_slow
from discofilter.errors import StreamFramingError
from tests import fixtures
from tests.helpers import manifest_entry

MESH = frozenset(fixtures.manifest()["mesh_namespaces"])
LISTS = [
    "list-pods.json",
    "list-services.json",
    "list-endpoints.json",
    "list-endpointslices.json",
    "list-pods-mesh-a.json",
    "list-pods-page1.json",
    "list-pods-page2.json",
    "list-pods-partial.json",
    "list-pods-table.json",
    "list-pods-before-selectors.json",
    "list-pods-unknown-namespace.json",
]


@pytest.mark.parametrize("name", LISTS)
def test_keeps_mesh_items_and_list_metadata(name: str) -> None:
    body = fixtures.body(name)
    result = filter_list(body, MESH)
    entry = manifest_entry(name)["list"]
    by_ns: dict[str, int] = entry["items_by_namespace"]  # type: ignore[index]
    assert result.items_in == sum(by_ns.values())
    assert result.items_kept == sum(n for ns, n in by_ns.items() if ns in MESH)
    original = orjson.loads(body)
    out = orjson.loads(result.body)
    key = "rows" if original["kind"] == "Table" else "items"
    # Every kept entry is unchanged and in order; the list's own fields stay.
    kept = [e for e in original[key] if (e.get("object", e))["metadata"]["namespace"] in MESH]
    assert out[key] == kept
    assert out["metadata"]["resourceVersion"] == original["metadata"]["resourceVersion"]
    assert out["metadata"].get("continue") == original["metadata"].get("continue")
    assert "remainingItemCount" not in out["metadata"]
    assert {k: v for k, v in out.items() if k != key} == {
        k: (v if k != "metadata" else {mk: mv for mk, mv in v.items() if mk != "remainingItemCount"})
        for k, v in original.items()
        if k != key
    }
    assert result.resource_version == original["metadata"]["resourceVersion"]


def test_a_page_with_nothing_kept_keeps_its_continue_token() -> None:
    body = fixtures.body("list-pods-page1.json")
    out = orjson.loads(filter_list(body, frozenset({"nowhere"})).body)
    assert out["items"] == []
    assert out["metadata"]["continue"]


def test_counts_per_namespace_of_pods() -> None:
    out = orjson.loads(filter_list(fixtures.body("list-pods.json"), MESH).body)
    assert Counter(i["metadata"]["namespace"] for i in out["items"]) == {
        "mesh-a": 3,
        "mesh-b": 3,
        "mesh-rev": 3,
    }


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b"[]",
        b'{"kind":"Pod","metadata":{}}',
        b'{"kind":"PodList","items":{}}',
        b'{"kind":"PodList","items":[{"spec":{}}]}',
    ],
)
def test_malformed_lists_raise(body: bytes) -> None:
    with pytest.raises(StreamFramingError):
        filter_list(body, MESH)
    with pytest.raises(StreamFramingError):
        filter_list_slow(body, MESH)


# -- the msgspec fast path against the orjson reference -------------------------------------------

JSON_LISTS = [
    str(e["file"])
    for e in fixtures.manifest()["files"]
    if "list" in e and (str(e["file"]).endswith(".json") or str(e["file"]).endswith(".json.gz"))
]


def list_body(name: str) -> bytes:
    body = fixtures.body(name)
    return gzip.decompress(body) if name.endswith(".gz") else body


def same_result(fast: ListResult, slow: ListResult) -> None:
    assert orjson.loads(fast.body) == orjson.loads(slow.body)
    assert list(orjson.loads(fast.body)) == list(orjson.loads(slow.body))  # member order too
    assert fast.body.endswith(b"}\n")
    assert (fast.items_in, fast.items_kept, fast.resource_version, fast.continue_token) == (
        slow.items_in,
        slow.items_kept,
        slow.resource_version,
        slow.continue_token,
    )


def test_every_json_list_fixture_is_covered() -> None:
    assert len(JSON_LISTS) >= 15  # every JSON list capture, including the gzip'd and the pretty-printed one
    assert set(LISTS) <= set(JSON_LISTS)


@pytest.mark.parametrize("name", JSON_LISTS)
@pytest.mark.parametrize(
    "members", [MESH, frozenset(), frozenset({"mesh-a"}), frozenset({"plain-1", "smoke-a", "default"})]
)
def test_fast_path_agrees_with_the_reference_on_real_lists(name: str, members: frozenset[str]) -> None:
    body = list_body(name)
    same_result(filter_list(body, members), filter_list_slow(body, members))


@pytest.mark.parametrize("name", ["list-pods.json", "list-pods-page1.json", "list-endpointslices.json"])
def test_fast_path_keeps_each_kept_item_byte_for_byte(name: str) -> None:
    # Compact API server JSON: every kept item's bytes appear unchanged in the output, in order.
    body = list_body(name)
    items = orjson.loads(body)["items"]
    out = filter_list(body, MESH).body
    pos = 0
    for item in items:
        if item["metadata"]["namespace"] in MESH:
            raw = orjson.dumps(item)
            at = body.find(b'{"metadata":{"name":"' + item["metadata"]["name"].encode())
            assert at >= 0 and body[at : at + len(raw)] == raw  # orjson re-encodes these items exactly
            found = out.find(raw, pos)
            assert found >= 0
            pos = found + len(raw)


ns_values = st.one_of(st.sampled_from(["mesh-a", "mesh-b", "plain-1", ""]), st.none(), st.integers(0, 3))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=12),
    st.floats(allow_nan=False),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "namespace", "metadata"]), inner, max_size=3),
    ),
    max_leaves=8,
)


@st.composite
def entries(draw: st.DrawFn) -> object:
    # Mostly well-formed items, now and then one that must make both paths fail.
    roll = draw(st.integers(0, 40))
    if roll == 0:
        return draw(json_values)
    meta: dict[str, object] = {"name": draw(st.text(max_size=8))}
    if roll != 1:
        good = st.sampled_from(["mesh-a", "mesh-b", "plain-1", "", 'we"ird\\ns'])
        meta["namespace"] = draw(ns_values) if roll == 2 else draw(good)
    obj: dict[str, object] = {"metadata": meta, "spec": draw(json_values)}
    if roll == 3:
        del obj["metadata"]
    return obj


@st.composite
def lists(draw: st.DrawFn) -> bytes:
    table = draw(st.integers(0, 4)) == 0
    entry_list = draw(st.lists(entries(), max_size=6))
    if table:
        doc: dict[str, object] = {
            "kind": "Table",
            "apiVersion": draw(st.sampled_from(["meta.k8s.io/v1"] * 4 + ["v1"])),
            "columnDefinitions": [{"name": "Name"}],
            "rows": [{"cells": ["x"], "object": e} if draw(st.integers(0, 20)) else e for e in entry_list]
            if draw(st.integers(0, 20))
            else draw(json_values),
        }
    else:
        doc = {
            "kind": draw(
                st.sampled_from(["PodList", "PodList", "PartialObjectMetadataList", "Pod", "Table"])
            ),
            "apiVersion": "v1",
            "items": entry_list if draw(st.integers(0, 20)) else draw(json_values),
        }
    meta = {"resourceVersion": draw(st.sampled_from(["503", "", "7"]))}
    if draw(st.booleans()):
        meta["continue"] = draw(st.sampled_from(["tok", ""]))
        meta["remainingItemCount"] = 14  # type: ignore[assignment]
    doc["metadata"] = meta if draw(st.integers(0, 20)) else draw(json_values)
    keys = draw(st.permutations(list(doc)))
    if draw(st.integers(0, 20)) == 0:
        keys = keys[1:]  # a member missing
    ordered = {k: doc[k] for k in keys}
    body = orjson.dumps(ordered, option=orjson.OPT_INDENT_2 if draw(st.booleans()) else 0)
    return body + draw(st.sampled_from([b"", b"\n", b"  \n"]))


def outcome(fn: Callable[[bytes, frozenset[str]], ListResult], body: bytes) -> ListResult | str:
    try:
        return fn(body, MESH_AB)
    except StreamFramingError:
        return "error"


MESH_AB = frozenset({"mesh-a", "mesh-b"})


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(lists())
def test_fast_path_agrees_with_the_reference_on_generated_lists(body: bytes) -> None:
    fast = outcome(filter_list, body)
    slow = outcome(filter_list_slow, body)
    if isinstance(slow, str) or isinstance(fast, str):
        assert fast == slow
    else:
        same_result(fast, slow)

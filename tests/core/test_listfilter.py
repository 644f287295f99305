from __future__ import annotations

from collections import Counter

import orjson
import pytest

from discofilter.core.listfilter import filter_list
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

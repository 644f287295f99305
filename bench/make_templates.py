"""Regenerate ``discofilter/bench/templates.py`` from the real kube-apiserver 1.28 captures.

Run at development time only, from the repository root: ``python bench/make_templates.py``. The package
never reads the captures at run time; it carries the objects this script picks, verbatim, as JSON text:

- a mesh pod (Istio sidecar) and a plain pod, each in its Running state, from ``watch-pods.json``
  (resourceVersions 508 and 514: managedFields of kubectl Apply and kubelet status, ~20 KB and ~11 KB);
- the ``mesh-a/checkout`` Service, Endpoints and EndpointSlice and the ``mesh-a`` Namespace, as list items.

The churn generator derives the other stages of a pod's life (created, bound, initializing, terminating)
from the Running pod, following the stages ``watch-pods.json`` shows.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "apiserver-1.28"
OUT = ROOT / "discofilter" / "bench" / "templates.py"
WIDTH = 100


def _compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _watch_object(name: str, rv: str) -> dict[str, object]:
    for line in (FIXTURES / name).read_bytes().splitlines():
        event = json.loads(line)
        obj = event["object"]
        if obj["metadata"].get("resourceVersion") == rv and event["type"] != "BOOKMARK":
            return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
    raise KeyError(f"{name}: no object at resourceVersion {rv}")


def _list_item(name: str, namespace: str, prefix: str) -> dict[str, object]:
    for item in json.loads((FIXTURES / name).read_bytes())["items"]:
        meta = item["metadata"]
        if meta.get("namespace", meta["name"]) == namespace and meta["name"].startswith(prefix):
            return dict(item)
    raise KeyError(f"{name}: no {namespace}/{prefix}*")


def _literal(name: str, text: str, source: str) -> str:
    # Adjacent string literals concatenate back to the exact text, so any cut is safe; cut by the length
    # of the literal as written (escapes double backslashes) to stay within the line length.
    pieces: list[str] = []
    while text:
        cut = min(WIDTH, len(text))
        while len(repr(text[:cut])) > WIDTH + 2:
            cut -= 1
        pieces.append(text[:cut])
        text = text[cut:]
    body = "\n".join(f"    {p!r}" for p in pieces)
    return f"# {source}\n{name} = (\n{body}\n)\n"


def main() -> None:
    parts = {
        "MESH_POD": (_watch_object("watch-pods.json", "508"), "watch-pods.json RV 508, Running"),
        "PLAIN_POD": (_watch_object("watch-pods.json", "514"), "watch-pods.json RV 514, Running"),
        "SERVICE": (_list_item("list-services.json", "mesh-a", "checkout"), "list-services.json"),
        "ENDPOINTS": (_list_item("list-endpoints.json", "mesh-a", "checkout"), "list-endpoints.json"),
        "ENDPOINT_SLICE": (
            _list_item("list-endpointslices.json", "mesh-a", "checkout"),
            "list-endpointslices.json",
        ),
        "NAMESPACE": (_list_item("list-namespaces.json", "mesh-a", "mesh-a"), "list-namespaces.json"),
    }
    head = '''"""Real objects from kube-apiserver 1.28.7 captures, as JSON text (generated; do not edit).

Regenerate with ``python bench/make_templates.py`` (it reads the captures in ``tests/data/`` when run;
nothing here reads files at run time). Each constant holds one object as the API server lists it (no
kind/apiVersion, Go field order, managedFields kept): the churn generator builds every object of the
benchmark from these, so sizes match a real cluster (mesh pod ~20 KB, plain pod ~11 KB).
"""

from __future__ import annotations

import functools
import json
from typing import Any

'''
    body = "\n".join(_literal(f"_{name}_JSON", _compact(obj), src) for name, (obj, src) in parts.items())
    tail = (
        '''

@functools.cache
def load(name: str) -> dict[str, Any]:
    """The template ``name`` (MESH_POD, PLAIN_POD, SERVICE, ENDPOINTS, ENDPOINT_SLICE, NAMESPACE), parsed.

    Cached and shared: callers build new objects around it and never mutate it.
    """
    text = _TEXTS[name]
    obj: dict[str, Any] = json.loads(text)
    return obj


_TEXTS: dict[str, str] = {
'''
        + "".join(f'    "{n}": _{n}_JSON,\n' for n in parts)
        + "}\n"
    )
    OUT.write_text(head + body + tail)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

"""Rendering the manifests with the real kustomize (``kubectl kustomize``) and reading what comes out."""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SOURCE_MANIFESTS = REPO / "manifests"
DATA = Path(__file__).resolve().parent / "data"
ISTIOD = DATA / "istiod-deployment.yaml"
# The checked-in manifests carry the placeholder image, which every render refuses (manifests/image).
# The tests render a copy with this image set, as an operator sets theirs, in manifests/image only.
TEST_IMAGE = ("registry.test/platform/discofilter", "0.1.0-test")
PLACEHOLDER = "registry.example.com/discofilter:0.1.0"

Obj = dict[str, Any]


def set_image(manifests: Path, name: str, tag: str) -> None:
    """Sets the one images: entry of ``manifests/image``, as an operator edits it."""
    path = manifests / "image" / "kustomization.yaml"
    doc = yaml.safe_load(path.read_text())
    (entry,) = doc["images"]
    assert entry["name"] == "discofilter"
    entry["newName"], entry["newTag"] = name, tag
    path.write_text(yaml.safe_dump(doc))


def configured_copy(where: Path) -> Path:
    shutil.copytree(SOURCE_MANIFESTS, where, ignore=shutil.ignore_patterns(".render.*"))
    set_image(where, *TEST_IMAGE)
    return where


_COPY = Path(tempfile.mkdtemp(prefix="discofilter-manifests-"))
atexit.register(shutil.rmtree, _COPY, ignore_errors=True)
MANIFESTS = configured_copy(_COPY / "manifests")


def kubectl() -> str:
    """kubectl from PATH (tests/run.sh installs Debian's kubernetes-client when it is missing)."""
    path = shutil.which("kubectl")
    if path is None:
        raise AssertionError("kubectl is not on PATH: tests/run.sh installs it (Debian's kubernetes-client)")
    return path


def kustomization_kind(directory: Path) -> str:
    doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return str(doc.get("kind", "Kustomization"))


def kustomize_dirs() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml") if ".render." not in str(p))


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )


def build(directory: Path) -> list[Obj]:
    out = kustomize(directory)
    assert out.returncode == 0, f"kubectl kustomize {directory} failed: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def component_kustomization(component: Path, resources: Path, scratch: Path) -> Path:
    """A kustomization applying a Component to ``resources`` (a copy is made: kustomize loads resource
    files only from below the kustomization, and components only by relative path)."""
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copy(resources, scratch / resources.name)
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [resources.name],
        "components": [os.path.relpath(component, scratch)],
    }
    (scratch / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return scratch


def build_component(component: Path, resources: Path, scratch: Path) -> list[Obj]:
    return build(component_kustomization(component, resources, scratch))


def render(directory: Path, scratch: Path) -> list[Obj]:
    """What an operator gets from ``directory``: built directly, or, for a Component, applied to the
    stock istiod Deployment."""
    if kustomization_kind(directory) == "Component":
        return build_component(directory, ISTIOD, scratch)
    return build(directory)


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in a container's args."""
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def discovery(dep: Obj) -> Obj:
    containers = dep["spec"]["template"]["spec"]["containers"]
    found: Obj = next(c for c in containers if c["name"] == "discovery")
    return found


def without_kubeconfig_wiring(container: Obj, mounts: set[str]) -> Obj:
    c = copy.deepcopy(container)
    c["env"] = [e for e in c["env"] if e["name"] != "KUBECONFIG"]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] not in mounts]
    return c


def kubeconfig_of(objs: list[Obj], dep: Obj) -> tuple[Obj, str]:
    """The kubeconfig istiod reads (KUBECONFIG -> mount -> ConfigMap volume -> ConfigMap key)."""
    c = discovery(dep)
    path = next(e["value"] for e in c["env"] if e["name"] == "KUBECONFIG")
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = one(objs, "ConfigMap", volume["configMap"]["name"])
    assert cm["metadata"]["namespace"] == dep["metadata"]["namespace"]
    doc: Obj = yaml.safe_load(cm["data"][key])
    return doc, mount["name"]


def current(kubeconfig: Obj) -> tuple[Obj, Obj]:
    ctx = next(c for c in kubeconfig["contexts"] if c["name"] == kubeconfig["current-context"])["context"]
    cluster = next(c for c in kubeconfig["clusters"] if c["name"] == ctx["cluster"])["cluster"]
    user = next(u for u in kubeconfig["users"] if u["name"] == ctx["user"])["user"]
    return cluster, user


def discofilter_containers(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(Deployment, container) for every discofilter container, sidecar (init) containers included."""
    found = []
    for dep in find(objs, "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if c["name"] == "discofilter":
                found.append((dep, c))
    return found

"""The Helm post-renderer, both ways Helm runs it, on istiod's Deployment as the chart renders it, and
the image setting with its placeholder refusal (kustomize and post-renderer alike).

No helm binary can be installed here (no PyPI, Debian or npm package ships one), so these tests run the
post-renderer exactly as Helm does:
- Helm 3, ``--post-renderer PATH`` (pkg/postrender/exec.go): executes PATH with the rendered manifests
  on stdin, in helm's working directory and environment, and applies stdout; a non-zero exit fails the
  install and shows stderr.
- Helm 4, ``--post-renderer NAME`` (pkg/postrenderer/postrenderer.go, internal/plugin/
  runtime_subprocess.go and subprocess_commands.go): finds the ``postrenderer/v1`` plugin NAME under
  $HELM_PLUGINS (a local ``helm plugin install DIR`` is a symlink to DIR), picks runtimeConfig's
  platformCommand for this OS, expands ``$VAR`` in it from the environment plus HELM_PLUGIN_NAME and
  HELM_PLUGIN_DIR, splits it on spaces, appends args, and runs it with the manifests on stdin; stdout
  is the result, empty stdout is an error, and stderr is kept from the user.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.kube import (
    ISTIOD,
    MANIFESTS,
    PLACEHOLDER,
    SOURCE_MANIFESTS,
    TEST_IMAGE,
    Obj,
    build_component,
    component_kustomization,
    discofilter_containers,
    kustomize,
)

IMAGE = ":".join(TEST_IMAGE)
OTHER = "registry.test/mirror/discofilter@sha256:" + "ab" * 32
COMPONENT = {"sidecar": "sidecar", "standalone": "standalone/istiod-client"}

# Helm 4's plugin name rule (internal/plugin/metadata.go, validPluginName) and a SemVer 2 version.
PLUGIN_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,}[a-z0-9]$")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCOFILTER_", "HELM_"))}
    scratch = tmp / "tmpdir"
    scratch.mkdir(exist_ok=True)
    return {**env, "TMPDIR": str(scratch), **extra}


def helm3(manifests: Path, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``helm install --post-renderer <manifests>/helm/post-render.sh``, as Helm 3 runs it."""
    cwd = tmp / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [str(manifests / "helm" / "post-render.sh")],
        input=ISTIOD.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=clean_env(tmp, **env),
    )


def expand(text: str, env: dict[str, str]) -> str:
    """Go's os.Expand: ``${VAR}`` and ``$VAR``, unset variables become empty."""
    return re.sub(r"\$\{([^}]*)\}|\$([A-Za-z0-9_]+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def plugin_command(plugin_dir: Path, env: dict[str, str], args: list[str]) -> list[str]:
    """What Helm 4 executes for a subprocess postrenderer/v1 plugin (PrepareCommands)."""
    meta = yaml.safe_load((plugin_dir / "plugin.yaml").read_text())
    assert (
        meta["apiVersion"] == "v1" and meta["type"] == "postrenderer/v1" and meta["runtime"] == "subprocess"
    )
    assert PLUGIN_NAME.match(meta["name"]) and SEMVER.match(str(meta["version"])), meta
    matching = [
        c
        for c in meta["runtimeConfig"]["platformCommand"]
        if c.get("os", "") in ("", sys.platform) and c.get("arch", "") == ""
    ]
    assert matching, "no platformCommand for linux"
    parts = matching[0]["command"].split(" ")
    return [expand(p, env) for p in parts] + [expand(a, env) for a in matching[0].get("args", [])] + args


def helm4(manifests: Path, tmp: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """``helm plugin install <manifests>/helm`` then ``helm install --post-renderer discofilter``."""
    plugins = tmp / "helm-plugins"
    plugins.mkdir(exist_ok=True)
    meta = yaml.safe_load((manifests / "helm" / "plugin.yaml").read_text())
    link = plugins / meta["name"]
    link.unlink(missing_ok=True)  # helm plugin uninstall, when a test installs from another tree
    link.symlink_to(manifests / "helm", target_is_directory=True)
    env = clean_env(tmp, **extra) | {
        "HELM_PLUGINS": str(plugins),
        "HELM_NAMESPACE": "istio-system",
        "HELM_PLUGIN_NAME": meta["name"],
        "HELM_PLUGIN_DIR": str(link),
    }
    cwd = tmp / "cwd"
    cwd.mkdir(exist_ok=True)
    out = subprocess.run(
        plugin_command(link, env, []),
        input=ISTIOD.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )
    if out.returncode == 0:
        assert out.stdout.strip(), "Helm 4 refuses a post-renderer that prints nothing"
    return out


ROUTES = {"helm3": helm3, "helm4": helm4}


def objects(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def images(objs: list[Obj]) -> list[str]:
    return [c["image"] for _, c in discofilter_containers(objs)]


def left_behind(tmp: Path) -> list[Path]:
    return list((tmp / "tmpdir").iterdir()) + [
        p for p in (SOURCE_MANIFESTS / "helm").iterdir() if p.name.startswith(".")
    ]


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("mode", sorted(COMPONENT))
def test_post_renderer_applies_the_component_with_the_image_of_discofilter_image(
    route: str, mode: str, tmp_path: Path
) -> None:
    # The checked-in tree (placeholder in manifests/image); DISCOFILTER_IMAGE sets the image.
    out = ROUTES[route](SOURCE_MANIFESTS, tmp_path, DISCOFILTER_MODE=mode, DISCOFILTER_IMAGE=IMAGE)
    assert out.returncode == 0, out.stderr
    # Exactly what kustomize makes of the Component with that image set in manifests/image.
    expected = build_component(MANIFESTS / COMPONENT[mode], ISTIOD, tmp_path / "expected")
    assert objects(out.stdout) == expected
    assert images(expected) == ([IMAGE] if mode == "sidecar" else [])
    assert not left_behind(tmp_path)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_post_renderer_takes_a_digest_and_otherwise_reads_manifests_image(route: str, tmp_path: Path) -> None:
    out = ROUTES[route](SOURCE_MANIFESTS, tmp_path, DISCOFILTER_IMAGE=OTHER)
    assert out.returncode == 0, out.stderr
    assert images(objects(out.stdout)) == [OTHER]
    # No DISCOFILTER_IMAGE: the one images: entry of manifests/image, the same one kustomize users set.
    out = ROUTES[route](MANIFESTS, tmp_path)
    assert out.returncode == 0, out.stderr
    assert images(objects(out.stdout)) == [IMAGE]


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("image", [None, PLACEHOLDER])
def test_post_renderer_refuses_the_placeholder_image(route: str, image: str | None, tmp_path: Path) -> None:
    env = {} if image is None else {"DISCOFILTER_IMAGE": image}
    out = ROUTES[route](SOURCE_MANIFESTS, tmp_path, **env)
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert PLACEHOLDER in line and "DISCOFILTER_IMAGE" in line and "manifests/image" in line, line
    assert not left_behind(tmp_path)
    # The standalone mode renders no discofilter container: it needs no image.
    out = ROUTES[route](SOURCE_MANIFESTS, tmp_path, DISCOFILTER_MODE="standalone", **env)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("env", "word"),
    [
        ({"DISCOFILTER_MODE": "sidecars"}, "DISCOFILTER_MODE"),
        ({"DISCOFILTER_IMAGE": "a b"}, "DISCOFILTER_IMAGE"),
    ],
)
def test_post_renderer_refuses_bad_settings_in_one_line(
    env: dict[str, str], word: str, tmp_path: Path
) -> None:
    out = helm3(SOURCE_MANIFESTS, tmp_path, **env)
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert word in line


def test_kustomize_refuses_the_placeholder_image(tmp_path: Path) -> None:
    # The checked-in manifests, as an operator who forgot manifests/image would apply them.
    for directory in (
        SOURCE_MANIFESTS / "standalone",
        component_kustomization(SOURCE_MANIFESTS / "sidecar", ISTIOD, tmp_path / "sidecar"),
    ):
        out = kustomize(directory)
        assert out.returncode != 0 and out.stdout == ""
        assert f"is still the placeholder {PLACEHOLDER}: set it in manifests/image" in out.stderr
    # The istiod-client Component has no discofilter container, hence no image to set.
    out = kustomize(
        component_kustomization(SOURCE_MANIFESTS / "standalone" / "istiod-client", ISTIOD, tmp_path / "c")
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("flavour", ["sidecar", "standalone"])
def test_the_image_set_in_manifests_image_reaches_every_discofilter_container(
    flavour: str, tmp_path: Path
) -> None:
    if flavour == "sidecar":
        objs = build_component(MANIFESTS / "sidecar", ISTIOD, tmp_path / "r")
    else:
        objs = objects(kustomize(MANIFESTS / "standalone").stdout)
    assert images(objs) and set(images(objs)) == {IMAGE}
    # The guard is local-config: never in the output.
    assert not [o for o in objs if o["kind"] == "ImageGuard"]

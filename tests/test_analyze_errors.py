"""Bad input to ``discofilter analyze`` gets one line naming what is wrong, and exit 2: an unreachable API
server, a LIST the server forbids (simapi's RBAC, as in error-403-lowpriv.json), a bad selector or flag."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from discofilter.simapi import SimSettings
from tests.analyze_helpers import sim_cluster, start_analyze
from tests.harness import free_port, write_kubeconfig


async def _fails(kubeconfig: Path, out: Path, *extra: str) -> str:
    proc = await start_analyze(kubeconfig, out, "--duration", "2s", *extra)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    lines = stderr.decode().strip().splitlines()
    assert proc.returncode == 2, stderr.decode()
    assert len(lines) == 1, lines
    assert stdout == b""
    assert not (out / "analysis.json").exists()
    return lines[0]


async def test_unreachable_server(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = await _fails(write_kubeconfig(tmp_path / "kc", url), tmp_path / "out")
    assert line.startswith("discofilter: error: cannot reach the API server at " + url)


async def test_forbidden_list(tmp_path: Path) -> None:
    sim = SimSettings(tokens={"low-token": "lowpriv"}, forbidden_users=frozenset({"lowpriv"}))
    async with sim_cluster(tmp_path, settings=sim, token="low-token") as cluster:
        line = await _fails(cluster.kubeconfig, tmp_path / "out")
    assert "LIST pods: 403 Forbidden" in line
    assert "manifests/analyze/" in line


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--namespace-selector", "app in (a"), "selector"),
        (("--duration", "soon"), "--duration 'soon'"),
        (("--mesh-configmap", "istio"), "NAMESPACE/NAME"),
    ],
)
async def test_bad_flags(tmp_path: Path, flags: tuple[str, ...], words: str) -> None:
    async with sim_cluster(tmp_path) as cluster:
        line = await _fails(cluster.kubeconfig, tmp_path / "out", *flags)
    assert line.startswith("discofilter: error: ") and words in line


async def test_bad_mesh_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "mesh"
    bad.write_text("discoverySelectors: {matchLabels: x}\n")
    async with sim_cluster(tmp_path) as cluster:
        line = await _fails(cluster.kubeconfig, tmp_path / "out", "--mesh-config", str(bad))
    assert str(bad) in line

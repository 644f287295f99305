"""``discofilter analyze`` as a user runs it: a real subprocess against simapi with the bench's seeded
churn; the report's per-namespace counts must equal the churn generator's own log."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml

from discofilter.analyze.cli import write_outputs
from tests.analyze_helpers import sim_cluster, start_analyze, wait_for

REPO = Path(__file__).resolve().parent.parent


async def test_counts_equal_the_generators_log(tmp_path: Path) -> None:
    async with sim_cluster(tmp_path) as sim:
        proc = await start_analyze(sim.kubeconfig, tmp_path / "out", "--duration", "6s")
        # Five watches (namespaces and the four kinds) open: from here on every write is in the window.
        await wait_for(lambda: sim.watches_open() >= 5)
        sim.write(400)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        report = json.loads((tmp_path / "out" / "analysis.json").read_text())
        got = {
            ns: {k: t for k, t in entry["events"].items()}
            for ns, entry in report["per_namespace"].items()
            if entry["events"]
        }
        expected = {ns: {k: dict(t) for k, t in kinds.items()} for ns, kinds in sim.log.items()}
        assert got == expected
        outside = {
            ns: e["outside_events"] for ns, e in report["per_namespace"].items() if e["outside_events"]
        }
        assert outside == dict(sim.outside)
        assert report["totals"]["events"] == 400
        assert report["totals"]["outside_events"] == sum(sim.outside.values())
        # Mesh status as the generator drew it (istio-injection=enabled on the mesh namespaces).
        mesh = {ns for ns, e in report["per_namespace"].items() if e["mesh"]}
        assert mesh == {ns for ns, m in sim.churn.namespaces.items() if m} & set(report["per_namespace"])
        # LIST: every object of the initial state, once; simapi answers JSON to istiod's Accept.
        listed = {ns: e["list_objects"] for ns, e in report["per_namespace"].items() if e["list_objects"]}
        assert listed == sim.initial
        assert all(k["lists"] == 1 and k["relists"] == 0 for k in report["kinds"].values())
        text = stdout.decode()
        assert "watch events" in text and "ESTIMATE" in text
        # One LIST and one WATCH per collection, nothing else (the namespace list/watch included).
        paths = sim.requests()
        assert sum(1 for _, q in paths if "watch=1" not in q) == 5
        assert sum(1 for _, q in paths if "watch=1" in q) == 5
        pods = [parse_qs(q) for p, q in paths if p == "/api/v1/pods"]
        assert pods and all(q["fieldSelector"] == ["status.phase!=Failed"] for q in pods)
        # The shipped ClusterRole grants exactly what the run asked for.
        asked = {(_group_resource(p), "watch" if "watch=1" in q else "list") for p, q in paths}
        assert asked == _granted()


def _group_resource(path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    return ("", parts[-1]) if parts[0] == "api" else (parts[1], parts[-1])


def _granted() -> set[tuple[tuple[str, str], str]]:
    docs = list(yaml.safe_load_all((REPO / "manifests" / "analyze" / "roles.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    return {
        ((group, resource), verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


async def test_sigint_ends_the_window_and_still_reports(tmp_path: Path) -> None:
    async with sim_cluster(tmp_path) as sim:
        proc = await start_analyze(sim.kubeconfig, tmp_path / "out", "--duration", "10m")
        await wait_for(lambda: sim.watches_open() >= 5)
        sim.write(50)
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()
        report = json.loads((tmp_path / "out" / "analysis.json").read_text())
        assert report["window"]["ended_early"] is True
        assert report["window"]["seconds"] < 60
        assert report["totals"]["events"] == 50
        assert "(ended early)" in stdout.decode()


def test_without_matplotlib_the_json_is_written_and_one_line_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The bench extra absent: importing matplotlib fails as it would in a serve-only install.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "discofilter.analyze.plots", raising=False)
    written = write_outputs({"totals": {}}, tmp_path)
    assert written == [tmp_path / "analysis.json"]
    assert capsys.readouterr().err == "plots need matplotlib: pip install 'discofilter[bench]'\n"

"""``discofilter demo`` and ``discofilter simapi``, run as a user runs them: real subprocesses, real kubectl.

The demo runs as from the base install: psutil and matplotlib (the ``bench`` extra) are made unimportable
in it and in its children. The test itself uses psutil to find the demo's children.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import pytest

from discofilter.settings import UpstreamSettings
from discofilter.upstream import load_upstream

NO_BENCH_EXTRA = "raise ImportError('the bench extra is not installed')\n"


def base_install_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an install without the ``bench`` extra: importing psutil or matplotlib fails."""
    stubs = tmp_path / "no-bench-extra"
    for module in ("psutil", "matplotlib"):
        (stubs / module).mkdir(parents=True, exist_ok=True)
        (stubs / module / "__init__.py").write_text(NO_BENCH_EXTRA)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs), *sys.path])}


@dataclass
class Demo:
    proc: asyncio.subprocess.Process
    direct: Path
    through: Path
    banner: str

    def children(self) -> list[psutil.Process]:
        found: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
        return found


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discofilter", "demo", "--dir", str(tmp_path / "demo"), "--churn-rate", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=base_install_env(tmp_path),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(90):
            while not lines or "Ctrl-C ends everything" not in lines[-1]:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    err = (await proc.stderr.read()).decode()
                    raise AssertionError(f"the demo ended before it was ready: {''.join(lines)} {err}")
                lines.append(line)
        banner = "".join(lines)
        direct = re.search(r"^kubeconfig \(direct\): (\S+)$", banner, re.M)
        through = re.search(r"^kubeconfig \(through discofilter\): (\S+)$", banner, re.M)
        assert direct and through, banner
        yield Demo(proc, Path(direct[1]), Path(through[1]), banner)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def kubectl(kubeconfig: Path, *args: str) -> str:
    done = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def first_column(table: str) -> set[str]:
    """The NAMESPACE column of ``kubectl get pods -A``'s table (header line dropped)."""
    return {line.split()[0] for line in table.splitlines()[1:] if line.strip()}


async def watch_for(kubeconfig: Path, seconds: float) -> list[list[str]]:
    """``kubectl get pods -A -w --output-watch-events`` for ``seconds``: rows of EVENT, NAMESPACE, NAME."""
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig), "get", "pods", "-A", "-w", "--output-watch-events",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(seconds)
    assert proc.returncode is None, "kubectl -w ended by itself"
    proc.terminate()
    out, _ = await proc.communicate()
    return [line.split()[:3] for line in out.decode().splitlines()[1:] if line.strip()]


def gone(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return bool(status == psutil.STATUS_ZOMBIE)  # ended, waiting to be reaped


async def until_gone(pids: list[int], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not all(gone(pid) for pid in pids):
            await asyncio.sleep(0.1)


async def test_a_demo_session_lists_watches_and_ends_on_ctrl_c(demo: Demo) -> None:
    mesh = {
        name.removeprefix("namespace/")
        for name in kubectl(
            demo.direct, "get", "namespaces", "-l", "istio-injection=enabled", "-o", "name"
        ).split()
    }
    everything = {
        n.removeprefix("namespace/") for n in kubectl(demo.direct, "get", "ns", "-o", "name").split()
    }
    assert mesh and mesh < everything
    assert ", ".join(sorted(mesh)) in demo.banner

    # The commands the banner offers, as a user would type them.
    direct = await asyncio.to_thread(kubectl, demo.direct, "get", "pods", "-A")
    through = await asyncio.to_thread(kubectl, demo.through, "get", "pods", "-A")
    assert first_column(direct) == everything  # every namespace has pods
    assert first_column(through) == mesh

    through_events, direct_events = await asyncio.gather(
        watch_for(demo.through, 6.0), watch_for(demo.direct, 6.0)
    )
    churn = [row for row in through_events if row[0] in ("MODIFIED", "DELETED")]
    assert len(churn) >= 3, through_events  # 20 writes/s, a quarter of them in the mesh
    assert {ns for _, ns, _ in through_events} <= mesh
    assert {ns for _, ns, _ in direct_events} - mesh  # the churn is not only in the mesh

    # Ctrl-C: the demo alone gets the signal here (a terminal would signal its children too).
    children = demo.children()
    assert sorted(" ".join(p.cmdline()[2:4]) for p in children) == ["discofilter serve", "discofilter simapi"]
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.stdout is not None
    async with asyncio.timeout(30):
        rest = (await demo.proc.stdout.read()).decode()
        await demo.proc.wait()
    assert demo.proc.returncode == 0
    assert rest.strip() == "discofilter demo: stopped"
    await until_gone([p.pid for p in children], 5.0)


async def test_a_killed_demo_takes_its_processes_with_it(demo: Demo) -> None:
    """SIGKILL gives the demo no chance to clean up: PR_SET_PDEATHSIG ends its children."""
    pids = [p.pid for p in demo.children()]
    assert len(pids) == 2
    demo.proc.kill()
    await demo.proc.wait()
    await until_gone(pids, 20.0)


async def test_simapi_alone_checks_tokens_and_writes_a_kubeconfig_discofilter_loads(tmp_path: Path) -> None:
    """kubectl sends a token only to https servers (client-go clientcmd), so the token is checked here
    with a plain HTTP client and the kubeconfig loaded as ``discofilter serve`` loads it."""
    kubeconfig = tmp_path / "sim.kubeconfig"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discofilter", "simapi", "--kubeconfig-out", str(kubeconfig),
        "--namespaces", "4", "--mesh-fraction", "0.5", "--churn-rate", "0",
        "--token", "s3cret=admin", "--token", "other=someone",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=base_install_env(tmp_path),
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            first = (await proc.stdout.readline()).decode()
        found = re.match(
            r"simapi serving (http://127\.0\.0\.1:\d+): 4 namespaces, 16 pods; in the mesh: ", first
        )
        assert found, first
        upstream = await load_upstream(UpstreamSettings(kubeconfig=str(kubeconfig)))
        assert upstream.base_url == found[1]
        assert await upstream.authorization() == "Bearer s3cret"  # the first --token
        async with aiohttp.ClientSession() as session:
            for auth, status in (
                ("Bearer s3cret", 200),
                ("Bearer other", 200),
                ("Bearer nope", 401),
                (None, 403),
            ):
                headers = {"Authorization": auth} if auth else {}
                async with session.get(f"{found[1]}/api/v1/pods", headers=headers) as resp:
                    assert resp.status == status, auth
                    if status == 200:
                        assert len((await resp.json())["items"]) == 16
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.wait()
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["demo", "--namespaces", "1"], "--namespaces must be at least 2 (one mesh and one plain namespace)"),
        (["demo", "--churn-rate", "-1"], "--churn-rate must be 0 (no churn) or more, not -1"),
        (["simapi", "--listen", "nowhere"], "--listen 'nowhere' is not HOST:PORT"),
        (["simapi", "--token", "abc"], "--token 'abc' is not TOKEN=USER"),
    ],
)
def test_bad_flags_end_in_one_line(args: list[str], problem: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "discofilter", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"discofilter: error: {problem}"]


def test_a_demo_dir_that_cannot_be_written_ends_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "discofilter", "demo", "--dir", str(blocker / "sub")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"discofilter: error: --dir {str(blocker / 'sub')!r} is not a writable directory: Not a directory"
    ]
    assert psutil.Process().children() == []

"""The benchmark's processes: JSON-lines workers, the real ``discofilter serve``, and their CPU and memory.

Each part of the benchmark runs in its own process so that psutil can charge CPU time and memory to the
right one: the simulated API server, each proxy under test, the watch clients. A worker speaks one JSON
object per line: the orchestrator writes ``{"cmd": ..., ...}`` to its stdin and reads one reply line from
its stdout; a reply with ``"error"`` becomes a ``BenchError``. Workers log to stderr, which goes to a file
under ``OUT/logs`` so a failure can be read afterwards.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import aiohttp
import orjson

from discofilter.errors import ConfigError, DiscofilterError

if TYPE_CHECKING:
    import psutil

JsonObj = dict[str, Any]
Handler = Callable[[JsonObj], Awaitable[JsonObj]]

# Replies carry per-event tables (resourceVersion, time) of whole latency runs: tens of MB at most.
_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h
# Resolved here, in the parent: between fork and exec the child only makes the call (no import, no
# lookup that could wait on a lock another thread of the parent held at the fork).
_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the bench process dies, however it dies (SIGKILL, OOM),
    so no proxy or API server outlives it. Linux only; elsewhere nothing is done."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the parent died before prctl: end now rather than run on alone
            os._exit(1)


_LINE_LIMIT: Final = 1 << 28
_STOP_GRACE_SECONDS: Final = 10.0


class BenchError(DiscofilterError):
    """The benchmark could not run: a process failed to start, died, or answered with an error."""


# --- the worker side ------------------------------------------------------------------------------------


async def serve_commands(handlers: Mapping[str, Handler]) -> None:
    """Answer commands from stdin until ``quit`` or EOF (the orchestrator went away)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    while True:
        line = await reader.readline()
        if not line:
            return
        msg: JsonObj = json.loads(line)
        cmd = str(msg.pop("cmd", ""))
        if cmd == "quit":
            _reply(out, {"ok": True})
            return
        handler = handlers.get(cmd)
        if handler is None:
            _reply(out, {"error": f"unknown command {cmd!r}"})
            continue
        try:
            result = await handler(msg)
        except (BenchError, aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
            result = {"error": f"{cmd}: {type(exc).__name__}: {exc}"}
        _reply(out, result)


def _reply(out: IO[bytes], obj: JsonObj) -> None:
    out.write(orjson.dumps(obj) + b"\n")
    out.flush()


# --- the orchestrator side ------------------------------------------------------------------------------


def free_port() -> int:
    """A free loopback port (bound and released: a tiny race, retried by the callers that start servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _psutil_process(pid: int) -> psutil.Process | None:
    """psutil's handle, for the benchmark's CPU and memory figures. psutil is the ``bench`` extra, and
    ``discofilter demo`` starts its processes through this module from the base install: there, None."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process(pid)


class Proc:
    """A child process with its log file and psutil handle; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None
        self.rss_samples_mb: list[float] = []

    async def start(self, *, with_pipes: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE if with_pipes else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if with_pipes else asyncio.subprocess.DEVNULL,
                stderr=log,
                limit=_LINE_LIMIT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_die_with_parent,
            )
        self.ps = _psutil_process(self.proc.pid)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        assert self.ps is not None
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def cpu_seconds_precise(self) -> float:
        """User + system CPU time so far, to the nanosecond where Linux gives it: the sum of the
        process's threads' ``/proc/PID/task/TID/schedstat`` run times. psutil's figure moves in clock
        ticks (10 ms), as much as a paced run at 50 events/s costs a proxy in a second. Threads that
        have ended are not counted (the proxies' work is on their main thread); elsewhere, psutil's."""
        try:
            total = 0
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return self.cpu_seconds()
        return total / 1e9

    def sample_rss(self) -> None:
        import psutil

        assert self.ps is not None
        with contextlib.suppress(psutil.Error):
            self.rss_samples_mb.append(self.ps.memory_info().rss / 1e6)

    def rss_mb(self) -> float | None:
        """The process's resident memory now, in MB; None once it is gone."""
        assert self.ps is not None
        try:
            return float(self.ps.memory_info().rss / 1e6)
        except psutil.Error:
            return None

    def peak_rss_mb(self) -> float:
        """The kernel's high-water mark (VmHWM) where there is one, else the largest sample."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
        except OSError:
            pass
        return max(self.rss_samples_mb, default=0.0)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()  # workers and the bench proxies stop when their stdin closes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 2.0)
            if self.exited:
                return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), _STOP_GRACE_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class Worker(Proc):
    """A ``python -m discofilter.bench.<module>`` child answering JSON-lines commands."""

    def __init__(self, name: str, module: str, log_dir: Path, args: Sequence[str] = ()) -> None:
        super().__init__(name, [sys.executable, "-m", module, *args], log_dir)
        self._lock = asyncio.Lock()

    async def start(self, *, with_pipes: bool = True) -> None:
        await super().start(with_pipes=with_pipes)

    async def call(self, cmd: str, timeout: float | None = None, **args: Any) -> JsonObj:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        async with self._lock:
            try:
                proc.stdin.write(orjson.dumps({"cmd": cmd, **args}) + b"\n")
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), timeout)
            except (ConnectionError, TimeoutError) as exc:
                raise BenchError(
                    f"{self.name} did not answer {cmd!r}: {exc!r}; log: {self.log_tail()}"
                ) from exc
        if not line:
            raise BenchError(f"{self.name} exited during {cmd!r}; log: {self.log_tail()}")
        reply: JsonObj = orjson.loads(line)
        if "error" in reply:
            raise BenchError(f"{self.name}: {reply['error']}")
        return reply


def write_kubeconfig(
    path: Path, server: str, *, token: str | None = None, ca_file: Path | None = None
) -> Path:
    """A kubeconfig for the simulated API server: without credentials (authentication is off there), or
    with a bearer ``token``; for an ``https://`` server, its CA in ``certificate-authority``, as a
    cluster's kubeconfig has it. JSON is YAML, so no YAML library is needed."""
    cluster: dict[str, str] = {"server": server}
    if ca_file is not None:
        # Absolute: a relative certificate-authority is read from the kubeconfig's own folder (as kubectl
        # reads it), and the bench's output folder is relative by default (./bench-out).
        cluster["certificate-authority"] = str(ca_file.resolve())
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "simapi", "cluster": cluster}],
        "users": [{"name": "bench", "user": {"token": token} if token else {}}],
        "contexts": [{"name": "simapi", "context": {"cluster": "simapi", "user": "bench"}}],
        "current-context": "simapi",
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


async def start_discofilter(
    name: str, kubeconfig: Path, log_dir: Path, *, selectors: Sequence[str] = (), extra: Sequence[str] = ()
) -> tuple[Proc, str]:
    """``python -m discofilter serve`` exactly as an operator runs it; returns it and its URL once ready."""
    for _attempt in range(3):
        port, health, metrics = free_port(), free_port(), free_port()
        argv = [
            sys.executable, "-m", "discofilter", "serve", "--kubeconfig", str(kubeconfig),
            "--listen", f"127.0.0.1:{port}", "--health-listen", f"127.0.0.1:{health}",
            "--metrics-listen", f"127.0.0.1:{metrics}",
            "--log-level", "warning",
        ]  # fmt: skip
        for sel in selectors:
            argv += ["--namespace-selector", sel]
        proc = Proc(name, [*argv, *extra], log_dir)
        await proc.start()
        try:
            ready = await _wait_ready(proc, f"http://127.0.0.1:{health}/readyz")
        except BaseException:
            # Ctrl-C (or any failure) while it starts: it is nobody's to stop yet but ours.
            await asyncio.shield(proc.stop())
            raise
        if ready:
            return proc, f"http://127.0.0.1:{port}"
        await proc.stop()
    raise BenchError(f"{name} did not become ready; log: {proc.log_tail()}")


async def _wait_ready(proc: Proc, url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert proc.proc is not None
            if proc.proc.returncode is not None:
                return False
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return True
            await asyncio.sleep(0.1)
    return False


async def sample_rss(procs: Sequence[Proc], stop: asyncio.Event, every: float = 0.1) -> None:
    """Sample each process's RSS until ``stop`` is set (a fallback where VmHWM is unavailable)."""
    while not stop.is_set():
        for p in procs:
            p.sample_rss()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def writable_dir(out: Path, flag: str) -> Path:
    """Make ``out`` (``flag`` names it in the error) and prove it writable before a long run starts, so a
    bad path is one line at once rather than a traceback after minutes of work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").write_text("")
        (out / ".write-test").unlink()
    except OSError as exc:
        raise ConfigError(f"{flag} {str(out)!r} is not a writable directory: {exc.strerror or exc}") from exc
    return out

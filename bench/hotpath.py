"""The watch relay's cost per event in the real ``discofilter serve`` process, alone (no other proxies).

    python bench/hotpath.py                      # saturation: CPU µs per stream event (psutil), best of 5
    python bench/hotpath.py --rate 2000          # one event per upstream read at 2,000 events/s
    python bench/hotpath.py --callgrind          # instructions per event (valgrind), immune to noise

A replay pump (``discofilter.bench.pump``) serves a churn stream of all four resources' events (pods,
Services, Endpoints, EndpointSlices; 10% in mesh namespaces) on one pod watch; ``discofilter serve``
filters it; this process reads the answer and checks it is exactly the mesh events, ``--loops`` times
over. With ``--callgrind`` the proxy runs under ``valgrind --tool=callgrind --instr-atstart=no`` and only
the replays are instrumented (``callgrind_control -i on/off``): two replays, of 1 and of 1 + ``--loops``
passes, and their difference per event is the relay's own instruction count, startup excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import psutil

from discofilter.bench.procs import Proc, free_port, write_kubeconfig
from discofilter.bench.pump import Recording, frame_chunks, serve_pump
from discofilter.bench.workload import Churn, WorkloadSettings

KINDS = {"pods": "Pod", "services": "Service", "endpoints": "Endpoints", "endpointslices": "EndpointSlice"}


def build(events: int, seed: int) -> tuple[Recording, int, int]:
    """The recording, the mesh events' bytes per pass, and their count."""
    churn = Churn(WorkloadSettings(namespaces=500, seed=seed), first_rv=2)
    state = churn.initial_state()
    ns_list = {
        "kind": "NamespaceList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1"},
        "items": state["namespaces"],
    }
    start = churn.rv
    lines: list[bytes] = []
    kept_bytes = kept = 0
    while len(lines) < events:
        w = churn.step()
        obj = {"kind": KINDS[w.resource], "apiVersion": "v1", **w.obj}
        line = b'{"type":"' + w.type.encode() + b'","object":' + orjson.dumps(obj) + b"}\n"
        lines.append(line)
        if w.mesh:
            kept_bytes += len(line)
            kept += 1
    rec = Recording(str(start), {"/api/v1/pods": frame_chunks(lines)}, orjson.dumps(ns_list))
    return rec, kept_bytes, kept


async def replay(url: str, rv: str, loops: int, expect: int, rate: float) -> None:
    q = f"watch=1&resourceVersion={rv}&benchLoops={loops}" + (f"&benchRate={rate:g}" if rate else "")
    got = 0
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{url}/api/v1/pods?{q}", headers={"Accept": "application/json"}) as resp,
    ):
        if resp.status != 200:
            raise SystemExit(f"HTTP {resp.status}: {await resp.text()}")
        while got < expect:
            chunk = await resp.content.readany()
            if not chunk:
                raise SystemExit(f"stream ended after {got} of {expect} bytes")
            got += len(chunk)
    if got != expect:
        raise SystemExit(f"got {got} bytes, expected {expect}")


async def start_proxy(kubeconfig: Path, logs: Path, wrap: list[str]) -> tuple[Proc, str]:
    port, health, metrics = free_port(), free_port(), free_port()
    argv = [
        *(wrap or [sys.executable]), "-m", "discofilter", "serve", "--kubeconfig", str(kubeconfig),
        "--listen", f"127.0.0.1:{port}", "--health-listen", f"127.0.0.1:{health}",
        "--metrics-listen", f"127.0.0.1:{metrics}", "--log-level", "warning",
    ]  # fmt: skip
    proc = Proc("discofilter", argv, logs)
    await proc.start()
    async with aiohttp.ClientSession() as s:
        for _ in range(1200):
            try:
                async with s.get(f"http://127.0.0.1:{health}/readyz") as r:
                    if r.status == 200:
                        return proc, f"http://127.0.0.1:{port}"
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.25)
    raise SystemExit(f"discofilter did not become ready: {proc.log_tail()}")


def callgrind_total(pid: int, out_dir: Path) -> tuple[int, int]:
    """Instructions so far, and those in memcpy/memmove: callgrind_control dumps the counts since its
    last dump, so the dumps are summed. memcpy is apart because valgrind counts each byte a ``rep movsb``
    moves as an instruction, so a copy weighs far more here than its real cost."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    total = copies = 0
    for f in sorted(out_dir.glob(f"callgrind.out.{pid}.*")):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                total += int(line.split()[1])
                break
        ann = subprocess.run(["callgrind_annotate", str(f)], capture_output=True, text=True).stdout
        for line in ann.splitlines():
            count = line.split(maxsplit=1)[0].replace(",", "") if line.strip() else ""
            if count.isdigit() and ":__mem" in line and ("memmove" in line or "memcpy" in line):
                copies += int(count)
    return total, copies


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--loops", type=int, default=5)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--rate", type=float, default=0.0, help="events/s, one per write (0: saturation)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--profile", action="store_true", help="run the proxy under cProfile (proxy.prof)")
    args = ap.parse_args()
    rec, kept_bytes, kept = build(args.events, args.seed)
    server, pump_url = await serve_pump(rec)
    work = Path(tempfile.mkdtemp(prefix="hotpath-"))
    wrap: list[str] = []
    if args.callgrind:
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind is not installed")
        wrap = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={work}/callgrind.out.%p", sys.executable,
        ]  # fmt: skip
    elif args.profile:
        wrap = [sys.executable, "-m", "cProfile", "-o", str(work / "proxy.prof")]
    proc, url = await start_proxy(write_kubeconfig(work / "kubeconfig", pump_url), work, wrap)
    events = args.events
    try:
        await replay(url, rec.start_rv, 1, kept_bytes, 0)  # warm-up
        if args.callgrind:
            pid = proc.pid
            counts = []
            for loops in (1, 1 + args.loops):
                subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
                before = callgrind_total(pid, work)
                await replay(url, rec.start_rv, loops, kept_bytes * loops, args.rate)
                after = callgrind_total(pid, work)
                counts.append((after[0] - before[0], after[1] - before[1]))
                subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
            n = args.loops * events
            per, copy = (counts[1][0] - counts[0][0]) / n, (counts[1][1] - counts[0][1]) / n
            print(
                f"instructions per stream event: {per:,.0f}, of which memcpy/memmove {copy:,.0f}, "
                f"the rest {per - copy:,.0f} ({counts} for 1 and {1 + args.loops} passes)"
            )
            print(f"callgrind dumps: {work}")
            return
        p = psutil.Process(proc.pid)
        per_event = []
        for _ in range(args.trials):
            c0, t0 = sum(p.cpu_times()[:2]), time.perf_counter()
            await replay(url, rec.start_rv, args.loops, kept_bytes * args.loops, args.rate)
            c1, t1 = sum(p.cpu_times()[:2]), time.perf_counter()
            per_event.append((c1 - c0) / (events * args.loops) * 1e6)
            print(
                f"  {events * args.loops / (t1 - t0):,.0f} events/s, {per_event[-1]:.2f} µs CPU/event",
                file=sys.stderr,
            )
        mb = len(rec.streams["/api/v1/pods"]) / 1e6
        print(
            f"{events} events x {args.loops} ({kept} kept per pass, {mb:.1f} MB),"
            f" rate {args.rate or 'max'}: proxy CPU µs per stream event best {min(per_event):.2f},"
            f" median {statistics.median(per_event):.2f}"
        )
    finally:
        await proc.stop()
        server.close()
        if args.profile:
            print(f"profile: {work / 'proxy.prof'}")


if __name__ == "__main__":
    asyncio.run(main())

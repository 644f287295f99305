"""``discofilter bench``, run for real: a subprocess, real processes, real sockets, no mocks.

- ``--quick`` produces results.json with the four variants and sane numbers, valid PNG plots, and a
  discofilter client that got exactly the events the churn generator logged in mesh namespaces.
- The relist phase: per kind of namespace membership change, the relists the clients counted (none for a
  mesh namespace created or deleted, one per watch per label flip through discofilter, none through the
  raw relay), in results.json and in the report's table.
- The real-cluster mode, against the simulated API server served as if it were a cluster: it cleans up
  after itself (also on SIGINT) and refuses a namespace it did not create.
- Bad flags end in one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from discofilter.bench.procs import write_kubeconfig
from discofilter.bench.results import REQUIRED_KEYS
from discofilter.simapi import SimSettings, Store, serve

VARIANTS = ("direct", "passthrough", "naive", "discofilter")
PROXY_ONLY = ("proxy_cpu_us_per_event", "peak_rss_mb")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "discofilter", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    # A relative --out, as the README's command runs it (its default is ./bench-out): the kubeconfigs
    # the bench writes there must still find their CA (a relative certificate-authority is read from
    # the kubeconfig's own folder, as kubectl reads it).
    here = tmp_path_factory.mktemp("bench-cwd")
    out = here / "bench-out"
    done = bench("--quick", "--out", "bench-out", cwd=here)
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return out, results, done.stdout


def test_quick_reports_every_variant_with_sane_values(quick: tuple[Path, dict[str, Any], str]) -> None:
    _, r, stdout = quick
    assert set(VARIANTS) <= set(r["variants"])
    for name in VARIANTS:
        v = r["variants"][name]
        for key in REQUIRED_KEYS:
            assert key in v, (name, key)
            if name == "direct" and key in PROXY_ONLY:
                assert v[key] is None  # no proxy, nothing to charge
                continue
            assert isinstance(v[key], int | float), (name, key, v[key])
            assert v[key] >= 0, (name, key, v[key])
        assert v["events_per_s"] > 0 and v["mb_per_s"] > 0
        assert v["client_events"] > 0 and v["client_bytes"] > 0
        assert 0 < v["latency_p50_ms"] <= v["latency_p99_ms"] <= v["latency_max_ms"]
        assert v["latency_events"] > 0
        if name != "direct":
            assert v["proxy_cpu_us_per_event"] > 0 and 10 < v["peak_rss_mb"] < 2000
    for key in ("cpu_model", "cores", "python"):
        assert r["machine"][key]
    assert r["workload"]["namespaces"] == 50 and r["workload"]["mesh_fraction"] == 0.1
    assert "discofilter" in stdout and "NET" in stdout


def test_discofilter_keeps_exactly_the_mesh_events_of_the_generators_log(
    quick: tuple[Path, dict[str, Any], str],
) -> None:
    _, r, _ = quick
    stream, v = r["stream"], r["variants"]
    # stream.events / mesh_events come from the churn generator's own log of what it wrote.
    per_resource = stream["per_resource"]
    assert stream["events"] == sum(c["events"] for c in per_resource.values())
    assert stream["mesh_events"] == sum(c["mesh_events"] for c in per_resource.values())
    assert 0 < stream["mesh_events"] < stream["events"]
    assert v["direct"]["client_events"] == stream["events"]
    assert v["passthrough"]["client_events"] == stream["events"]
    assert v["discofilter"]["client_events"] == stream["mesh_events"]
    assert v["naive"]["client_events"] == stream["mesh_events"]
    assert v["discofilter"]["client_events"] < v["direct"]["client_events"]
    assert v["discofilter"]["client_bytes"] < v["direct"]["client_bytes"]
    assert r["all_kept"]["discofilter"]["client_events"] == stream["events"]
    assert all(v[n]["client_events_consistent"] for n in VARIANTS)


def test_plots_are_png_files(quick: tuple[Path, dict[str, Any], str]) -> None:
    out, _, _ = quick
    pngs = sorted(out.glob("*.png"))
    expected = {"net.png", "flip.png", "throughput.png", "cpu.png", "latency.png", "core.png"}
    assert {p.name for p in pngs} >= expected
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC), png
        assert data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 100 and height > 100
        assert data.endswith(b"IEND\xaeB`\x82"), png


VERDICT = re.compile(
    r"verdict: discofilter \+ an istiod-like client through it cost (?P<net>\d+\.\d\d)x of the client "
    r"alone at (?P<rate>[\d,]+) events/s over TLS "
    r"\((?:saves (?P<saves>\d+)%|saves nothing: (?P<more>\d+)% more CPU than without it); "
    r"(?P<go>\d+\.\d\d)x against client-go's decode cost\); "
    r"(?P<met>\d+) of (?P<total>\d+) targets met; details: (?P<json>\S+), (?P<png>\S+)"
)


def test_the_first_line_is_a_verdict_that_agrees_with_results_json(
    quick: tuple[Path, dict[str, Any], str],
) -> None:
    _out, r, stdout = quick
    first = stdout.splitlines()[0]
    m = VERDICT.fullmatch(first)
    assert m, first
    # The headline is the paced TLS run at --rate (200 events/s in the quick run too).
    headline = paced_entry(r, 200.0)
    net = headline["net"]["discofilter"]
    assert float(m["net"]) == pytest.approx(net["measured"], abs=0.005)
    assert float(m["go"]) == pytest.approx(net["client_go_estimate"], abs=0.005)
    if net["measured"] < 1:
        assert int(m["saves"]) == round((1 - net["measured"]) * 100)
    else:
        assert int(m["more"]) == round((net["measured"] - 1) * 100)
    # The rate the pump achieved for discofilter in that run, not the one asked for.
    assert int(m["rate"].replace(",", "")) == round(headline["variants"]["discofilter"]["achieved_rate"])
    assert r["verdict"]["transport"] == "TLS" and r["verdict"]["requested_rate"] == 200.0
    assert int(m["met"]) == sum(1 for t in r["targets"] if t["met"] is True)
    # 10 targets as before, 2 against the bare reader, one NET per paced rate (two in --quick), 1 NET
    # with exclusion.
    assert int(m["total"]) == len(r["targets"]) == 10 + 2 + 2 + 1
    given = Path("bench-out")  # the paths are printed as the user gave --out (the fixture: relative)
    assert m["json"] == str(given / "results.json") and m["png"] == str(given / "*.png")


def paced_entry(r: dict[str, Any], rate: float) -> dict[str, Any]:
    entry: dict[str, Any] = next(e for e in r["paced"]["rates"] if e["rate"] == rate)
    return entry


PACED_VARIANTS = ("bare-tls-reader", "direct", "passthrough", "naive", "discofilter")


def test_paced_runs_record_rates_near_the_requested_ones(quick: tuple[Path, dict[str, Any], str]) -> None:
    _, r, stdout = quick
    assert [e["rate"] for e in r["paced"]["rates"]] == [50.0, 200.0]
    for entry in r["paced"]["rates"]:
        for name in PACED_VARIANTS:
            v = entry["variants"][name]
            assert v["requested_rate"] == entry["rate"]
            # Upstream events over the time from the schedule's start to the last end marker.
            assert v["achieved_rate"] == pytest.approx(entry["rate"], rel=0.15), (name, v)
            assert v["upstream_events"] == pytest.approx(entry["rate"] * r["paced"]["seconds"], rel=0.1)
            assert v["cpu_us_per_upstream_event"] > 0
        # Every variant got the same upstream events; discofilter and naive passed only the mesh's.
        events = {entry["variants"][n]["upstream_events"] for n in PACED_VARIANTS}
        assert len(events) == 1
        assert entry["variants"]["direct"]["client_events"] == events.pop()
        kept = entry["variants"]["discofilter"]["client_events"]
        assert kept == entry["variants"]["naive"]["client_events"]
        assert 4 <= kept < entry["variants"]["direct"]["client_events"]  # the four end markers at least
        assert set(entry["net"]) >= {"passthrough", "naive", "discofilter"}
    assert "Paced runs over TLS" in stdout


def test_the_bare_tls_reader_is_the_floor_in_results(quick: tuple[Path, dict[str, Any], str]) -> None:
    _, r, _ = quick
    for entry in r["paced"]["rates"]:
        bare = entry["variants"]["bare-tls-reader"]
        # It read every byte the pump sent (the heads of four answers on top) and decoded nothing.
        assert bare["client_bytes"] > bare["upstream_bytes"]
        assert bare["proxy_cpu_s"] is None and bare["client_cpu_s"] > 0
        assert bare["reads"] >= bare["upstream_events"]  # paced: at least one read per event
        # Reading and dropping costs less than reading and decoding, on the same stream.
        direct = entry["variants"]["direct"]
        assert bare["cpu_us_per_upstream_event"] < direct["cpu_us_per_upstream_event"]
        ratio = entry["proxy_cpu_vs_bare_reader"]["discofilter"]
        assert ratio == pytest.approx(entry["variants"]["discofilter"]["proxy_cpu_s"] / bare["client_cpu_s"])


def test_the_upstream_is_tls_with_the_runs_own_ca(quick: tuple[Path, dict[str, Any], str]) -> None:
    out, r, _ = quick
    up = r["paced"]["upstream"]
    # What the bare reader's handshake negotiated with the pump; the proxies verified the same CA.
    assert up["scheme"] == "https" and up["tls_version"] in ("TLSv1.2", "TLSv1.3") and up["cipher"]
    for phase in ("saturation", "latency"):
        kubeconfig = json.loads((out / f"{phase}.kubeconfig").read_text())
        cluster = kubeconfig["clusters"][0]["cluster"]
        assert cluster["server"].startswith("https://127.0.0.1:")
        assert cluster["certificate-authority"] == str(out / "tls" / "ca.crt")
    assert (out / "tls" / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_the_exclusion_variant_runs_only_where_the_build_offers_it(
    quick: tuple[Path, dict[str, Any], str],
) -> None:
    _, r, stdout = quick
    help_text = subprocess.run(
        [sys.executable, "-m", "discofilter", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    offered = "--server-side-exclusion" in help_text
    excl = r["paced"]["exclusion"]
    assert excl["available"] is offered
    names = [t["target"] for t in r["targets"] if "with exclusion" in t["target"]]
    assert len(names) == 2
    for entry in r["paced"]["rates"]:
        assert ("discofilter-exclusion" in entry["variants"]) is offered
    if not offered:
        assert "not available in this build" in excl["note"] and "not available in this build" in stdout
        assert all(t["met"] is None for t in r["targets"] if "with exclusion" in t["target"])


def test_results_path_and_cpu_model_are_on_stdout(quick: tuple[Path, dict[str, Any], str]) -> None:
    _out, r, stdout = quick
    lines = stdout.splitlines()
    assert f"results: {Path('bench-out') / 'results.json'}" in lines  # as --out was given
    plots = next(line for line in lines if line.startswith("plots: "))
    given = Path("bench-out")
    assert str(given / "net.png") in plots and str(given / "flip.png") in plots
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    assert model and r["machine"]["cpu_model"] == model[1].strip()
    assert model[1].strip() in stdout


def test_flip_runs_record_rss_through_each_latency_run(quick: tuple[Path, dict[str, Any], str]) -> None:
    _, r, _ = quick
    for name in ("passthrough", "naive", "discofilter"):
        run = r["flip_runs"][name]
        assert run["flips_s"] and all(0 < t < run["end_s"] for t in run["flips_s"])
        times = [t for t, _ in run["rss_mb"]]
        # Sampled every 50 ms from before the first event to after the last.
        assert times == sorted(times) and times[0] < 0.1 and times[-1] > run["flips_s"][-1]
        assert all(10 < mb < 2000 for _, mb in run["rss_mb"])
        assert max(mb for _, mb in run["rss_mb"]) <= r["process_peak_rss_mb"][name] + 1


KINDS = ("create", "delete", "join", "leave")


def test_relists_are_counted_per_kind_of_membership_change(quick: tuple[Path, dict[str, Any], str]) -> None:
    _, r, _ = quick
    x = r["relists"]
    assert list(x["kinds"]) == list(KINDS)
    assert x["variants"] == ["discofilter", "passthrough"] and x["watches_per_client"] == 4
    changes = r["run"]["relist_changes"]
    for kind, entry in x["kinds"].items():
        assert entry["changes"] == changes == len(entry["namespaces"]), kind
        disco, raw = entry["variants"]["discofilter"], entry["variants"]["passthrough"]
        # Without a filter nothing ever ends a watch.
        assert raw["relists"] == raw["expired_410"] == raw["relist_bytes"] == 0, kind
        # Every relist the clients made reached simapi once, and nothing else LISTed the four resources.
        assert entry["simapi_lists"] == disco["relists"] + raw["relists"], kind
    created, deleted = x["kinds"]["create"], x["kinds"]["delete"]
    assert created["namespaces"] == deleted["namespaces"]
    for entry in (created, deleted):
        disco = entry["variants"]["discofilter"]
        assert disco["relists"] == disco["expired_410"] == disco["relist_bytes"] == 0
        # The namespace's objects reached the client through discofilter as events, as they did the
        # raw relay's: more than the four end markers per change.
        assert disco["watch_events"] == entry["variants"]["passthrough"]["watch_events"] > 4 * changes
    for kind in ("join", "leave"):
        disco = x["kinds"][kind]["variants"]["discofilter"]
        # One 410 and one relist per watch per flip, each relist a LIST of real bytes.
        assert disco["relists"] >= 1 and disco["relist_bytes"] > 0
        assert disco["relists"] == disco["expired_410"] == 4 * changes
        assert disco["relists_per_watch_per_change"] == 1.0
    assert x["as_expected"] is True


def test_the_report_prints_relists_per_kind_of_change(quick: tuple[Path, dict[str, Any], str]) -> None:
    _, r, stdout = quick
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Relists per membership change"))
    assert lines[head + 1].split()[:3] == ["change", "changes", "disco"]
    rows = lines[head + 3 : head + 7]
    for row, (kind, entry) in zip(rows, r["relists"]["kinds"].items(), strict=True):
        assert row.startswith(entry["label"]), (kind, row)
        cells = row[len(entry["label"]) :].split()
        disco, raw = entry["variants"]["discofilter"], entry["variants"]["passthrough"]
        assert cells == [
            str(entry["changes"]),
            str(disco["relists"]),
            f"{disco['relists_per_watch_per_change']:.2f}",
            str(disco["expired_410"]),
            f"{disco['relist_bytes'] / 1e6:.2f}",
            str(raw["relists"]),
            f"{raw['relists_per_watch_per_change']:.2f}",
            str(raw["expired_410"]),
            f"{raw['relist_bytes'] / 1e6:.2f}",
            str(entry["simapi_lists"]),
        ], row


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--mesh-fraction", "1.5"], "--mesh-fraction"),
        (["--rate", "100", "--churn", "10"], "--churn"),
        (["--cluster-namespace", "x"], "--kubeconfig"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], "kubeconfig"),
        (["--trials", "0"], "--trials"),
        (["--relist-changes", "0"], "--relist-changes must be at least 1"),
    ],
)
def test_bad_flags_end_in_one_line(tmp_path: Path, flags: list[str], problem: str) -> None:
    done = bench("--out", str(tmp_path), *flags, timeout=30)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], done.stderr


def test_without_the_bench_extra_it_says_how_to_install_it(tmp_path: Path) -> None:
    # matplotlib made unimportable in the child, as in an install without the 'bench' extra (the image).
    code = (
        "import sys; sys.modules['matplotlib'] = None; from discofilter.cli import main; "
        f"sys.exit(main(['bench', '--quick', '--out', {str(tmp_path)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "discofilter: error: discofilter bench needs matplotlib, which the 'bench' extra installs: "
        "pip install 'discofilter[bench]' (from a checkout: pip install '.[bench]')"
    ]
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


# --- real-cluster mode against the simulated API server ----------------------------------------------


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Store, Path]]:
    store = Store(seed=3)
    for ns in ("default", "kube-system", "someone-elses"):
        store.create("namespaces", {"metadata": {"name": ns, "labels": {"team": "other"}}})
    pod = {"metadata": {"name": "keep-me"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    store.create("pods", pod, namespace="someone-elses")
    runner, url = await serve(store, SimSettings(bookmark_interval=0.5))
    try:
        yield store, write_kubeconfig(tmp_path / "cluster.kubeconfig", url)
    finally:
        await runner.cleanup()


async def run_bench(*args: str, interrupt_when: Any = None, store: Store | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discofilter", "bench", *args, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    if interrupt_when is not None:
        async with asyncio.timeout(30):
            while not interrupt_when():
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


def namespaces(store: Store) -> set[str]:
    return {o["metadata"]["name"] for o in store.objects("namespaces")}


async def test_cluster_mode_measures_and_removes_what_it_created(
    cluster: tuple[Store, Path], tmp_path: Path
) -> None:
    store, kubeconfig = cluster
    before = namespaces(store)
    code, output = await run_bench(
        "--kubeconfig", str(kubeconfig), "--out", str(tmp_path), "--cluster-seconds", "2",
        "--cluster-namespace", "scratch", "--cluster-pods-per-s", "10", "--mesh-fraction", "0.3",
    )  # fmt: skip
    assert code == 0, output
    assert namespaces(store) == before  # both scratch namespaces are gone
    assert {o["metadata"]["namespace"] for o in store.objects("pods")} == {"someone-elses"}
    r = json.loads((tmp_path / "cluster-results.json").read_text())
    assert r["namespaces"] == ["scratch", "scratch-plain"] and r["cleanup_problems"] == []
    assert r["direct"]["events"]["mesh"] > 0 and r["direct"]["events"]["plain"] > 0
    assert r["discofilter"]["events"]["mesh"] == r["direct"]["events"]["mesh"]
    assert r["discofilter"]["events"]["plain"] == 0 and r["discofilter"]["events"]["other"] == 0


async def test_cluster_mode_cleans_up_on_ctrl_c(cluster: tuple[Store, Path], tmp_path: Path) -> None:
    store, kubeconfig = cluster
    before = namespaces(store)

    def churning() -> bool:
        return any(o["metadata"]["namespace"].startswith("ctrl-c") for o in store.objects("pods"))

    code, output = await run_bench(
        "--kubeconfig", str(kubeconfig), "--out", str(tmp_path), "--cluster-seconds", "120",
        "--cluster-namespace", "ctrl-c", interrupt_when=churning,
    )  # fmt: skip
    assert code == 130, output
    assert "Traceback" not in output
    assert namespaces(store) == before
    assert {o["metadata"]["namespace"] for o in store.objects("pods")} == {"someone-elses"}


async def test_cluster_mode_refuses_a_namespace_it_did_not_create(
    cluster: tuple[Store, Path], tmp_path: Path
) -> None:
    store, kubeconfig = cluster
    original = store.get("namespaces", None, "someone-elses")
    code, output = await run_bench(
        "--kubeconfig", str(kubeconfig), "--out", str(tmp_path), "--cluster-seconds", "2",
        "--cluster-namespace", "someone-elses",
    )  # fmt: skip
    assert code == 2, output
    assert "already exists" in output and "Traceback" not in output
    assert store.get("namespaces", None, "someone-elses") == original  # not relabelled, not deleted
    assert [o["metadata"]["name"] for o in store.objects("pods", "someone-elses")] == ["keep-me"]
    assert "someone-elses-plain" not in namespaces(store)


async def test_paced_pump_sends_every_event_as_its_own_chunk() -> None:
    """``benchRate`` (the one-event-per-read case bench/hotpath.py measures): the paced pump walks the
    recording chunk by chunk and sends every event intact, in order, each as one HTTP chunk."""
    from discofilter.bench.pump import Recording, frame_chunks, serve_pump

    lines = [b'{"type":"ADDED","object":{"n":"' + b"x" * (i * 1000) + b'"}}\n' for i in range(5)]
    server, url = await serve_pump(Recording("7", {"/api/v1/pods": frame_chunks(lines)}, b"{}"))
    port = int(url.rsplit(":", 1)[1])
    try:
        async with asyncio.timeout(30):  # a guard against a hang, not a measurement
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"GET /api/v1/pods?watch=1&resourceVersion=7&benchRate=1000 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"Transfer-Encoding: chunked" in head
            chunks = []
            for _ in lines:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                chunks.append((await reader.readexactly(size + 2))[:-2])
            assert chunks == lines
            writer.close()
    finally:
        server.close()


async def read_chunks(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """``count`` HTTP chunks of a chunked answer whose head was read."""
    chunks = []
    for _ in range(count):
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        chunks.append((await reader.readexactly(size + 2))[:-2])
    return chunks


def pod_event(ns: str, rv: int) -> bytes:
    return (
        b'{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"p","namespace":"%s",'
        b'"resourceVersion":"%d"}}}\n' % (ns.encode(), rv)
    )


async def test_the_bench_pump_speaks_tls_and_refuses_plain_http(tmp_path: Path) -> None:
    """The saturation and paced upstream is TLS with the run's CA: a client verifying that CA reads the
    stream; plain HTTP on the same port gets no HTTP answer."""
    from discofilter.bench.pump import Recording, frame_chunks, serve_pump
    from discofilter.bench.tlsca import make_ca

    ca = make_ca(tmp_path)
    lines = [pod_event("a", 8), pod_event("b", 9)]
    server, url = await serve_pump(
        Recording("7", {"/api/v1/pods": frame_chunks(lines)}, b"{}"), ca.server_context()
    )
    assert url.startswith("https://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    request = b"GET /api/v1/pods?watch=1&resourceVersion=7 HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            answer = await reader.read(100)  # the TLS server answers garbage with an alert, or closes
            assert not answer.startswith(b"HTTP/")
            writer.close()
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ca.client_context(), server_hostname="127.0.0.1"
            )
            assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            writer.write(request)
            assert b"Transfer-Encoding: chunked" in await reader.readuntil(b"\r\n\r\n")
            assert await read_chunks(reader, 2) == lines
            writer.close()
    finally:
        server.close()


async def test_the_pump_honours_namespace_exclusions_and_keeps_their_slots_in_a_paced_run() -> None:
    """``metadata.namespace!=`` requirements leave the excluded events out; a paced schedule (benchRate,
    benchSeconds, benchEpoch) still delivers each kept event at its own slot and the end marker last."""
    import time

    from discofilter.bench.pump import Recording, frame_chunks, serve_pump

    lines = [pod_event("plain" if i % 2 else "mesh", 8 + i) for i in range(10)] + [pod_event("end", 99)]
    server, url = await serve_pump(Recording("7", {"/api/v1/pods": frame_chunks(lines)}, b"{}"))
    port = int(url.rsplit(":", 1)[1])
    try:
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            epoch = time.time() + 0.1
            writer.write(
                b"GET /api/v1/pods?watch=1&resourceVersion=7&benchRate=20&benchSeconds=0.4&benchEpoch=%r"
                b"&fieldSelector=status.phase%%21%%3DFailed,metadata.namespace%%21%%3Dplain HTTP/1.1\r\n"
                b"Host: x\r\n\r\n" % epoch
            )
            await reader.readuntil(b"\r\n\r\n")
            got = []
            for _ in range(5):
                (chunk,) = await read_chunks(reader, 1)
                got.append((chunk, time.time() - epoch))
            writer.close()
    finally:
        server.close()
    # 20/s for 0.4 s: 8 events, the last slot the end marker; of the first 7, the mesh ones (0, 2, 4, 6).
    assert [c for c, _ in got] == [lines[0], lines[2], lines[4], lines[6], lines[-1]]
    # Each at its slot (event i at i/20 s), not sooner: the excluded slots passed in silence.
    for (_, at), slot in zip(got, (0.0, 0.1, 0.2, 0.3, 0.4), strict=True):
        assert at >= slot - 0.01


async def test_simapi_over_tls_sends_one_http_chunk_per_watch_event(tmp_path: Path) -> None:
    """As kube-apiserver frames a watch (one flush per event): each event is one chunk, also over TLS."""
    from discofilter.bench.tlsca import make_ca

    ca = make_ca(tmp_path)
    store = Store()
    store.create("namespaces", {"metadata": {"name": "a"}})
    runner, url = await serve(store, SimSettings(), ssl_context=ca.server_context())
    port = int(url.rsplit(":", 1)[1])
    try:
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ca.client_context(), server_hostname="127.0.0.1"
            )
            rv = store.resource_version
            writer.write(
                b"GET /api/v1/namespaces/a/pods?watch=1&resourceVersion=%d HTTP/1.1\r\nHost: x\r\n\r\n" % rv
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"Transfer-Encoding: chunked" in head
            for i in range(3):
                pod = {"metadata": {"name": f"p{i}"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
                store.create("pods", pod, namespace="a")
            chunks = await read_chunks(reader, 3)
            writer.close()
    finally:
        await runner.cleanup()
    # Three chunks, each exactly one event and its newline.
    events = [json.loads(c) for c in chunks]
    assert [e["object"]["metadata"]["name"] for e in events] == ["p0", "p1", "p2"]
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in chunks)


def processes_naming(path: Path) -> list[str]:
    """Command lines of the running processes that name ``path`` (discofilter serve names its
    kubeconfig there)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(path) in cmd:
            found.append(cmd)
    return found


async def quick_bench_until(out: Path, line: str) -> asyncio.subprocess.Process:
    """Start ``discofilter bench --quick --out OUT`` and return once its progress says ``line``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discofilter", "bench", "--quick", "--out", str(out),
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stderr is not None
    async with asyncio.timeout(60):
        while line not in (progress := (await proc.stderr.readline()).decode()):
            assert progress, f"the bench ended before saying {line!r}"
    return proc


@pytest.mark.parametrize("phase", ["saturation", "latency"])
async def test_ctrl_c_while_the_proxies_start_leaves_no_process_behind(tmp_path: Path, phase: str) -> None:
    """Ctrl-C lands while the proxies of a phase are starting: every child that did start is stopped.

    The discofilter processes are the ones to watch (their command line names the output folder): the
    reference proxies and workers also stop by themselves when the bench's pipes to them close."""
    out = tmp_path / "out"
    proc = await quick_bench_until(out, f"{phase}: starting")
    await asyncio.sleep(0.3)  # some proxies are up, others still starting
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        await proc.communicate()
    assert proc.returncode == 130
    async with asyncio.timeout(10):
        while processes_naming(out):  # give a stopped child a moment to be reaped
            await asyncio.sleep(0.2)


async def test_a_killed_bench_takes_its_processes_with_it(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) gives the bench no chance to clean up: its children end themselves."""
    out = tmp_path / "out"
    proc = await quick_bench_until(out, "saturation 1/1")  # every saturation proxy is up and serving
    assert processes_naming(out)
    proc.kill()
    await proc.wait()
    async with asyncio.timeout(20):
        while processes_naming(out):
            await asyncio.sleep(0.2)


async def test_the_pumps_namespace_watch_sends_bookmarks_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the API server does: a quiet namespace watch that asked for bookmarks gets them, so
    discofilter's membership stays confirmed through a long saturation run (a silent one made filtered
    requests wait for a namespace LIST 65 s in, in the middle of the measurement); one that did not ask
    gets none."""
    import orjson

    from discofilter.bench import pump
    from discofilter.bench.pump import Recording, serve_pump

    monkeypatch.setattr(pump, "BOOKMARK_EVERY_SECONDS", 0.05)
    server, url = await serve_pump(Recording("7", {}, b"{}"))
    port = int(url.rsplit(":", 1)[1])
    try:
        async with asyncio.timeout(30):  # a guard against a hang, not a measurement
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"GET /api/v1/namespaces?watch=1&resourceVersion=9&allowWatchBookmarks=true HTTP/1.1\r\n"
                b"Host: x\r\n\r\n"
            )
            await reader.readuntil(b"\r\n\r\n")
            events = [orjson.loads(c) for c in await read_chunks(reader, 2)]
            assert [e["type"] for e in events] == ["BOOKMARK", "BOOKMARK"]
            assert events[0]["object"]["metadata"] == {"resourceVersion": "9"}
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/v1/namespaces?watch=1&resourceVersion=9 HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readuntil(b"\r\n"), 0.3)
            writer.close()
    finally:
        server.close()

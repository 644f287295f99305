"""From raw measurements to ``results.json``: per-variant numbers, ratios, the NET, and the targets.

Definitions (also in bench/README.md):

- ``events_per_s``, ``mb_per_s``: the saturation stream's events (all of them, kept or not) and bytes
  divided by the time from opening the four watches to the last stream's end marker: how fast the
  variant gets through the API server's output. Median of the trials.
- ``proxy_cpu_us_per_event``: the proxy process's CPU time (user + system, psutil) over a replay, per
  event of the stream. Median of the trials. None for ``direct``.
- ``latency_*_ms``: arrival at the client minus commit in the simulated API server, of the events
  committed in the steady first half of the latency run; ``flip_latency_*`` of those committed after
  the first namespace label flip, while watches are being ended and clients relist. Events replayed by
  a watch reopened after a relist are counted apart. Each proxy's run has a direct client beside it (each
  client its own process), so ``added_latency_*`` is taken event by event: arrival through the proxy
  minus arrival of the same event at the direct client. ``direct``'s own numbers pool its three runs.
- ``client_*``: what the client received in a replay, and the CPU it spent receiving and decoding it
  with the istiod model (``client_cpu_us_per_event`` is per received event).
- NET: (proxy CPU + client CPU through the proxy) / (client CPU direct), on the same stream.
- ``paced``: per paced rate over TLS, per variant, CPU per *upstream* event (every event the API server
  sent, excluded ones counted as if sent, so runs with and without server-side exclusion compare): the
  proxy's for the proxies, the reader's own for the bare TLS reader and the direct client; the NET at
  that rate; and each proxy's CPU over the bare reader's.
- ``relists``: per kind of namespace membership change (``relists.py``), the relists (LISTs after the
  first), 410s and relist bytes the clients through discofilter and the raw relay counted themselves, and
  the LISTs simapi's request log shows.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from discofilter.bench import relists
from discofilter.bench.orchestrate import ALL_KEPT, BARE, EXCLUSION, MAIN, RECEIVE_PATH, PacedRun, Raw, Trial
from discofilter.bench.settings import CLIENT_GO_JSON_SECONDS_PER_BYTE, BenchSettings

JsonObj = dict[str, Any]
REQUIRED_KEYS: Final = (
    "events_per_s",
    "mb_per_s",
    "proxy_cpu_us_per_event",
    "latency_p50_ms",
    "latency_p99_ms",
    "peak_rss_mb",
    "client_events",
    "client_bytes",
)


def machine() -> JsonObj:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    versions: dict[str, str | None] = {}
    for dist in ("discofilter", "aiohttp", "orjson", "uvloop", "psutil"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def latencies(sim: JsonObj, client: JsonObj) -> tuple[list[float], list[float], list[float]]:
    """Per-event latencies in ms, each sorted: (steady, after the first flip, replayed after a relist).

    Steady: committed before the first namespace label flip. Replayed: committed before the watch that
    carried it was opened (a relist's watch resumes from the list's resourceVersion)."""
    commit = dict(zip(sim["commit_rv"], sim["commit_t"], strict=True))
    first_flip = min((f[1] for f in sim["flips"]), default=float("inf"))
    steady: list[float] = []
    flipping: list[float] = []
    replayed: list[float] = []
    for rv, t, opened in zip(client["rv"], client["recv_t"], client["open_t"], strict=True):
        c = commit.get(rv)
        if c is None:
            continue
        ms = (t - c) * 1e3
        if c < opened:
            replayed.append(ms)
        elif c < first_flip:
            steady.append(ms)
        else:
            flipping.append(ms)
    return sorted(steady), sorted(flipping), sorted(replayed)


def latency_timeline(sim: JsonObj, client: JsonObj) -> tuple[list[float], list[float]]:
    """Per event, in commit order: (seconds since the run's first commit, latency ms), the replayed
    events left out (their latency is the client's relist, counted apart in ``replayed_*``)."""
    commit = dict(zip(sim["commit_rv"], sim["commit_t"], strict=True))
    t0 = sim["commit_t"][0] if sim["commit_t"] else 0.0
    points = sorted(
        (commit[rv] - t0, (t - commit[rv]) * 1e3)
        for rv, t, opened in zip(client["rv"], client["recv_t"], client["open_t"], strict=True)
        if rv in commit and commit[rv] >= opened
    )
    return [p[0] for p in points], [p[1] for p in points]


def _flip_run(run: JsonObj) -> JsonObj:
    """One proxy's latency run on the run's own clock (seconds since its first commit): when the labels
    flipped and the proxy's RSS, sampled every 50 ms."""
    sim = run["sim"]
    t0 = sim["commit_t"][0] if sim["commit_t"] else 0.0
    return {
        "flips_s": [f[1] - t0 for f in sim["flips"]],
        "end_s": sim["commit_t"][-1] - t0 if sim["commit_t"] else 0.0,
        "rss_mb": [[t - t0, mb] for t, mb in run["variant"].get("proxy_rss_samples", [])],
    }


def added_latencies(sim: JsonObj, client: JsonObj, direct: JsonObj) -> list[float]:
    """Event by event, in ms: arrival through the variant minus arrival at the direct client, of the
    steady part's events both received (the same event, at the same moment, from the same server)."""
    first_flip = min((f[1] for f in sim["flips"]), default=float("inf"))
    committed = dict(zip(sim["commit_rv"], sim["commit_t"], strict=True))
    base: dict[int, float] = {}
    for rv, t in zip(direct["rv"], direct["recv_t"], strict=True):
        base.setdefault(rv, t)
    out = [
        (t - base[rv]) * 1e3
        for rv, t, opened in zip(client["rv"], client["recv_t"], client["open_t"], strict=True)
        if rv in base and opened <= committed.get(rv, -1.0) < first_flip
    ]
    return sorted(out)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _saturation(trials: Sequence[Trial], events: int, stream_bytes: int) -> JsonObj:
    """``events`` and ``stream_bytes``: one pass of the stream; a replay plays it ``loops`` times."""
    eps = [events * t.loops / t.wall_s for t in trials]
    proxy = [t.proxy_cpu_s / (events * t.loops) * 1e6 for t in trials if t.proxy_cpu_s is not None]
    received = {t.client_events // t.loops for t in trials}
    return {
        "events_per_s": _median(eps),
        "mb_per_s": _median([stream_bytes * t.loops / t.wall_s / 1e6 for t in trials]),
        "proxy_cpu_us_per_event": _median(proxy) if proxy else None,
        "proxy_cpu_util": _median([t.proxy_cpu_s / t.wall_s for t in trials if t.proxy_cpu_s is not None])
        if proxy
        else None,
        "client_cpu_util": _median([t.client_cpu_s / t.wall_s for t in trials]),
        "client_cpu_us_per_stream_event": _median(
            [t.client_cpu_s / (events * t.loops) * 1e6 for t in trials]
        ),
        "simapi_cpu_util": _median([t.sim_cpu_s / t.wall_s for t in trials]),
        "events_per_s_trials": eps,
        "client_events": min(received),
        "client_events_consistent": len(received) == 1,
        "client_bytes": trials[0].client_bytes // trials[0].loops,
    }


def _cpu_between(samples: Sequence[Sequence[float]], t0: float, t1: float) -> float | None:
    """CPU seconds between the samples nearest to ``t0`` and ``t1`` (time.time() stamps)."""
    if len(samples) < 2:
        return None

    def at(t: float) -> float:
        return float(min(samples, key=lambda s: abs(s[0] - t))[1])

    return at(t1) - at(t0)


def _direct_latency(live: dict[str, JsonObj]) -> JsonObj:
    """The direct client's latency, pooled over the runs it took part in (one beside each proxy)."""
    steady: list[float] = []
    flipping: list[float] = []
    for run in live.values():
        s, f, _ = latencies(run["sim"], run["direct"]["client"])
        steady += s
        flipping += f
    steady.sort()
    flipping.sort()
    first = next(iter(live.values()))["direct"]
    return {
        "latency_p50_ms": percentile(steady, 50),
        "latency_p99_ms": percentile(steady, 99),
        "latency_max_ms": steady[-1] if steady else None,
        "latency_events": len(steady),
        "added_latency_p50_ms": 0.0,
        "added_latency_p99_ms": 0.0,
        "added_latency_max_ms": 0.0,
        "flip_latency_p50_ms": percentile(flipping, 50),
        "flip_latency_p99_ms": percentile(flipping, 99),
        "flip_latency_max_ms": flipping[-1] if flipping else None,
        "live_relists": sum(r["direct"]["client"]["lists"] - 4 for r in live.values()),
        "live_list_bytes": first["client"]["list_bytes"],
        "initial_sync_s": first["start"]["sync_s"],
        "live_rate_achieved": min(r["sim"]["achieved_rate"] for r in live.values()),
    }


def _latency(run: JsonObj) -> JsonObj:
    sim, entry = run["sim"], run["variant"]
    client = entry["client"]
    steady, flipping, replayed = latencies(sim, client)
    added = added_latencies(sim, client, run["direct"]["client"])
    commits = sim["commit_t"]
    first_flip = min((f[1] for f in sim["flips"]), default=commits[-1] if commits else 0.0)
    steady_events = sum(1 for t in commits if t < first_flip)
    samples = entry["proxy_cpu_samples"]
    cpu_all = _cpu_between(samples, samples[0][0], samples[-1][0]) if samples else None
    cpu_steady = _cpu_between(samples, commits[0], first_flip) if samples and commits else None
    return {
        "latency_p50_ms": percentile(steady, 50),
        "latency_p99_ms": percentile(steady, 99),
        "latency_max_ms": steady[-1] if steady else None,
        "latency_events": len(steady),
        "added_latency_p50_ms": percentile(added, 50),
        "added_latency_p99_ms": percentile(added, 99),
        "added_latency_max_ms": added[-1] if added else None,
        "added_latency_events": len(added),
        "flip_latency_p50_ms": percentile(flipping, 50),
        "flip_latency_p99_ms": percentile(flipping, 99),
        "flip_latency_max_ms": flipping[-1] if flipping else None,
        "flip_latency_events": len(flipping),
        "replayed_events": len(replayed),
        "replayed_max_ms": replayed[-1] if replayed else None,
        "live_rate_achieved": sim["achieved_rate"],
        "live_relists": client["lists"] - 4,
        "live_watches_expired": client["expired"],
        "live_list_bytes": client["list_bytes"],
        "initial_sync_s": entry["start"]["sync_s"],
        "live_proxy_cpu_us_per_event": cpu_all / len(commits) * 1e6
        if cpu_all is not None and commits
        else None,
        "live_proxy_cpu_us_per_event_steady": cpu_steady / steady_events * 1e6
        if cpu_steady is not None and steady_events
        else None,
    }


def summarize(settings: BenchSettings, raw: Raw) -> JsonObj:
    counts = raw.stream["counts"]
    events = sum(c["events"] for c in counts.values())
    mesh_events = sum(c["mesh_events"] for c in counts.values())
    by_variant: dict[str, list[Trial]] = {}
    for t in raw.trials:
        by_variant.setdefault(t.variant, []).append(t)
    stream_bytes = by_variant["direct"][0].client_bytes // by_variant["direct"][0].loops
    sat = {v: _saturation(by_variant[v], events, stream_bytes) for v in (*MAIN, *ALL_KEPT, RECEIVE_PATH)}
    decode = {t.variant: t for t in raw.decode_trials}
    variants: dict[str, JsonObj] = {}
    for v in MAIN:
        d = decode[v]
        variants[v] = {
            **sat[v],
            **(_direct_latency(raw.live) if v == "direct" else _latency(raw.live[v])),
            "peak_rss_mb": raw.stream_rss_mb.get(v),
            "peak_rss_latency_mb": raw.peak_rss_mb.get(v),
            "client_cpu_s": d.client_cpu_s,
            "client_decode_s": d.decode_s,
            "client_cpu_us_per_event": d.client_cpu_s / d.client_events * 1e6 if d.client_events else None,
            "client_decode_us_per_event": d.decode_s / d.client_events * 1e6 if d.client_events else None,
        }
    all_kept = {
        "passthrough": sat["passthrough"],
        "naive": sat["naive-all"],
        "discofilter": sat["discofilter-all"],
    }
    out: JsonObj = {
        "machine": machine(),
        "workload": {
            **{k: getattr(settings.workload, k) for k in settings.workload.__dataclass_fields__},
            "mesh_namespaces": settings.workload.mesh_namespaces,
            "pods": settings.workload.namespaces
            * settings.workload.apps_per_namespace
            * settings.workload.pods_per_app,
        },
        "run": {k: str(v) if isinstance(v, Path) else v for k, v in _fields(settings.run).items()}
        | {"command": shlex.join(["discofilter", *sys.argv[1:]])},
        "stream": {
            "events": events,
            "mesh_events": mesh_events,
            "bytes": stream_bytes,
            "per_resource": counts,
            "write_s": raw.stream.get("seconds"),
            "loops_per_replay": settings.run.loops,
        },
        "variants": variants,
        "all_kept": all_kept,
        "receive_path": {
            k: sat[RECEIVE_PATH][k] for k in ("events_per_s", "mb_per_s", "client_cpu_util", "client_bytes")
        }
        | {"client_cpu_us_per_event": sat[RECEIVE_PATH]["client_cpu_us_per_stream_event"]},
        "core": raw.core,
        "flip_runs": {v: _flip_run(run) for v, run in raw.live.items()},
        "decode_model": settings.run.decode,
        "process_peak_rss_mb": raw.peak_rss_mb,
        "elapsed_s": raw.elapsed_s,
    }
    out["expected"] = {
        "direct_client_events": events,
        "discofilter_client_events": mesh_events,
        "discofilter_exact": variants["discofilter"]["client_events"] == mesh_events,
        "direct_exact": variants["direct"]["client_events"] == events,
    }
    out["ratios"] = _ratios(variants, all_kept)
    out["net"] = _net(variants, stream_bytes)
    out["paced"] = _paced(settings, raw)
    out["relists"] = relists.summarize(raw.relists, settings.run.relist_changes)
    out["targets"] = _targets(out)
    out["verdict"] = _verdict(out)
    return out


def _paced(settings: BenchSettings, raw: Raw) -> JsonObj:
    """The paced runs, by rate: per variant CPU per upstream event, the NET, and the ratio to the bare
    TLS reader (the floor of receiving the unfiltered stream in Python)."""
    go = CLIENT_GO_JSON_SECONDS_PER_BYTE
    rates: list[JsonObj] = []
    for rate in sorted({p.rate for p in raw.paced}):
        runs: dict[str, PacedRun] = {p.variant: p for p in raw.paced if p.rate == rate}
        variants: JsonObj = {}
        for name, p in runs.items():
            own = p.proxy_cpu_s if p.proxy_cpu_s is not None else p.client_cpu_s
            variants[name] = {
                "requested_rate": rate,
                "achieved_rate": p.achieved_rate,
                "upstream_events": p.upstream_events,
                "upstream_bytes": p.upstream_bytes,
                "client_events": p.client_events,
                "client_bytes": p.client_bytes,
                "client_cpu_s": p.client_cpu_s,
                "proxy_cpu_s": p.proxy_cpu_s,
                "cpu_us_per_upstream_event": own / p.upstream_events * 1e6,
                "client_cpu_us_per_upstream_event": p.client_cpu_s / p.upstream_events * 1e6,
                **p.extra,
            }
        direct, bare = runs.get("direct"), runs.get(BARE)
        net: JsonObj = {}
        vs_bare: JsonObj = {}
        for name in ("passthrough", "naive", "discofilter", EXCLUSION):
            p_run = runs.get(name)
            if p_run is None or p_run.proxy_cpu_s is None or direct is None:
                continue
            net[name] = {
                "measured": (p_run.proxy_cpu_s + p_run.client_cpu_s) / direct.client_cpu_s
                if direct.client_cpu_s
                else None,
                "client_go_estimate": (p_run.proxy_cpu_s + p_run.client_bytes * go)
                / (direct.client_bytes * go)
                if direct.client_bytes
                else None,
            }
            vs_bare[name] = _ratio(p_run.proxy_cpu_s, bare.client_cpu_s if bare else None)
        rates.append({"rate": rate, "variants": variants, "net": net, "proxy_cpu_vs_bare_reader": vs_bare})
    return {
        "transport": "TLS",
        "upstream": raw.upstream,
        "seconds": settings.run.paced_seconds,
        "headline_rate": settings.run.rate,
        "client_model": f"Python client, {settings.run.decode} decode of every event received (client.py)",
        "exclusion": raw.exclusion,
        "rates": rates,
    }


def paced_at(r: JsonObj, rate: float) -> JsonObj | None:
    """The paced entry of ``rate``, or None."""
    return next((e for e in r["paced"]["rates"] if e["rate"] == rate), None)


def _verdict(r: JsonObj) -> JsonObj:
    """The operator's question, does it save more than it costs here, answered at the paced headline
    rate over TLS, as production runs: most clusters churn at a moderate rate, where per-wakeup and
    per-record costs weigh most, not at saturation."""
    head = paced_at(r, r["paced"]["headline_rate"]) or {"net": {}, "variants": {}}
    net = head["net"].get("discofilter") or {}
    df = head["variants"].get("discofilter") or {}
    return {
        "net_at_rate": net.get("measured"),
        "net_at_rate_client_go_estimate": net.get("client_go_estimate"),
        "rate": df.get("achieved_rate", r["paced"]["headline_rate"]),
        "requested_rate": r["paced"]["headline_rate"],
        "transport": "TLS",
        "targets_met": sum(1 for t in r["targets"] if t["met"]),
        "targets": len(r["targets"]),
    }


def _fields(obj: Any) -> JsonObj:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _ratios(v: dict[str, JsonObj], all_kept: dict[str, JsonObj]) -> JsonObj:
    df, raw, naive = v["discofilter"], v["passthrough"], v["naive"]
    return {
        "throughput_discofilter_vs_raw": _ratio(df["events_per_s"], raw["events_per_s"]),
        "throughput_discofilter_vs_naive": _ratio(df["events_per_s"], naive["events_per_s"]),
        "throughput_all_kept_discofilter_vs_raw": _ratio(
            all_kept["discofilter"]["events_per_s"], all_kept["passthrough"]["events_per_s"]
        ),
        "throughput_all_kept_discofilter_vs_naive": _ratio(
            all_kept["discofilter"]["events_per_s"], all_kept["naive"]["events_per_s"]
        ),
        "cpu_per_event_discofilter_vs_raw": _ratio(
            df["proxy_cpu_us_per_event"], raw["proxy_cpu_us_per_event"]
        ),
        "cpu_per_event_discofilter_vs_naive": _ratio(
            df["proxy_cpu_us_per_event"], naive["proxy_cpu_us_per_event"]
        ),
        "client_events_discofilter_vs_direct": _ratio(df["client_events"], v["direct"]["client_events"]),
        "client_bytes_discofilter_vs_direct": _ratio(df["client_bytes"], v["direct"]["client_bytes"]),
    }


def _net(v: dict[str, JsonObj], stream_bytes: int) -> JsonObj:
    """(proxy CPU + client CPU through it) / (client CPU direct), per event of the same stream.

    ``measured``: the Python client's CPU with the istiod decode model (decode pass). ``client_go_estimate``:
    the client charged at client-go's documented 0.24 ms per 20 KB of JSON, per byte it receives. The proxy's
    CPU per event is taken two ways: at saturation (median of the replays: reads carry many events) and
    ``at_rate`` (the steady half of the latency run: most reads carry one event, so per-read costs weigh
    more). The client's side is the same in both."""
    events = v["direct"]["client_events"]
    direct_cpu = v["direct"]["client_cpu_s"]
    go = CLIENT_GO_JSON_SECONDS_PER_BYTE
    out: JsonObj = {"client_go_seconds_per_byte": go}
    for name in ("passthrough", "naive", "discofilter"):
        x = v[name]
        client_go = x["client_bytes"] * go
        entry: JsonObj = {"client_cpu_s": x["client_cpu_s"]}
        for label, proxy_us in (
            ("", x["proxy_cpu_us_per_event"]),
            ("at_rate_", x["live_proxy_cpu_us_per_event_steady"]),
        ):
            proxy_s = proxy_us * events / 1e6 if proxy_us is not None else None
            entry[f"{label}proxy_cpu_s"] = proxy_s
            entry[f"{label}measured"] = (
                (proxy_s + x["client_cpu_s"]) / direct_cpu if proxy_s is not None and direct_cpu else None
            )
            entry[f"{label}client_go_estimate"] = (
                (proxy_s + client_go) / (stream_bytes * go) if proxy_s is not None else None
            )
        out[name] = entry
    out["direct"] = {"client_cpu_s": direct_cpu, "client_go_estimate_s": stream_bytes * go}
    return out


def _target(name: str, goal: str, value: float | None, met: bool | None) -> JsonObj:
    return {"target": name, "goal": goal, "value": value, "met": met}


def _targets(r: JsonObj) -> list[JsonObj]:
    core = r["core"].get("mesh-pods", {})
    vs_floor = core.get("filter_vs_scan_copy")
    vs_parse = core.get("filter_vs_parse")
    ratios, v, net = r["ratios"], r["variants"], r["net"]["discofilter"]
    added = v["discofilter"]["added_latency_p99_ms"]
    raw_added = v["passthrough"]["added_latency_p99_ms"]
    rss = v["discofilter"]["peak_rss_mb"]
    rss_latency = v["discofilter"]["peak_rss_latency_mb"]
    paced = r["paced"]
    headline = paced["headline_rate"]
    rate = r["run"]["rate"]

    def at_least(x: float | None, goal: float) -> bool | None:
        return None if x is None else x >= goal

    def at_most(x: float | None, goal: float | None) -> bool | None:
        return None if x is None or goal is None else x <= goal

    out = [
        _target(
            "core filter vs the host's newline scan + one copy (mesh pods, 64 KiB reads)",
            ">= 0.75x",
            vs_floor,
            at_least(vs_floor, 0.75),
        ),
        _target("core filter vs full orjson parse", ">= 20x", vs_parse, at_least(vs_parse, 20.0)),
        _target(
            "e2e events/s vs raw proxy, every event kept",
            ">= 0.9x",
            ratios["throughput_all_kept_discofilter_vs_raw"],
            at_least(ratios["throughput_all_kept_discofilter_vs_raw"], 0.9),
        ),
        _target(
            "e2e events/s vs raw proxy, mesh share kept",
            ">= 1.5x",
            ratios["throughput_discofilter_vs_raw"],
            at_least(ratios["throughput_discofilter_vs_raw"], 1.5),
        ),
        _target(
            "e2e events/s vs naive proxy",
            ">= 6x",
            ratios["throughput_discofilter_vs_naive"],
            at_least(ratios["throughput_discofilter_vs_naive"], 6.0),
        ),
        _target(
            f"added p99 latency at {rate:g} events/s over TLS",
            f"<= raw relay's + 1 ms ({_ms(raw_added)})",
            added,
            at_most(added, raw_added + 1.0 if raw_added is not None else None),
        ),
        _target("discofilter peak RSS, saturated watch streams", "< 100 MB", rss, at_most(rss, 99.999)),
        _target(
            "discofilter peak RSS, latency runs (relists included)",
            "< 100 MB",
            rss_latency,
            at_most(rss_latency, 99.999),
        ),
        _target(
            "NET at saturation, measured Python client",
            "<= 0.3",
            net["measured"],
            at_most(net["measured"], 0.3),
        ),
        _target(
            "NET at saturation, client-go cost estimate",
            "<= 0.3",
            net["client_go_estimate"],
            at_most(net["client_go_estimate"], 0.3),
        ),
    ]
    head = paced_at(r, headline)
    excl = paced["exclusion"]["available"]
    for name, label in (("discofilter", "exclusion off"), (EXCLUSION, "with exclusion")):
        x = head["proxy_cpu_vs_bare_reader"].get(name) if head else None
        out.append(
            _target(
                f"discofilter CPU vs the bare TLS reader's (unfiltered stream) at {headline:g} events/s, "
                f"{label}" + ("" if name == "discofilter" or excl else ": not available in this build"),
                "<= 0.25x",
                x,
                at_most(x, 0.25),
            )
        )
    for entry in paced["rates"]:
        x = (entry["net"].get("discofilter") or {}).get("measured")
        out.append(
            _target(
                f"NET at {entry['rate']:g} events/s over TLS, exclusion off, measured Python client",
                "<= 0.25",
                x,
                at_most(x, 0.25),
            )
        )
    x = ((head["net"].get(EXCLUSION) if head else None) or {}).get("measured")
    out.append(
        _target(
            f"NET at {headline:g} events/s over TLS, with exclusion, measured Python client"
            + ("" if excl else ": not available in this build"),
            "<= 0.25",
            x,
            at_most(x, 0.25),
        )
    )
    return out


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x + 1.0:.2f} ms"

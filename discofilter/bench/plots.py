"""PNG plots of a run (matplotlib, Agg backend: no display needed).

Each plot marks the goal it is judged by, and names a bound as what it is: a floor is the least any
proxy can cost, a ceiling the most any can achieve. Bars carry their values, so a small bar is still read.

- ``net.png``: discofilter's NET (CPU with it / CPU without it) against the event rate, the goal and
  break-even marked: the operator's question in one picture.
- ``flip.png``: latency and the proxies' RSS through a latency run, the namespace label flips marked.
- ``throughput.png``, ``cpu.png``, ``latency.png``, ``core.png``: the saturation, per-event CPU, latency
  and core-filter numbers of the report's tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless machines, CI, containers
import matplotlib.pyplot as plt
import matplotlib.ticker

from discofilter.bench.orchestrate import Raw
from discofilter.bench.results import added_latencies, latencies, latency_timeline

JsonObj = dict[str, Any]
MAIN: Final = ("direct", "passthrough", "naive", "discofilter")
PROXIES: Final = ("passthrough", "naive", "discofilter")
COLORS: Final = {"direct": "#7f7f7f", "passthrough": "#1f77b4", "naive": "#d62728", "discofilter": "#2ca02c"}
GOAL: Final[dict[str, Any]] = {"color": "black", "ls": "--", "lw": 1.2}
NET_GOAL: Final = 0.3
"""The NET goal at saturation, at a 10% mesh share (results.py's targets)."""
PACED_NET_GOAL: Final = 0.25
"""The NET goal at the paced rates over TLS (issue 12)."""
ADDED_P99_GOAL_MS: Final = 1.0
RSS_GOAL_MB: Final = 100.0
CORE_FLOOR_SHARE: Final = 0.75
"""The core filter's goal: this share of the host's newline scan + one copy (results.py's targets)."""
WINDOW_S: Final = 0.25
"""Latency through a run is shown per quarter second: short enough to show a flip's spike, long enough
for a p99 of a few hundred events at 2,000 events/s."""


@dataclass(frozen=True, slots=True)
class Samples:
    """The per-event numbers behind the plots, which results.json leaves out (tens of thousands)."""

    steady: dict[str, list[float]] = field(default_factory=dict)
    """Sorted latencies (ms) of the steady half, per variant."""
    added: dict[str, list[float]] = field(default_factory=dict)
    """Sorted added latencies (ms, event by event against the direct client), per proxy."""
    timeline: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    """Per variant: (seconds since the run's first commit, latency ms) of every event, flips included."""


def samples_of(raw: Raw) -> Samples:
    s = Samples()
    for v, run in raw.live.items():
        sim, client, direct = run["sim"], run["variant"]["client"], run["direct"]["client"]
        s.steady[v] = latencies(sim, client)[0]
        s.added[v] = added_latencies(sim, client, direct)
        s.timeline[v] = latency_timeline(sim, client)
    if raw.live:
        # The direct client beside discofilter (or the first proxy): the same events, no proxy.
        run = raw.live.get("discofilter") or next(iter(raw.live.values()))
        s.steady["direct"] = latencies(run["sim"], run["direct"]["client"])[0]
        s.timeline["direct"] = latency_timeline(run["sim"], run["direct"]["client"])
    return s


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label_bars(ax: Any, bars: Any, fmt: str) -> None:
    ax.bar_label(bars, fmt=fmt, padding=2, fontsize="x-small")


def _goal_over(ax: Any, x: float, width: float, y: float | None, text: str) -> None:
    """A goal as a short black dash over one bar, labelled."""
    if y is None:
        return
    ax.hlines(y, x - width / 2, x + width / 2, **GOAL)
    # Below the dash, inside the bar: above it sits the bar's own value label.
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, -9), ha="center", fontsize="x-small")


def net(r: JsonObj, out: Path) -> Path:
    """NET against the event rate: the paced TLS runs, and saturation (each proxy's own rate there)."""
    fig, ax = plt.subplots(figsize=(8, 5.4))
    v, n = r["variants"], r["net"]
    paced = r["paced"]["rates"]
    for name in PROXIES:
        rates = [e["variants"][name]["achieved_rate"] for e in paced] + [v[name]["events_per_s"]]
        for key, style, label, offset in (
            ("measured", "-o", "measured (Python istiod model)", (6, 4)),
            ("client_go_estimate", ":s", "client-go decode estimate", (6, -11)),
        ):
            ys = [e["net"][name][key] for e in paced] + [n[name][key]]
            pts = [(x, y) for x, y in zip(rates, ys, strict=True) if y is not None]
            if not pts:
                continue
            ax.plot(*zip(*pts, strict=True), style, color=COLORS[name], label=f"{name}, {label}")
            for x, y in pts:
                ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=offset, fontsize="x-small")
    ax.axhline(PACED_NET_GOAL, **GOAL, label=f"goal: NET <= {PACED_NET_GOAL} at paced rates over TLS")
    ax.axhline(NET_GOAL, color="black", ls=":", lw=1, label=f"goal: NET <= {NET_GOAL} at saturation")
    ax.axhline(1.0, color="gray", ls="-.", lw=1, label="break-even: costs what it saves")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(bottom=0)
    ax.set_xlabel(
        "API server event rate (events/s, log): the paced TLS runs, then saturation\n"
        "(a line only joins a proxy's measured points; nothing between them was measured)"
    )
    ax.set_ylabel("NET: CPU with the proxy / CPU without")
    ax.set_title("Net CPU cost against event rate (below 1 saves CPU; lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=2)
    return _save(fig, out / "net.png")


def _windows(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float], list[float]]:
    """(window start, p99, max) of the latencies per ``WINDOW_S`` window."""
    bins: dict[int, list[float]] = {}
    for x, y in zip(xs, ys, strict=True):
        bins.setdefault(int(x // WINDOW_S), []).append(y)
    starts, p99, top = [], [], []
    for k in sorted(bins):
        b = sorted(bins[k])
        starts.append(k * WINDOW_S)
        p99.append(b[max(0, -(-99 * len(b) // 100) - 1)])
        top.append(b[-1])
    return starts, p99, top


def flip(r: JsonObj, samples: Samples, out: Path) -> Path:
    """Latency and RSS through each proxy's latency run, the namespace label flips marked."""
    fig, (lat, mem) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    runs: Mapping[str, JsonObj] = r["flip_runs"]
    for name in MAIN:
        xs, ys = samples.timeline.get(name, ([], []))
        if not xs:
            continue
        starts, p99, top = _windows(xs, ys)
        lat.step(starts, p99, where="post", color=COLORS[name], label=f"{name} p99")
        lat.step(starts, top, where="post", color=COLORS[name], ls=":", lw=0.8)
    lat.set_yscale("log")
    lat.set_ylabel(f"latency per {WINDOW_S:g} s (ms, log)\nsolid p99, dotted max")
    lat.set_title(
        f"Through a latency run at {r['run']['rate']:g} events/s: label flips end watches, clients relist"
    )
    for name in PROXIES:
        pts = runs.get(name, {}).get("rss_mb", [])
        if pts:
            mem.plot(*zip(*pts, strict=True), color=COLORS[name], label=name)
            at, peak = max(pts, key=lambda p: p[1])
            mem.annotate(
                f"peak {peak:.0f} MB",
                (at, peak),
                textcoords="offset points",
                xytext=(0, 4),
                fontsize="x-small",
                color=COLORS[name],
            )
    mem.axhline(RSS_GOAL_MB, **GOAL, label=f"goal: discofilter < {RSS_GOAL_MB:g} MB")
    mem.set_ylim(bottom=0)
    mem.set_ylabel("proxy RSS (MB)")
    mem.set_xlabel("seconds since the run's first event")
    flips: list[float] = next((x["flips_s"] for x in runs.values() if x["flips_s"]), [])
    for ax in (lat, mem):
        for i, t in enumerate(flips):
            ax.axvline(t, color="orange", lw=1, label="namespace label flip" if i == 0 else None)
        ax.grid(True, alpha=0.3)
    lat.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    mem.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out / "flip.png")


def throughput(r: JsonObj, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    v, ak = r["variants"], r["all_kept"]
    x = range(len(PROXIES))
    share = r["stream"]["mesh_events"] / r["stream"]["events"]
    mesh = ax.bar(
        [i - 0.2 for i in x],
        [v[n]["events_per_s"] for n in PROXIES],
        0.4,
        label=f"mesh selector ({share:.0%} kept)",
    )
    every = ax.bar(
        [i + 0.2 for i in x], [ak[n]["events_per_s"] for n in PROXIES], 0.4, label="every event kept"
    )
    _label_bars(ax, mesh, "{:,.0f}")
    _label_bars(ax, every, "{:,.0f}")
    d = PROXIES.index("discofilter")
    raw_mesh, raw_all = v["passthrough"]["events_per_s"], ak["passthrough"]["events_per_s"]
    _goal_over(ax, d - 0.2, 0.4, 1.5 * raw_mesh, "goal 1.5x raw")
    _goal_over(ax, d + 0.2, 0.4, 0.9 * raw_all, "goal 0.9x raw")
    _goal_over(ax, d - 0.2, 0.4, 6 * v["naive"]["events_per_s"], "goal 6x naive")
    ax.axhline(v["direct"]["events_per_s"], color="gray", ls="--", label="direct (no proxy)")
    ax.axhline(
        r["receive_path"]["events_per_s"], color="black", ls=":", label="aiohttp receive path alone (ceiling)"
    )
    ax.set_xticks(list(x), PROXIES)
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.set_ylabel("stream events / s (saturation)")
    ax.set_title("Throughput: how fast each proxy gets through the API server's stream")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize="small")
    return _save(fig, out / "throughput.png")


def cpu(r: JsonObj, out: Path) -> Path:
    """Per stream event: proxy CPU and client CPU stacked; the NET in one picture."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    v = r["variants"]
    events = r["stream"]["events"]
    proxy = [(v[n]["proxy_cpu_us_per_event"] or 0.0) for n in MAIN]
    client = [v[n]["client_cpu_s"] / events * 1e6 for n in MAIN]
    pb = ax.bar(MAIN, proxy, label="proxy CPU", color="#ff7f0e")
    cb = ax.bar(
        MAIN, client, bottom=proxy, label=f"client CPU ({r['decode_model']} decode model)", color="#1f77b4"
    )
    ax.bar_label(pb, labels=[f"{p:.1f}" if p else "" for p in proxy], label_type="center", fontsize="x-small")
    ax.bar_label(cb, labels=[f"{c:.1f}" for c in client], label_type="center", fontsize="x-small")
    for i, n in enumerate(MAIN):
        value = r["net"].get(n, {}).get("measured") if n != "direct" else 1.0
        if value is not None:
            ax.text(i, proxy[i] + client[i], f"NET {value:.2f}", ha="center", va="bottom")
    ax.axhline(NET_GOAL * client[0], **GOAL, label=f"goal: NET {NET_GOAL} (of direct's client CPU)")
    ax.set_ylabel("CPU µs per stream event (saturation)")
    ax.set_title("CPU per event of the API server's stream: proxy + client")
    ax.legend(fontsize="small")
    return _save(fig, out / "cpu.png")


def _cdf(ax: Any, values: Sequence[float], name: str) -> None:
    if values:
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=name, color=COLORS[name])


def latency(r: JsonObj, samples: Samples, out: Path) -> Path:
    fig, (whole, added) = plt.subplots(1, 2, figsize=(11, 4.5))
    for n in MAIN:
        _cdf(whole, samples.steady.get(n, []), n)
    whole.set_xscale("log")
    whole.set_xlabel("latency, commit to client (ms, log)")
    whole.set_ylabel("fraction of events")
    whole.set_title("Commit to client")
    for n in PROXIES:
        _cdf(added, samples.added.get(n, []), n)
    added.set_xscale("symlog", linthresh=0.1)
    added.axvline(ADDED_P99_GOAL_MS, **GOAL, label=f"goal: p99 <= +{ADDED_P99_GOAL_MS:g} ms")
    added.axhline(0.99, color="gray", lw=0.8, ls=":", label="p99")
    added.set_xlabel("added latency: through the proxy minus direct, event by event (ms)")
    added.set_title("Added by the proxy")
    for ax in (whole, added):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"Per-event latency at {r['run']['rate']:g} events/s (steady half, no membership change)")
    return _save(fig, out / "latency.png")


def core(r: JsonObj, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    corpora = list(r["core"])
    # One copy of every read is the fastest any proxy can go (it touches every byte at least once): a
    # ceiling on GB/s, which the filter, which scans and then copies what it keeps, stays under.
    kinds = [
        ("watchfilter", "WatchFilter.feed_joined"),
        ("orjson_parse", "orjson.loads (what a decoding proxy pays)"),
        ("copy", "one copy of every read (ceiling)"),
        ("scan_copy", "every newline found + one copy (the host's floor for a filter)"),
    ]
    width = 0.8 / len(kinds)
    for k, (key, label) in enumerate(kinds):
        xs = [i + (k - 1.5) * width for i in range(len(corpora))]
        bars = ax.bar(xs, [r["core"][c][key]["gb_per_s"] for c in corpora], width, label=label)
        _label_bars(ax, bars, "{:.2f}")
    for i, c in enumerate(corpora):
        goal = CORE_FLOOR_SHARE * r["core"][c]["scan_copy"]["gb_per_s"]
        _goal_over(ax, i - 1.5 * width, width, goal, f"goal {CORE_FLOOR_SHARE:g}x floor")
    ax.set_xticks(range(len(corpora)), corpora)
    ax.set_ylabel("GB/s (one core)")
    ax.set_title("Core: the stream filter alone, no sockets")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    return _save(fig, out / "core.png")


def draw_all(r: JsonObj, samples: Samples, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [
        net(r, out),
        flip(r, samples, out),
        throughput(r, out),
        cpu(r, out),
        latency(r, samples, out),
        core(r, out),
    ]

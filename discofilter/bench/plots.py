"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless machines, CI, containers
import matplotlib.pyplot as plt

JsonObj = dict[str, Any]
MAIN = ("direct", "passthrough", "naive", "discofilter")
COLORS = {"direct": "#7f7f7f", "passthrough": "#1f77b4", "naive": "#d62728", "discofilter": "#2ca02c"}


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput(r: JsonObj, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    v, ak = r["variants"], r["all_kept"]
    names = ["passthrough", "naive", "discofilter"]
    x = range(len(names))
    share = r["stream"]["mesh_events"] / r["stream"]["events"]
    ax.bar(
        [i - 0.2 for i in x],
        [v[n]["events_per_s"] for n in names],
        0.4,
        label=f"mesh selector ({share:.0%} kept)",
    )
    ax.bar([i + 0.2 for i in x], [ak[n]["events_per_s"] for n in names], 0.4, label="every event kept")
    ax.axhline(v["direct"]["events_per_s"], color="gray", ls="--", label="direct (no proxy)")
    ax.axhline(r["receive_path"]["events_per_s"], color="black", ls=":", label="aiohttp receive path alone")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("stream events / s (saturation)")
    ax.set_title("Throughput: how fast each proxy gets through the API server's stream")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize="small")
    return _save(fig, out / "throughput.png")


def cpu(r: JsonObj, out: Path) -> Path:
    """Per stream event: proxy CPU and client CPU stacked; the NET in one picture."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    v = r["variants"]
    events = r["stream"]["events"]
    proxy = [(v[n]["proxy_cpu_us_per_event"] or 0.0) for n in MAIN]
    client = [v[n]["client_cpu_s"] / events * 1e6 for n in MAIN]
    ax.bar(MAIN, proxy, label="proxy CPU", color="#ff7f0e")
    ax.bar(
        MAIN, client, bottom=proxy, label=f"client CPU ({r['decode_model']} decode model)", color="#1f77b4"
    )
    for i, n in enumerate(MAIN):
        net = r["net"].get(n, {}).get("measured") if n != "direct" else 1.0
        if net is not None:
            ax.text(i, proxy[i] + client[i], f"NET {net:.2f}", ha="center", va="bottom")
    ax.set_ylabel("CPU µs per stream event")
    ax.set_title("CPU per event of the API server's stream: proxy + client")
    ax.legend()
    return _save(fig, out / "cpu.png")


def latency(r: JsonObj, samples: Mapping[str, Sequence[float]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n in MAIN:
        values = samples.get(n) or []
        if not values:
            continue
        ys = [(i + 1) / len(values) for i in range(len(values))]
        ax.plot(values, ys, label=n, color=COLORS[n])
    ax.set_xscale("log")
    ax.set_xlabel("latency, commit to client (ms, log scale)")
    ax.set_ylabel("fraction of events")
    ax.set_title(f"Per-event latency at {r['run']['rate']:g} events/s (steady part, no membership change)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, out / "latency.png")


def core(r: JsonObj, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    corpora = list(r["core"])
    kinds = [
        ("watchfilter", "WatchFilter.feed_joined"),
        ("orjson_parse", "orjson.loads"),
        ("copy", "copy (floor)"),
    ]
    width = 0.8 / len(kinds)
    for k, (key, label) in enumerate(kinds):
        xs = [i + (k - 1) * width for i in range(len(corpora))]
        ax.bar(xs, [r["core"][c][key]["gb_per_s"] for c in corpora], width, label=label)
    ax.axhline(5.0, color="gray", ls="--", label="target 5 GB/s")
    ax.set_xticks(range(len(corpora)), corpora)
    ax.set_ylabel("GB/s (one core)")
    ax.set_title("Core: the stream filter alone, no sockets")
    ax.legend()
    return _save(fig, out / "core.png")


def draw_all(r: JsonObj, samples: Mapping[str, Sequence[float]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [throughput(r, out), cpu(r, out), latency(r, samples, out), core(r, out)]

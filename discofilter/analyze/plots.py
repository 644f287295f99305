"""PNG plots of an analysis (matplotlib, Agg backend). Importing this fails without matplotlib; the CLI
then writes the JSON and text only and says how to get plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless machines, CI, containers
import matplotlib.pyplot as plt

MESH, OUTSIDE = "#2ca02c", "#d62728"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def top_namespaces(report: dict[str, Any], out: Path) -> Path:
    rows = report["top_by_events"][::-1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.4 * len(rows) + 1.5)))
    names = [r["namespace"] for r in rows]
    colors = [MESH if r["mesh"] else OUTSIDE for r in rows]
    a.barh(names, [r["events"] for r in rows], color=colors)
    a.set_xlabel("watch events in the window")
    b.barh(names, [r["bytes"] / 1024 for r in rows], color=colors)
    b.set_xlabel("watch KiB in the window")
    b.set_yticks([])
    fig.suptitle("top namespaces (green: in the mesh, red: outside, discofilter would drop)")
    return _save(fig, out / "top-namespaces.png")


def shares(report: dict[str, Any], out: Path) -> Path:
    t = report["totals"]
    labels = ["watch events", "watch bytes", "LIST bytes"]
    outside = [t["outside_event_share"], t["outside_byte_share"], t["outside_list_byte_share"]]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.barh(labels, [1.0] * 3, color=MESH, label="in the mesh (kept)")
    ax.barh(labels, outside, color=OUTSIDE, label="outside the mesh (dropped)")
    for i, share in enumerate(outside):
        ax.text(min(share, 0.9) + 0.01, i, f"{share:.0%}", va="center")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize="small")
    ax.set_title(f"what istiod receives, {report['window']['seconds']:.0f} s window")
    return _save(fig, out / "shares.png")


def draw(report: dict[str, Any], out: Path) -> list[Path]:
    return [shares(report, out), top_namespaces(report, out)]

"""``discofilter analyze``: flags onto ``AnalyzeSettings``, then the window, the report and its files.

Bad input (a selector that does not parse, a mesh config that cannot be read, an API server that cannot
be reached or refuses the LISTs) raises a ``DiscofilterError``: one line from ``discofilter.cli``, exit 2.
Ctrl-C (SIGINT) ends the window early; the report is still printed and written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from discofilter.analyze.report import render_text
from discofilter.analyze.shell import Analyzer, AnalyzeSettings
from discofilter.core.selectors import SelectorSet, parse_selector
from discofilter.errors import ConfigError

PLOTS_NEED = "plots need matplotlib: pip install 'discofilter[bench]'"


def add_analyze_parser(sub: Any) -> None:
    d = AnalyzeSettings()
    p: argparse.ArgumentParser = sub.add_parser(
        "analyze",
        help="measure what discofilter would save on a cluster (read-only; run it before deploying)",
        description="List and watch namespaces, pods, services, endpoints and endpointslices cluster-wide "
        "as istiod does, for a window, and report how much of it is outside the mesh, which namespaces "
        "produce it, and what discofilter would save istiod. Needs only list and watch on those "
        "(manifests/analyze/). Ctrl-C ends the window early and still reports.",
    )
    p.add_argument("--kubeconfig", help="kubeconfig of the cluster; without it KUBECONFIG, then in-cluster")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument(
        "--duration",
        default=f"{d.duration_seconds:g}s",
        help="length of the window, e.g. 90s, 5m, 1h (default 5m)",
    )
    p.add_argument(
        "--namespace-selector",
        action="append",
        metavar="SEL",
        help="kubectl label selector of mesh namespaces; repeat to OR several (default: serve's, "
        "'istio-injection=enabled' OR 'istio.io/rev', or the mesh config's discoverySelectors)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--mesh-config", metavar="PATH", help="Istio mesh config file (the istio ConfigMap's 'mesh' key)"
    )
    g.add_argument(
        "--mesh-configmap",
        metavar="NAMESPACE/NAME",
        help="read the mesh config from this ConfigMap (key 'mesh'), e.g. istio-system/istio",
    )
    p.add_argument(
        "--out", default="analyze-out", help="directory for analysis.json and plots (default %(default)s)"
    )


def parse_duration(text: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ConfigError(f"--duration {text!r} is not a duration like 90s, 5m or 1h") from None
    if not value > 0:
        raise ConfigError(f"--duration {text!r} must be positive")
    return value


def settings_from_args(args: argparse.Namespace) -> AnalyzeSettings:
    texts: list[str] = args.namespace_selector or []
    selectors = SelectorSet(tuple(parse_selector(t) for t in texts)) if texts else None
    configmap: tuple[str, str] | None = None
    if args.mesh_configmap:
        ns, slash, name = args.mesh_configmap.partition("/")
        if not slash or not ns or not name or "/" in name:
            raise ConfigError(f"--mesh-configmap {args.mesh_configmap!r} is not NAMESPACE/NAME")
        configmap = (ns, name)
    return AnalyzeSettings(
        kubeconfig=args.kubeconfig,
        context=args.context,
        duration_seconds=parse_duration(args.duration),
        selectors=selectors,
        mesh_config_path=args.mesh_config,
        mesh_configmap=configmap,
    )


async def _analyze(settings: AnalyzeSettings) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        return await Analyzer(settings, stop=stop).run()
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    """analysis.json, and the plots when matplotlib is there. Returns the files written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "analysis.json"
        path.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    written = [path]
    try:
        from discofilter.analyze import plots
    except ImportError:
        print(PLOTS_NEED, file=sys.stderr)
        return written
    written += plots.draw(report, out)
    return written


def run_analyze(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    report = asyncio.run(_analyze(settings))
    sys.stdout.write(render_text(report))
    sys.stdout.flush()
    for path in write_outputs(report, Path(args.out)):
        print(f"wrote {path}", file=sys.stderr)
    return 0

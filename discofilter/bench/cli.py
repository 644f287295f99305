"""``discofilter bench``: flags onto ``BenchSettings``, then the run, the report, results.json and plots.

Numeric flags default to None so that ``--quick`` can supply its own defaults while explicit flags still
win. Bad values raise ``ConfigError`` (one line from the CLI, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from discofilter.bench.settings import (
    DECODE_MODELS,
    QUICK_RUN,
    QUICK_WORKLOAD,
    BenchSettings,
    ClusterSettings,
    RunSettings,
)
from discofilter.bench.workload import EVENTS_PER_POD_LIFE, WorkloadSettings
from discofilter.errors import ConfigError

_WORKLOAD_FLAGS = {
    "namespaces": "namespaces",
    "mesh_fraction": "mesh_fraction",
    "apps_per_namespace": "apps_per_namespace",
    "pods_per_app": "pods_per_app",
    "seed": "seed",
}
_RUN_FLAGS = {
    "events": "events",
    "loops": "loops",
    "trials": "trials",
    "rate": "rate",
    "latency_seconds": "latency_seconds",
    "flip_every": "flip_every",
    "relist_changes": "relist_changes",
    "client_decode": "decode",
    "core_seconds": "core_seconds",
    "paced_rates": "paced_rates",
    "paced_seconds": "paced_seconds",
}


def add_bench_parser(sub: Any) -> None:
    w, r = WorkloadSettings(), RunSettings()
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="run the churn benchmark (simulated API server, four proxies side by side, istiod-like clients)",
        description="Start a simulated API server with realistic churn, put a raw pass-through proxy, a "
        "naive decoding proxy and discofilter in front of it, run istiod-like watch clients through each "
        "and directly, and report throughput, CPU, latency and memory. With --kubeconfig, churn a scratch "
        "namespace of a real cluster instead. See bench/README.md.",
    )
    p.add_argument(
        "--out", default="bench-out", help="directory for results.json, plots and logs (default %(default)s)"
    )
    p.add_argument("--quick", action="store_true", help="a smoke run that finishes in seconds")
    g = p.add_argument_group("workload")
    g.add_argument("--namespaces", type=int, help=f"namespaces in the cluster (default {w.namespaces})")
    g.add_argument(
        "--mesh-fraction", type=float, help=f"share of namespaces in the mesh (default {w.mesh_fraction})"
    )
    g.add_argument(
        "--apps-per-namespace", type=int, help=f"apps per namespace (default {w.apps_per_namespace})"
    )
    g.add_argument("--pods-per-app", type=int, help=f"replicas per app (default {w.pods_per_app})")
    g.add_argument("--seed", type=int, help=f"seed of everything random (default {w.seed})")
    g = p.add_argument_group("run")
    g.add_argument("--events", type=int, help=f"events in the saturation stream (default {r.events})")
    g.add_argument(
        "--loops", type=int, help=f"times the stream is played per saturation replay (default {r.loops})"
    )
    g.add_argument("--trials", type=int, help=f"saturation trials per variant (default {r.trials})")
    g.add_argument(
        "--rate",
        type=float,
        help=f"events/s of the latency runs, and the paced rate of the verdict (default {r.rate:g})",
    )
    g.add_argument(
        "--churn",
        type=float,
        help=f"pods created and deleted per second in the latency runs, instead of --rate "
        f"({EVENTS_PER_POD_LIFE} events per pod life)",
    )
    g.add_argument(
        "--paced-rates",
        type=_rates,
        help="comma-separated events/s of the paced TLS runs (default "
        f"{','.join(f'{x:g}' for x in r.paced_rates)}; --rate is always among them)",
    )
    g.add_argument(
        "--paced-seconds", type=float, help=f"length of each paced run (default {r.paced_seconds:g})"
    )
    g.add_argument(
        "--latency-seconds", type=float, help=f"length of each latency run (default {r.latency_seconds:g})"
    )
    g.add_argument(
        "--flip-every",
        type=float,
        help=f"seconds between namespace label flips, 0 for none (default {r.flip_every:g})",
    )
    g.add_argument(
        "--relist-changes",
        type=int,
        help=f"times each kind of membership change is made in the relist phase (default {r.relist_changes})",
    )
    g.add_argument("--client-decode", choices=DECODE_MODELS, help=f"client decode model (default {r.decode})")
    g.add_argument(
        "--core-seconds", type=float, help=f"time budget per core measurement (default {r.core_seconds:g})"
    )
    g = p.add_argument_group("real cluster")
    g.add_argument(
        "--kubeconfig", help="churn a scratch namespace of this cluster instead of the simulated one"
    )
    g.add_argument("--context", help="kubeconfig context")
    g.add_argument("--cluster-namespace", help="base name of the scratch namespaces (must not exist)")
    g.add_argument("--cluster-seconds", type=float, help="how long to churn the real cluster (default 30)")
    g.add_argument("--cluster-pods-per-s", type=float, help="pods created and deleted per second (default 5)")


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    try:
        wl = dataclasses.asdict(QUICK_WORKLOAD) if args.quick else {}
        wl |= {
            field: getattr(args, flag)
            for flag, field in _WORKLOAD_FLAGS.items()
            if getattr(args, flag) is not None
        }
        workload = WorkloadSettings(**wl)
        run: dict[str, Any] = dict(QUICK_RUN) if args.quick else {}
        run |= {
            field: getattr(args, flag)
            for flag, field in _RUN_FLAGS.items()
            if getattr(args, flag) is not None
        }
        if args.churn is not None:
            if args.rate is not None:
                raise ConfigError("give --rate (events/s) or --churn (pods/s), not both")
            run["rate"] = args.churn * EVENTS_PER_POD_LIFE
        out = Path(args.out)
        cluster = None
        if args.kubeconfig:
            cl: dict[str, Any] = {"kubeconfig": args.kubeconfig, "context": args.context}
            cl["namespace"] = args.cluster_namespace
            if args.cluster_seconds is not None:
                cl["seconds"] = args.cluster_seconds
            elif args.quick:
                cl["seconds"] = 3.0
            if args.cluster_pods_per_s is not None:
                cl["pods_per_s"] = args.cluster_pods_per_s
            if args.mesh_fraction is not None:
                cl["mesh_fraction"] = args.mesh_fraction
            cluster = ClusterSettings(**cl)
        elif args.cluster_namespace or args.context:
            raise ConfigError("--context and --cluster-namespace need --kubeconfig")
        return BenchSettings(
            workload=workload, run=RunSettings(out=out, quick=args.quick, **run), cluster=cluster
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def check_bench_extra() -> None:
    """The benchmark's own dependencies are the ``bench`` extra; say so instead of a traceback."""
    missing = []
    for module in ("psutil", "matplotlib", "cryptography"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(
            f"discofilter bench needs {' and '.join(missing)}, which the 'bench' extra installs: "
            "pip install 'discofilter[bench]' (from a checkout: pip install '.[bench]')"
        )


def run_bench(args: argparse.Namespace) -> int:
    check_bench_extra()
    settings = settings_from_args(args)
    from discofilter.bench.procs import writable_dir

    writable_dir(settings.run.out, "--out")
    if settings.cluster is not None:
        from discofilter.bench.cluster import run_cluster

        code: int = asyncio.run(run_cluster(settings.cluster, settings.run.out))
        return code
    from discofilter.bench.orchestrate import Bench, Progress
    from discofilter.bench.plots import draw_all, samples_of
    from discofilter.bench.report import render, verdict_line
    from discofilter.bench.results import summarize

    progress = Progress()
    raw = asyncio.run(Bench(settings, progress).run())
    results = summarize(settings, raw)
    out = settings.run.out
    results_path = out / "results.json"
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    pngs = draw_all(results, samples_of(raw), out)
    # The verdict first: it is the question the operator ran the bench for; the tables follow.
    print(verdict_line(results, pngs))
    print()
    print(render(results))
    print()
    print(f"results: {results_path}")
    print(f"plots: {', '.join(str(p) for p in pngs)}")
    return 0

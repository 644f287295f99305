"""``discofilter simapi`` and ``discofilter demo``: flags onto their settings. Bad values raise
``ConfigError`` (one line from the CLI, never a traceback)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from discofilter.bench.workload import WorkloadSettings
from discofilter.demo.settings import DEMO_WORKLOAD, ChurnSettings, DemoSettings, SimApiSettings
from discofilter.errors import ConfigError


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    w, c = DEMO_WORKLOAD, ChurnSettings()
    g = p.add_argument_group("the simulated cluster")
    g.add_argument("--namespaces", type=int, default=w.namespaces, help="namespaces (default %(default)s)")
    g.add_argument(
        "--mesh-fraction",
        type=float,
        default=w.mesh_fraction,
        help="share of namespaces labelled istio-injection=enabled (default %(default)s)",
    )
    g.add_argument(
        "--apps-per-namespace", type=int, default=w.apps_per_namespace, help="apps (default %(default)s)"
    )
    g.add_argument("--pods-per-app", type=int, default=w.pods_per_app, help="replicas (default %(default)s)")
    g.add_argument("--seed", type=int, default=w.seed, help="seed of names and churn (default %(default)s)")
    g.add_argument(
        "--churn-rate",
        type=float,
        default=c.rate,
        help="writes per second (pod lives, Endpoints, EndpointSlices); 0 for none (default %(default)s)",
    )
    g.add_argument(
        "--flip-every",
        type=float,
        default=c.flip_every,
        metavar="SECONDS",
        help="move a namespace into the mesh and out again every SECONDS; 0 for never (default "
        "%(default)s: each flip ends open watches through discofilter with 410, which ends kubectl -w)",
    )


def add_demo_parsers(sub: Any) -> None:
    s: argparse.ArgumentParser = sub.add_parser(
        "simapi",
        help="run the simulated API server, seeded with mesh and plain namespaces and live churn",
        description="Serve discofilter's simulated API server (kube-apiserver 1.28 behaviour) with a "
        "seeded cluster and live churn, until Ctrl-C.",
    )
    s.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="HOST:PORT (default %(default)s: a free port, printed)",
    )
    s.add_argument("--kubeconfig-out", metavar="PATH", help="write a kubeconfig for this server to PATH")
    s.add_argument(
        "--token",
        action="append",
        metavar="TOKEN=USER",
        help="accept bearer TOKEN as USER; repeat for several. With any, authentication is on (no token: "
        "system:anonymous, unknown token: 401) and --kubeconfig-out carries the first. kubectl sends a "
        "token only to https servers: put `discofilter serve` with TLS in front, as in a remote cluster",
    )
    _add_cluster_flags(s)
    d: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="see discofilter filter without a cluster: simapi, discofilter in front, kubectl to try",
        description="Start the simulated API server with mesh and plain namespaces and live churn, and "
        "`discofilter serve` in front of it; print a kubeconfig for each and the kubectl commands to try. "
        "Ctrl-C ends everything.",
    )
    d.add_argument(
        "--dir",
        metavar="DIR",
        help="directory for the kubeconfigs and logs (default: a new temporary directory)",
    )
    _add_cluster_flags(d)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _tokens(values: list[str] | None) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for value in values or []:
        token, sep, user = value.partition("=")
        if not sep or not token or not user:
            raise ConfigError(f"--token {value!r} is not TOKEN=USER")
        tokens[token] = user
    return tokens


def _cluster(args: argparse.Namespace) -> tuple[WorkloadSettings, ChurnSettings]:
    try:
        workload = WorkloadSettings(
            namespaces=args.namespaces,
            mesh_fraction=args.mesh_fraction,
            apps_per_namespace=args.apps_per_namespace,
            pods_per_app=args.pods_per_app,
            seed=args.seed,
            inflight=DEMO_WORKLOAD.inflight,
            nodes=DEMO_WORKLOAD.nodes,
        )
        churn = ChurnSettings(rate=args.churn_rate, flip_every=args.flip_every)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return workload, churn


def simapi_settings(args: argparse.Namespace) -> SimApiSettings:
    host, port = _host_port(args.listen)
    workload, churn = _cluster(args)
    out = Path(args.kubeconfig_out) if args.kubeconfig_out else None
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--kubeconfig-out {args.kubeconfig_out!r}: no directory {str(out.parent)!r}")
    return SimApiSettings(
        host=host, port=port, kubeconfig_out=out, workload=workload, churn=churn, tokens=_tokens(args.token)
    )


def run_command(args: argparse.Namespace) -> int:
    import logging

    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if args.command == "simapi":
        from discofilter.demo.simserver import main

        uvloop.run(main(simapi_settings(args)))
        return 0
    from discofilter.demo.run import run_demo

    workload, churn = _cluster(args)
    settings = DemoSettings(out=Path(args.dir) if args.dir else None, workload=workload, churn=churn)
    code: int = asyncio.run(run_demo(settings))
    return code

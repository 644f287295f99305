"""Command line: maps flags and DISCOFILTER_* environment variables onto ``Settings``. No logic."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from discofilter import __version__
from discofilter.core.membership import is_namespace_name
from discofilter.core.selectors import SelectorSet, parse_selector
from discofilter.errors import ConfigError, DiscofilterError
from discofilter.logs import setup_logging
from discofilter.settings import (
    ExclusionSettings,
    MeshConfigSettings,
    NamespaceWatchSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
    WatchSettings,
)

ENV_PREFIX = "DISCOFILTER_"


class EnvText(str):
    """A value read from an environment variable, which it remembers so that errors name it."""

    var: str


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    if not value:
        return None
    text = EnvText(value)
    text.var = ENV_PREFIX + name
    return text


def _origin(value: object, flag: str) -> str:
    """The flag, or the environment variable the value came from: what the user has to fix."""
    return value.var if isinstance(value, EnvText) else flag


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
"""Spellings accepted for boolean environment variables (case-insensitive), as strconv.ParseBool-ish."""


def _env_bool(value: object, flag: str) -> bool:
    if not isinstance(value, str):
        return bool(value)  # the flag itself: store_true
    if value.strip().lower() in TRUE:
        return True
    if value.strip().lower() in FALSE:
        return False
    spellings = "/".join(TRUE + FALSE)
    raise ConfigError(f"{_origin(value, flag)}={value!r} is neither true nor false ({spellings})")


def _host_port(value: str, flag: str) -> tuple[str, int]:
    where = _origin(value, flag)
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{where} {value!r} is not HOST:PORT")
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where} {value!r}: port {port} out of range 0-65535")
    if host.startswith("[") != host.endswith("]"):
        raise ConfigError(f"{where} {value!r}: unbalanced [] around the IPv6 address")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _positive(kind: type[int] | type[float], flag: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        where = _origin(value, flag)
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{where} wants a number, not {value!r}") from None
        if not math.isfinite(number) or number <= 0:
            raise argparse.ArgumentTypeError(f"{where} must be a positive number, not {value!r}")
        return number

    return parse


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error, rather than argparse's usage block first."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"discofilter: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="discofilter",
        description="A watch proxy between istiod and the kube-apiserver that keeps only mesh namespaces' "
        "pods, services, endpoints and endpointslices in LIST and WATCH answers.",
    )
    parser.add_argument("--version", action="version", version=f"discofilter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("serve", help="run the proxy", description="Run the proxy.")
    s.add_argument(
        "--kubeconfig",
        default=_env("KUBECONFIG"),
        help="kubeconfig of the real API server [env DISCOFILTER_KUBECONFIG]; "
        "without it KUBECONFIG (a ':'-separated list, merged as kubectl does), then ~/.kube/config, "
        "then the in-cluster ServiceAccount",
    )
    s.add_argument("--context", default=_env("CONTEXT"), help="kubeconfig context [env DISCOFILTER_CONTEXT]")
    s.add_argument(
        "--listen",
        default=_env("LISTEN") or "127.0.0.1:15080",
        help="HOST:PORT of the proxy listener (default 127.0.0.1:15080) [env DISCOFILTER_LISTEN]",
    )
    s.add_argument(
        "--health-listen",
        default=_env("HEALTH_LISTEN") or "127.0.0.1:15081",
        help="HOST:PORT serving /healthz and /readyz (default 127.0.0.1:15081; use 0.0.0.0:15081 for "
        "kubelet probes) [env DISCOFILTER_HEALTH_LISTEN]",
    )
    s.add_argument(
        "--metrics-listen",
        default=_env("METRICS_LISTEN") or "127.0.0.1:15082",
        help="HOST:PORT serving Prometheus /metrics (default 127.0.0.1:15082; use 0.0.0.0:15082 for a "
        "scraper outside the pod) [env DISCOFILTER_METRICS_LISTEN]",
    )
    s.add_argument(
        "--namespace-selector",
        action="append",
        metavar="SEL",
        help="kubectl label selector of mesh namespaces; repeat to OR several (default: "
        "'istio-injection=enabled' OR 'istio.io/rev') [env DISCOFILTER_NAMESPACE_SELECTOR, ';'-separated]",
    )
    s.add_argument(
        "--istiod-namespace",
        metavar="NAME",
        help="keep this namespace whatever its labels: istiod's own, where its gateways usually run "
        "(default: the pod's POD_NAMESPACE; '' keeps none) [env DISCOFILTER_ISTIOD_NAMESPACE, '' too]",
    )
    s.add_argument(
        "--mesh-config",
        default=_env("MESH_CONFIG"),
        metavar="PATH",
        help="Istio mesh config file (the istio ConfigMap's 'mesh' key, as mounted for istiod at "
        "/etc/istio/config/mesh); its discoverySelectors become discofilter's selectors and are followed "
        "while running. --namespace-selector, if given, wins and the mesh config is then only used to warn "
        "[env DISCOFILTER_MESH_CONFIG]",
    )
    s.add_argument(
        "--mesh-configmap",
        default=_env("MESH_CONFIGMAP"),
        metavar="NAMESPACE/NAME",
        help="read the mesh config from this ConfigMap (key 'mesh') and watch it, e.g. istio-system/istio; "
        "same precedence as --mesh-config [env DISCOFILTER_MESH_CONFIGMAP]",
    )
    s.add_argument(
        "--tls-cert-file",
        default=_env("TLS_CERT_FILE"),
        help="serve HTTPS with this certificate [env DISCOFILTER_TLS_CERT_FILE]",
    )
    s.add_argument(
        "--tls-key-file",
        default=_env("TLS_KEY_FILE"),
        help="key of --tls-cert-file [env DISCOFILTER_TLS_KEY_FILE]",
    )
    s.add_argument(
        "--upstream-credentials",
        action="store_true",
        default=_env("UPSTREAM_CREDENTIALS"),
        help="attach discofilter's own credentials to requests that carry none (the sidecar case); "
        "refused unless --listen is a loopback address [env DISCOFILTER_UPSTREAM_CREDENTIALS=true]",
    )
    s.add_argument(
        "--wire-format",
        default=_env("WIRE_FORMAT") or "native",
        choices=["native", "json"],
        help="filtered reads keep the client's wire format, protobuf included (native, default), or are "
        "forced to JSON (json) [env DISCOFILTER_WIRE_FORMAT]",
    )
    s.add_argument(
        "--server-side-exclusion",
        default=_env("SERVER_SIDE_EXCLUSION") or "auto",
        choices=["auto", "off"],
        help="ask the API server to leave out the costliest non-mesh namespaces (metadata.namespace!= "
        "field selectors on filtered reads; auto, default) or not (off); clients see the same either way "
        "[env DISCOFILTER_SERVER_SIDE_EXCLUSION]",
    )
    base = Settings()
    for flag, env, default, kind, what in (
        ("--shutdown-grace-seconds", "SHUTDOWN_GRACE_SECONDS", base.server.shutdown_grace_seconds, float,
         "how long in-flight requests may finish on SIGTERM"),
        ("--tls-reload-seconds", "TLS_RELOAD_SECONDS", base.server.tls_reload_seconds, float,
         "how often --tls-cert-file and --tls-key-file are checked for a new certificate"),
        ("--upstream-pool-size", "UPSTREAM_POOL_SIZE", base.upstream.pool_size, int,
         "upstream connections at once; each open watch holds one"),
        ("--client-write-timeout-seconds", "CLIENT_WRITE_TIMEOUT_SECONDS",
         base.watch.client_write_timeout_seconds, float,
         "a watch whose client takes nothing for this long is ended"),
        ("--membership-unknown-after-seconds", "MEMBERSHIP_UNKNOWN_AFTER_SECONDS",
         base.namespaces.unknown_after_seconds, float,
         "filtered requests fail closed when the namespace watch has been down this long"),
        ("--exclusion-max-namespaces", "EXCLUSION_MAX_NAMESPACES", base.exclusion.max_namespaces, int,
         "K: namespaces excluded at the API server per request at most"),
    ):  # fmt: skip
        s.add_argument(
            flag,
            type=_positive(kind, flag),
            default=_env(env) or str(default),
            help=f"{what} (default {default}) [env DISCOFILTER_{env}]",
        )
    s.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL") or "info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info) [env DISCOFILTER_LOG_LEVEL]",
    )
    s.add_argument(
        "--log-format",
        default=_env("LOG_FORMAT") or "text",
        choices=["text", "json"],
        help="text lines (default), or one JSON object per line for log pipelines "
        "[env DISCOFILTER_LOG_FORMAT]",
    )
    from discofilter.bench.cli import add_bench_parser  # late: only argparse wiring

    add_bench_parser(sub)
    from discofilter.demo.cli import add_demo_parsers  # late: only argparse wiring

    add_demo_parsers(sub)
    from discofilter.analyze.cli import add_analyze_parser  # late: only argparse wiring

    add_analyze_parser(sub)
    return parser


def _check_env_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse checks ``choices`` only on the command line, not on defaults (our env vars)."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.choices is not None and isinstance(value, EnvText) and value not in action.choices:
            raise ConfigError(f"{value.var}={value!r} is not one of {', '.join(map(str, action.choices))}")
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                _check_env_choices(chosen, args)


def settings_from_args(args: argparse.Namespace) -> tuple[Settings, tuple[str, int]]:
    texts: list[str] = args.namespace_selector or [
        t for t in (_env("NAMESPACE_SELECTOR") or "").split(";") if t.strip()
    ]
    base = Settings()
    selectors = SelectorSet(tuple(parse_selector(t) for t in texts)) if texts else base.selectors
    mesh = _mesh_settings(args.mesh_config, args.mesh_configmap, selectors_given=bool(texts))
    host, port = _host_port(args.listen, "--listen")
    health = _host_port(args.health_listen, "--health-listen")
    settings = Settings(
        selectors=selectors,
        istiod_namespace=_istiod_namespace(args.istiod_namespace),
        server=ServerSettings(
            host=host,
            port=port,
            tls_cert_file=args.tls_cert_file,
            tls_key_file=args.tls_key_file,
            upstream_credentials=_env_bool(args.upstream_credentials, "--upstream-credentials"),
            shutdown_grace_seconds=args.shutdown_grace_seconds,
            tls_reload_seconds=args.tls_reload_seconds,
        ),
        upstream=UpstreamSettings(
            kubeconfig=args.kubeconfig,
            kubeconfig_from=_origin(args.kubeconfig, "--kubeconfig"),
            context=args.context,
            pool_size=int(args.upstream_pool_size),
        ),
        watch=WatchSettings(
            wire_format=args.wire_format, client_write_timeout_seconds=args.client_write_timeout_seconds
        ),
        namespaces=NamespaceWatchSettings(unknown_after_seconds=args.membership_unknown_after_seconds),
        exclusion=ExclusionSettings(
            mode=args.server_side_exclusion, max_namespaces=int(args.exclusion_max_namespaces)
        ),
        mesh=mesh,
        log_level=args.log_level,
        log_format=args.log_format,
    )
    return settings, health


def _istiod_namespace(given: str | None) -> str | None:
    """The flag, else its env var, else the pod's own namespace. Given empty (flag or env var, which
    therefore counts even when empty), nothing is kept by name."""
    value = given if given is not None else os.environ.get(ENV_PREFIX + "ISTIOD_NAMESPACE")
    if value is None:
        value = os.environ.get("POD_NAMESPACE") or ""
    if value and not is_namespace_name(value):
        raise ConfigError(f"--istiod-namespace {value!r} is not a namespace name (a DNS-1123 label)")
    return value or None


def _mesh_settings(path: str | None, configmap: str | None, *, selectors_given: bool) -> MeshConfigSettings:
    if path and configmap:
        raise ConfigError("give --mesh-config or --mesh-configmap, not both")
    where: tuple[str, str] | None = None
    if configmap:
        namespace, slash, name = configmap.partition("/")
        if not slash or not namespace or not name or "/" in name:
            raise ConfigError(f"--mesh-configmap {configmap!r} is not NAMESPACE/NAME")
        where = (namespace, name)
    return MeshConfigSettings(path=path or None, configmap=where, namespace_selectors_given=selectors_given)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_env_choices(parser, args)
        if args.command == "serve":
            settings, (hhost, hport) = settings_from_args(args)
            mhost, mport = _host_port(args.metrics_listen, "--metrics-listen")
            setup_logging(settings.log_level, settings.log_format, sys.stderr)
            from discofilter.runner import run

            run(settings, health_host=hhost, health_port=hport, metrics_host=mhost, metrics_port=mport)
        elif args.command == "bench":
            from discofilter.bench.cli import run_bench

            return run_bench(args)
        elif args.command in ("simapi", "demo"):
            from discofilter.demo.cli import run_command

            return run_command(args)
        elif args.command == "analyze":
            from discofilter.analyze.cli import run_analyze

            return run_analyze(args)
    except DiscofilterError as exc:
        print(f"discofilter: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0

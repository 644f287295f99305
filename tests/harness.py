"""Starting discofilter in-process for tests, exactly as ``discofilter serve`` wires it."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from aiohttp import web

from discofilter.app import (
    Runtime,
    build_health_app,
    build_metrics_listener_app,
    build_proxy_app,
    build_runtime,
    tracker_running,
)
from discofilter.runner import check_server_settings
from discofilter.settings import ServerSettings, Settings, UpstreamSettings
from discofilter.simapi import SimSettings, Store, build_app
from discofilter.tracker import NamespaceSource
from discofilter.upstream import load_upstream


def write_kubeconfig(
    path: Path,
    server: str,
    *,
    token: str | None = None,
    token_file: str | None = None,
    ca_file: str | None = None,
    client_cert: tuple[str, str] | None = None,
) -> Path:
    user: dict[str, str] = {}
    if token:
        user["token"] = token
    if token_file:
        user["tokenFile"] = token_file
    if client_cert:
        user["client-certificate"], user["client-key"] = client_cert
    cluster: dict[str, str] = {"server": server}
    if ca_file:
        cluster["certificate-authority"] = ca_file
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


LISTENING = re.compile(
    r"listening on https?://127\.0\.0\.1:(\d+) "
    r"\(health on 127\.0\.0\.1:(\d+), metrics on 127\.0\.0\.1:(\d+)\)"
)
"""The start-up line of ``discofilter serve`` (runner.py, text logs), which names the ports bound."""


def bound_ports(log_text: str) -> tuple[int, int, int] | None:
    """(proxy, health, metrics) ports a ``discofilter serve`` started on port 0 bound, once logged."""
    m = LISTENING.search(log_text)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    url: str
    health_url: str
    runtime: Runtime
    metrics_url: str = ""


@contextlib.asynccontextmanager
async def serving_simapi(store: Store, settings: SimSettings | None = None) -> AsyncIterator[str]:
    """simapi over ``store`` on a free 127.0.0.1 port for the block; yields its URL."""
    runner = web.AppRunner(
        build_app(store, settings or SimSettings()), handler_cancellation=True, shutdown_timeout=0.5
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_discofilter(
    kubeconfig: Path,
    *,
    settings: Settings | None = None,
    source: NamespaceSource | None = None,
    server_ssl: ssl.SSLContext | None = None,
    wait_ready: bool = True,
) -> AsyncIterator[Running]:
    settings = settings or Settings()
    # Port 0 everywhere: the kernel picks and the runners say which; picking a free port first and
    # binding it later races with every other test doing the same.
    server = replace(settings.server, host="127.0.0.1", port=0)
    settings = replace(
        settings, server=server, upstream=replace(settings.upstream, kubeconfig=str(kubeconfig))
    )
    check_server_settings(settings.server)
    upstream = await load_upstream(settings.upstream)
    runtime, close = await build_runtime(settings, upstream, source=source)
    runner = web.AppRunner(
        build_proxy_app(runtime), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    health = web.AppRunner(build_health_app(runtime), access_log=None)
    metrics = web.AppRunner(build_metrics_listener_app(runtime), access_log=None)
    await runner.setup()
    await health.setup()
    await metrics.setup()
    try:
        async with tracker_running(runtime):
            await web.TCPSite(runner, "127.0.0.1", server.port, ssl_context=server_ssl).start()
            await web.TCPSite(health, "127.0.0.1", 0).start()
            await web.TCPSite(metrics, "127.0.0.1", 0).start()
            port, hport, mport = (r.addresses[0][1] for r in (runner, health, metrics))
            if wait_ready:
                await runtime.tracker.ready.wait()
            scheme = "https" if server_ssl else "http"
            yield Running(
                f"{scheme}://127.0.0.1:{port}",
                f"http://127.0.0.1:{hport}",
                runtime,
                f"http://127.0.0.1:{mport}/metrics",
            )
    finally:
        await runner.cleanup()
        await health.cleanup()
        await metrics.cleanup()
        await close()


__all__ = [
    "Running",
    "ServerSettings",
    "Settings",
    "UpstreamSettings",
    "running_discofilter",
    "write_kubeconfig",
]

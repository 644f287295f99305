"""Runs discofilter: uvloop, listeners, signals, and an orderly shutdown.

Shutdown order on SIGTERM/SIGINT (``drain``):
1. Stop accepting: the listening socket closes first, so a client whose watch is ended next cannot
   reconnect to this dying process, and goes to another replica (or waits for the new pod).
2. End every open filtered watch at an event boundary: the stream just ends, as at an API server watch
   timeout, and the client re-watches from its last resourceVersion. A watch that opens on a
   keep-alive connection from now on ends at once.
3. Let in-flight requests (LISTs, pass-through calls) finish within ``shutdown_grace_seconds``:
   aiohttp's ``Server.shutdown`` waits for each connection's handler up to that bound, then cancels
   it, which drops that connection (a client sees a cut chunked body, never a complete-looking
   wrong one). Idle keep-alive connections are closed at once (``pre_shutdown``).
4. Stop the namespace tracker, close the upstream session.

(``AppRunner.shutdown()`` alone only runs ``on_shutdown`` hooks: it neither stops accepting nor waits
for anything; the listener closes and handlers are awaited in ``cleanup()``, bounded by the runner's
``shutdown_timeout``, which is why that is set to the grace period.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import signal
import ssl
import time

import uvloop
from aiohttp import web

from discofilter.app import (
    Runtime,
    build_health_app,
    build_metrics_listener_app,
    build_proxy_app,
    build_runtime,
    tracker_running,
)
from discofilter.errors import ConfigError
from discofilter.settings import ServerSettings, Settings
from discofilter.upstream import load_upstream

log = logging.getLogger("discofilter")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_server_settings(server: ServerSettings) -> None:
    """Refuse settings that would lend discofilter's credentials beyond the local host."""
    if (server.tls_cert_file is None) != (server.tls_key_file is None):
        raise ConfigError("--tls-cert-file and --tls-key-file must be given together")
    if server.upstream_credentials:
        if server.tls_cert_file is not None:
            raise ConfigError(
                "--upstream-credentials is for the plain loopback listener; "
                "with TLS, clients send their own token"
            )
        if not is_loopback(server.host):
            raise ConfigError(
                f"--upstream-credentials refused on {server.host}: it would lend discofilter's identity to "
                "anyone who can reach that address; listen on 127.0.0.1 or ::1"
            )


def _bound(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_ssl_context(server: ServerSettings) -> ssl.SSLContext | None:
    if server.tls_cert_file is None or server.tls_key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the serving certificate: {exc}") from exc
    return ctx


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one (two descriptors per open watch).
    Returns (soft, hard) as they are now; a refusal leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft, hard


async def drain(runner: web.AppRunner, runtime: Runtime, grace: float) -> None:
    """The shutdown sequence of the module docstring, steps 1 to 3."""
    started = time.monotonic()
    for site in list(runner.sites):
        await site.stop()
    ended = runtime.proxy.registry.end_all("shutdown")
    log.info(
        "shutting down: stopped accepting; ended %d open watches; waiting up to %.1f s for %d requests",
        ended,
        grace,
        runtime.proxy.in_flight - ended,
    )
    await runner.cleanup()  # waits for in-flight handlers up to the runner's shutdown_timeout
    log.info("drained in %.1f s", time.monotonic() - started)


async def serve(
    settings: Settings,
    *,
    health_host: str,
    health_port: int,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 15082,
) -> None:
    check_server_settings(settings.server)
    ssl_ctx = server_ssl_context(settings.server)
    upstream = await load_upstream(settings.upstream)
    runtime, close = await build_runtime(settings, upstream)
    proxy_runner = web.AppRunner(
        build_proxy_app(runtime),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=settings.server.shutdown_grace_seconds,
    )
    health_runner = web.AppRunner(build_health_app(runtime), access_log=None)
    metrics_runner = web.AppRunner(build_metrics_listener_app(runtime), access_log=None)
    await proxy_runner.setup()
    await health_runner.setup()
    await metrics_runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with tracker_running(runtime):
            srv = settings.server
            try:
                await web.TCPSite(proxy_runner, srv.host, srv.port, ssl_context=ssl_ctx).start()
                await web.TCPSite(health_runner, health_host, health_port).start()
                await web.TCPSite(metrics_runner, metrics_host, metrics_port).start()
            except OSError as exc:
                raise ConfigError(f"cannot listen: {exc}") from exc
            if settings.server.raise_nofile_limit:
                soft, _ = raise_nofile_limit()
                log.info("open-files limit %d: room for about %d concurrent watches", soft, soft // 2)
            scheme = "https" if ssl_ctx else "http"
            # The bound ports, not the asked ones: with port 0 the kernel picks, and the log must say which.
            bound = {
                "listen": _bound(proxy_runner),
                "health_listen": _bound(health_runner),
                "metrics_listen": _bound(metrics_runner),
            }
            log.info(
                "discofilter listening on %s://%s (health on %s, metrics on %s), upstream %s from %s, "
                "selectors %s%s",
                scheme,
                bound["listen"],
                bound["health_listen"],
                bound["metrics_listen"],
                upstream.base_url,
                upstream.source,
                runtime.mesh.describe() if runtime.mesh is not None else settings.selectors,
                ", lending its own credentials to loopback clients" if srv.upstream_credentials else "",
                extra={**bound, "upstream": upstream.base_url, "scheme": scheme},
            )
            await stop.wait()
            # Drained while the tracker still runs: in-flight filtered reads keep live membership.
            await drain(proxy_runner, runtime, settings.server.shutdown_grace_seconds)
    finally:
        if proxy_runner.server is not None:  # not drained: start-up failed or the loop was cancelled
            await proxy_runner.cleanup()
        await health_runner.cleanup()
        await metrics_runner.cleanup()
        await close()


def run(
    settings: Settings,
    *,
    health_host: str,
    health_port: int,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 15082,
) -> None:
    uvloop.run(
        serve(
            settings,
            health_host=health_host,
            health_port=health_port,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
        )
    )

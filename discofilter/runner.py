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
from pathlib import Path

import uvloop
from aiohttp import web

from discofilter import __version__
from discofilter.app import (
    Runtime,
    build_health_app,
    build_metrics_listener_app,
    build_proxy_app,
    build_runtime,
    tracker_running,
)
from discofilter.errors import ConfigError
from discofilter.gateways import gateways_checked
from discofilter.settings import ServerSettings, Settings
from discofilter.upstream import load_upstream, tls_problem

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
    for flag, path in (("--tls-cert-file", server.tls_cert_file), ("--tls-key-file", server.tls_key_file)):
        try:
            Path(path).read_bytes()  # OpenSSL's own error names no file: say which one fails
        except OSError as exc:
            raise ConfigError(f"cannot read {flag} {path}: {exc.strerror or exc}") from exc
    try:
        ctx.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the serving certificate {server.tls_cert_file} with key {server.tls_key_file}: "
            f"{tls_problem(exc)}"
        ) from exc
    return ctx


async def follow_serving_cert(ctx: ssl.SSLContext, server: ServerSettings) -> None:
    """Serve a renewed certificate to new connections without a restart; open ones keep theirs.

    Each new version of the files is loaded into a fresh context, and the listener's context hands every
    handshake to the newest one that loaded (its SNI callback, which OpenSSL calls on every ClientHello,
    SNI or not, sets the connection's context). The listener's own context is never reloaded in place: a
    ``load_cert_chain`` that fails on the key leaves the new certificate with the old key, and every
    handshake after it fails (seen with a mismatched key). A version that does not load is logged once
    and the current one stays.
    """
    assert server.tls_cert_file is not None and server.tls_key_file is not None
    paths = (server.tls_cert_file, server.tls_key_file)
    newest = ctx

    def hand_over(conn: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if newest is not ctx:
            conn.context = newest

    ctx.sni_callback = hand_over

    def read() -> bytes | None:
        try:
            return b"\0".join(Path(p).read_bytes() for p in paths)
        except OSError:
            return None

    loaded, refused = read(), None
    while True:
        await asyncio.sleep(server.tls_reload_seconds)
        now = read()
        if now is None or now in (loaded, refused):
            continue
        try:
            fresh = server_ssl_context(server)
        except ConfigError as exc:
            refused = now
            log.error("%s; keeping the current one", exc)
            continue
        assert fresh is not None
        newest, loaded, refused = fresh, now, None
        log.info("serving certificate reloaded from %s", server.tls_cert_file)


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
        async with tracker_running(runtime), gateways_checked(runtime):
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
            # Only now, once every start-up check has passed: a refused start stays one line on stderr.
            log.info(
                "discofilter %s, API server %s from %s",
                __version__,
                upstream.base_url,
                upstream.source,
                extra={"version": __version__, "upstream_source": upstream.source},
            )
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
            reload = None
            if ssl_ctx is not None:
                reload = asyncio.create_task(follow_serving_cert(ssl_ctx, srv), name="serving-cert")
            await stop.wait()
            if reload is not None:
                reload.cancel()
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

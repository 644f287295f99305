"""Upstream: where the API server is, how to trust it, and discofilter's own credentials.

The configuration is loaded by kubernetes-asyncio's own loaders (kubeconfig with contexts, CA data,
client certificates, tokens, token files and exec plugins; or the in-cluster ServiceAccount), never by
hand-written kubeconfig parsing. Which kubeconfig, and a check of it first that names the file and the
fault in one line, is ``discofilter.kubeconfig``: kubectl's order (``--kubeconfig``, ``KUBECONFIG``,
``~/.kube/config``, then in-cluster), where istiod's (istio ``pkg/kube/util.go``) lacks ``~/.kube/config``.

Two TLS contexts, one pooled session. Client certificates authenticate at the TLS layer, so a
connection that carries discofilter's client certificate *is* discofilter to the API server, whatever
bearer token rides on it. Client requests therefore go over ``client_ssl`` (server verification only,
no client certificate) unless the operator asked for ``--upstream-credentials``; discofilter's own
calls (the namespace watch) use ``own_ssl``. aiohttp keys pooled connections by SSL context, so the
two never share a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.config.incluster_config import SERVICE_HOST_ENV_NAME, load_incluster_config
from kubernetes_asyncio.config.kube_config import KubeConfigLoader, refresh_token

from discofilter.errors import ConfigError
from discofilter.kubeconfig import checked_config, choose
from discofilter.settings import UpstreamSettings

log = logging.getLogger("discofilter.upstream")


@dataclass(slots=True)
class Upstream:
    """A loaded API server configuration. ``authorization()`` gives discofilter's own credentials."""

    base_url: str
    client_ssl: ssl.SSLContext | bool
    own_ssl: ssl.SSLContext | bool
    source: str
    """Where the configuration came from, for the start-up log line."""
    _config: Any
    _loader: KubeConfigLoader | None = None
    _refresh_task: asyncio.Task[None] | None = None

    async def authorization(self) -> str | None:
        """discofilter's own Authorization header value, refreshed (token files, exec plugins)."""
        cfg = self._config
        if "BearerToken" not in cfg.api_key:
            return None
        value = await cfg.get_api_key_with_prefix("BearerToken")
        return str(value) if value else None

    def start_refresh(self) -> None:
        """Re-run exec plugins / GCP auth in the background, as kubernetes-asyncio's refresh_token does."""
        if self._loader is not None and self._refresh_task is None:
            loader = self._loader
            if loader.provider == "gcp" or (loader._user is not None and "exec" in loader._user):
                self._refresh_task = asyncio.create_task(refresh_token(loader, self._config))

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task


def _ssl_contexts(cfg: Any, source: str) -> tuple[ssl.SSLContext | bool, ssl.SSLContext | bool]:
    if not str(cfg.host).startswith("https://"):
        return False, False
    if not cfg.verify_ssl:
        log.warning("TLS verification of the API server is OFF (insecure-skip-tls-verify in the kubeconfig)")

    def make(with_client_cert: bool) -> ssl.SSLContext:
        part = "certificate-authority"
        try:
            ctx = (
                ssl.create_default_context(cafile=cfg.ssl_ca_cert)
                if cfg.ssl_ca_cert
                else ssl.create_default_context()
            )
            if not cfg.verify_ssl:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if with_client_cert and cfg.cert_file:
                part = "client-certificate and client-key"
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        except (OSError, ssl.SSLError) as exc:
            # The files may be temporary copies of *-data fields: name the kubeconfig field instead.
            raise ConfigError(f"{source}: cannot load its {part}: {tls_problem(exc)}") from exc
        return ctx

    return make(False), make(True)


def tls_problem(exc: OSError) -> str:
    """An OpenSSL or file error in words: ``ssl.SSLError`` carries its reason, ``str()`` adds codes."""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or exc.strerror or str(exc)).replace("_", " ").lower()
    return exc.strerror or str(exc)


def describe_connect_error(exc: BaseException, address: str) -> str:
    """Why a connection to ``address`` (host:port) failed, in words, without object reprs.

    aiohttp's own text names the SSL context by its repr (``ssl:<ssl.SSLContext object at 0x...>``),
    which tells a client nothing.
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        err = exc.certificate_error
        return f"TLS certificate of {address} not trusted: {getattr(err, 'verify_message', None) or err}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe_connect_error(exc.os_error, address)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate of {address} not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {address} failed: {tls_problem(exc)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{address} closed the connection"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return f"no answer from {address} in time"
    if isinstance(exc, OSError):
        words = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
        return f"cannot connect to {address}: {words.lower()}"
    return f"{address}: {type(exc).__name__}: {exc}"


async def load_upstream(settings: UpstreamSettings) -> Upstream:
    """Load the API server configuration, or raise ConfigError with a one-line reason."""
    cfg = Configuration()
    loader: KubeConfigLoader | None = None
    choice = choose(settings.kubeconfig, settings.kubeconfig_from, os.environ)
    if choice is not None:
        checked = checked_config(choice, settings.context)
        source = f"{choice.describe()}, context {checked.context}"
        try:
            loader = KubeConfigLoader(
                config_dict=checked.tree, active_context=checked.context, config_base_path=None
            )
            await loader.load_and_set(cfg)
        except ConfigException as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{source}: {type(exc).__name__}: {exc}") from exc
    elif os.environ.get(SERVICE_HOST_ENV_NAME):
        if settings.context:
            raise ConfigError("--context needs a kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config)")
        source = "in-cluster ServiceAccount"
        try:
            load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise ConfigError(f"cannot load the {source}: {exc}") from exc
    else:
        raise ConfigError(
            "no API server configured: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, or run "
            f"in a pod ({SERVICE_HOST_ENV_NAME} is unset)"
        )
    host = str(cfg.host).rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: API server address {host!r} is not an http(s) URL")
    client_ssl, own_ssl = _ssl_contexts(cfg, source)
    return Upstream(
        base_url=host, client_ssl=client_ssl, own_ssl=own_ssl, source=source, _config=cfg, _loader=loader
    )


def make_session(settings: UpstreamSettings) -> aiohttp.ClientSession:
    """The one pooled client session for every upstream call."""
    connector = aiohttp.TCPConnector(limit=settings.pool_size, limit_per_host=settings.pool_size)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout_seconds, sock_connect=settings.connect_timeout_seconds
    )
    # No cookie jar: a proxy must not carry one client's cookies to another's request.
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    )

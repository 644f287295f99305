"""Credentials over TLS, end to end: what reaches the API server, at the header and the TLS layer.

discofilter never adds privileges: on a TLS listener only the client's own token goes upstream, and
discofilter's client certificate (which would authenticate the connection as discofilter) is never
presented on a client's request.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web

from discofilter.settings import ExclusionSettings, ServerSettings, Settings
from tests import fixtures
from tests.fakes import FakeNamespaceSource
from tests.harness import running_discofilter, write_kubeconfig


class TLSUpstream:
    """An HTTPS stand-in for the API server that records each request's token and client cert."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ca = ca
        self.seen: list[tuple[str, str | None, str | None]] = []
        self.impersonate: list[str | None] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = None
        if peer:  # trustme puts the name in subjectAltName: (("DNS", name),)
            subject = peer["subjectAltName"][0][1]
        self.seen.append((request.path_qs, request.headers.get("Authorization"), subject))
        self.impersonate.append(request.headers.get("Impersonate-User"))
        if request.query.get("watch") == "1":
            # A filtered watch has its own connection (discofilter.watchconn), not aiohttp's pool.
            out = web.StreamResponse(headers={"Content-Type": "application/json"})
            await out.prepare(request)
            for line in fixtures.body("watch-pods.json").splitlines(keepends=True):
                await out.write(line)
            await out.write_eof()
            return out
        name = "list-pods.json" if request.path == "/api/v1/pods" else "list-namespaces.json"
        return web.Response(body=fixtures.body(name), content_type="application/json")

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(ctx)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # like the API server: a client cert is one way to log in
        self.ca.configure_trust(ctx)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield f"https://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


PATHS = ("/api/v1/pods", "/api/v1/pods?watch=1", "/api/v1/namespaces")
# The fake upstream checks paths as sent and answers any query alike, so server-side exclusion (which
# rewrites the filtered queries) is off here; tests/test_exclusion.py covers it against simapi.
NO_EXCLUSION = replace(Settings(), exclusion=ExclusionSettings(mode="off"))


def namespaces() -> FakeNamespaceSource:
    src = FakeNamespaceSource(rv=503)
    for item in orjson.loads(fixtures.body("list-namespaces.json"))["items"]:
        src.items[item["metadata"]["name"]] = item
    return src


@pytest.mark.parametrize("impersonate", [None, "system:admin"])
@pytest.mark.parametrize("client_token", [None, "Bearer istiod-own-token"])
async def test_tls_listener_passes_the_clients_token_and_never_discofilters(
    tmp_path: Path, client_token: str | None, impersonate: str | None
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    own = ca.issue_cert("discofilter-sa")
    own.cert_chain_pems[0].write_to_path(str(tmp_path / "own.crt"))
    own.private_key_pem.write_to_path(str(tmp_path / "own.key"))
    upstream = TLSUpstream(ca)
    serving = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.configure_cert(server_ctx)
    settings = replace(
        NO_EXCLUSION, server=ServerSettings(tls_cert_file="set-by-test", tls_key_file="set-by-test")
    )
    async with upstream.serve() as url:
        kc = write_kubeconfig(
            tmp_path / "kc",
            url,
            token="discofilter-sa-token",
            ca_file=str(ca_file),
            client_cert=(str(tmp_path / "own.crt"), str(tmp_path / "own.key")),
        )
        async with running_discofilter(
            kc, settings=settings, source=namespaces(), server_ssl=server_ctx
        ) as df:
            client_ctx = ssl.create_default_context()
            ca.configure_trust(client_ctx)
            headers = {"Authorization": client_token} if client_token else {}
            if impersonate:  # the API server's to judge, with the client's identity or none
                headers["Impersonate-User"] = impersonate
            async with aiohttp.ClientSession() as s:
                for path in PATHS:
                    async with s.get(df.url + path, ssl=client_ctx, headers=headers) as r:
                        assert r.status == 200
                        await r.read()
    assert [p for p, _, _ in upstream.seen] == list(PATHS)
    for _, token, cert in upstream.seen:
        assert token == client_token
        assert cert is None  # discofilter's client certificate never rides on a client's request
    assert upstream.impersonate == [impersonate] * len(PATHS)


async def test_loopback_lending_uses_discofilters_cert_only_for_requests_without_a_token(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    own = ca.issue_cert("discofilter-sa")
    own.cert_chain_pems[0].write_to_path(str(tmp_path / "own.crt"))
    own.private_key_pem.write_to_path(str(tmp_path / "own.key"))
    upstream = TLSUpstream(ca)
    settings = replace(NO_EXCLUSION, server=ServerSettings(upstream_credentials=True))
    async with upstream.serve() as url:
        kc = write_kubeconfig(
            tmp_path / "kc",
            url,
            ca_file=str(ca_file),
            client_cert=(str(tmp_path / "own.crt"), str(tmp_path / "own.key")),
        )
        async with (
            running_discofilter(kc, settings=settings, source=namespaces()) as df,
            aiohttp.ClientSession() as s,
        ):
            for path in ("/api/v1/namespaces", "/api/v1/pods?watch=1"):
                async with s.get(df.url + path) as r:
                    assert r.status == 200
                    await r.read()
                async with s.get(df.url + path, headers={"Authorization": "Bearer mine"}) as r:
                    assert r.status == 200
                    await r.read()
    assert [seen[1:] for seen in upstream.seen] == [
        (None, "discofilter-sa"),
        ("Bearer mine", None),
    ] * 2

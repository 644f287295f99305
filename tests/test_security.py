"""What discofilter promises about identity (README.md, "Security: the threat model"), checked at the wire.

- It never injects credentials: without ``--upstream-credentials`` a request without Authorization
  reaches the API server without one; a client's own Authorization is never replaced.
- Impersonate-* headers are the API server's to judge: forwarded unchanged with the client's own
  credentials, and never combined with discofilter's lent ones.
- No header can make discofilter drop the client's identity headers (``Connection: Authorization``).

The TLS listener's side (no token of discofilter's, no client certificate of discofilter's, with or
without Impersonate-*) is in tests/test_credentials.py; bypasses of the filter by path are in
tests/test_faults.py and tests/core/test_properties.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest

from discofilter.settings import ServerSettings, Settings
from tests.test_proxy import OWN_TOKEN, stack

ROUTES = {"/api/v1/pods": "list-pods.json", "/api/v1/nodes": "list-namespaces.json"}
IMPERSONATE = {
    "Impersonate-User": "system:admin",
    "Impersonate-Group": "system:masters",
    "Impersonate-Uid": "1234",
    "Impersonate-Extra-Scopes": "view",
}
LENDING = replace(Settings(), server=ServerSettings(upstream_credentials=True))


async def _send(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.get(url + path, headers=headers) as r:
        body = await r.read()
        return r.status, orjson.loads(body) if body.startswith(b"{") else {}


@pytest.mark.parametrize("settings", [Settings(), LENDING], ids=["plain", "lending"])
@pytest.mark.parametrize("path", ["/api/v1/nodes", "/api/v1/pods"], ids=["passthrough", "filtered"])
async def test_impersonation_with_the_clients_own_token_is_forwarded_unchanged(
    tmp_path: Path, settings: Settings, path: str
) -> None:
    headers = {"Authorization": "Bearer istiod", **IMPERSONATE}
    async with stack(tmp_path, ROUTES, settings=settings) as (df, replay, _):
        status, _ = await _send(df.url, path, headers)
    assert status == 200
    (seen,) = replay.requests
    for k, v in headers.items():
        assert seen.headers.get(k) == v, k


async def test_impersonation_without_a_token_on_a_plain_listener_stays_anonymous(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path, ROUTES) as (df, replay, _):
        status, _ = await _send(df.url, "/api/v1/nodes", IMPERSONATE)
    assert status == 200  # the replay answers anything; a real API server would say 401/403
    (seen,) = replay.requests
    assert "Authorization" not in seen.headers
    assert all(seen.headers.get(k) == v for k, v in IMPERSONATE.items())


@pytest.mark.parametrize("header", [*IMPERSONATE, "X-Remote-User", "X-Remote-Group", "x-remote-extra-a"])
@pytest.mark.parametrize("path", ["/api/v1/nodes", "/api/v1/pods", "/api/v1/pods?watch=1"])
async def test_lending_is_refused_to_identity_headers(tmp_path: Path, header: str, path: str) -> None:
    async with stack(tmp_path, ROUTES, settings=LENDING) as (df, replay, _):
        status, body = await _send(df.url, path, {header: "system:admin"})
    assert status == 403
    assert body["kind"] == "Status" and body["reason"] == "Forbidden"
    assert header in str(body["message"])
    assert replay.requests == []  # nothing reached the API server, with or without discofilter's token


async def test_lending_still_serves_requests_without_identity_headers(tmp_path: Path) -> None:
    async with stack(tmp_path, ROUTES, settings=LENDING) as (df, replay, _):
        status, _ = await _send(df.url, "/api/v1/nodes", {"Accept": "application/json"})
    assert status == 200
    assert replay.requests[0].headers["Authorization"] == f"Bearer {OWN_TOKEN}"


@pytest.mark.parametrize("settings", [Settings(), LENDING], ids=["plain", "lending"])
@pytest.mark.parametrize(
    "connection",
    ["Authorization", "keep-alive, authorization", "Impersonate-User", "close, X-Remote-User"],
)
async def test_connection_cannot_name_identity_headers(
    tmp_path: Path, settings: Settings, connection: str
) -> None:
    headers = {"Authorization": "Bearer istiod", "Impersonate-User": "a", "X-Remote-User": "b"}
    headers["Connection"] = connection
    async with stack(tmp_path, ROUTES, settings=settings) as (df, replay, _):
        status, body = await _send(df.url, "/api/v1/nodes", headers)
    assert status == 400 and body["reason"] == "BadRequest"
    assert replay.requests == []

"""The proxy end to end over real sockets, against replays of real kube-apiserver captures."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from discofilter.kubeapi import proto_error_event
from discofilter.settings import ServerSettings, Settings, WatchSettings
from tests import fixtures
from tests.core.test_protobuf import ref_bytes, ref_decode, ref_event, ref_meta, ref_str, ref_unknown
from tests.fakes import FakeNamespaceSource
from tests.harness import Running, running_discofilter, write_kubeconfig
from tests.helpers import manifest_entry
from tests.replay import Replay

MESH = frozenset(fixtures.manifest()["mesh_namespaces"])
OWN_TOKEN = "discofilter-own-token"


def namespace_source() -> FakeNamespaceSource:
    src = FakeNamespaceSource(rv=503)
    for item in orjson.loads(fixtures.body("list-namespaces.json"))["items"]:
        src.items[item["metadata"]["name"]] = item
    return src


@contextlib.asynccontextmanager
async def replay_server(replay: Replay) -> AsyncIterator[str]:
    runner = web.AppRunner(replay.app(), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path,
    routes: dict[str, str],
    *,
    settings: Settings | None = None,
    source: FakeNamespaceSource | None = None,
    wait_ready: bool = True,
    hold_open: asyncio.Event | None = None,
) -> AsyncIterator[tuple[Running, Replay, FakeNamespaceSource]]:
    replay = Replay(routes=routes, hold_open=hold_open)
    src = source or namespace_source()
    # Replays of captures answer whatever the query says, so server-side exclusion (and the bookmarks
    # it asks for) would be ignored by them: these tests check client-side filtering byte for byte.
    # tests/test_exclusion.py covers exclusion against simapi, which honours field selectors.
    settings = settings or Settings()
    settings = replace(settings, exclusion=replace(settings.exclusion, mode="off"))
    async with replay_server(replay) as url:
        kc = write_kubeconfig(tmp_path / "kubeconfig", url, token=OWN_TOKEN)
        async with running_discofilter(kc, settings=settings, source=src, wait_ready=wait_ready) as running:
            yield running, replay, src


async def get(url: str, *, raw: bool = False, **kw: object) -> tuple[int, dict[str, str], bytes]:
    """GET with aiohttp; the body is gunzipped unless ``raw`` (then it is exactly what came)."""
    # encoded=True: send the path and query exactly as written, as client-go does.
    async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(URL(url, encoded=True), **kw) as r:  # type: ignore[arg-type]
        body = await r.read()
        if not raw and r.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return r.status, dict(r.headers), body


async def test_list_keeps_only_mesh_pods_and_forces_json_when_asked(tmp_path: Path) -> None:
    settings = replace(Settings(), watch=WatchSettings(wire_format="json"))
    async with stack(tmp_path, {"/api/v1/pods": "list-pods.json"}, settings=settings) as (df, replay, _):
        status, headers, body = await get(
            df.url + "/api/v1/pods?limit=500",
            headers={"Accept": "application/vnd.kubernetes.protobuf,application/json"},
        )
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert "Audit-Id" in headers
    doc = orjson.loads(body)
    assert {i["metadata"]["namespace"] for i in doc["items"]} == MESH
    assert len(doc["items"]) == 9
    assert doc["metadata"]["resourceVersion"] == "503"
    sent = replay.requests[-1]
    assert sent.raw_path == "/api/v1/pods?limit=500"
    assert sent.headers["Accept"] == "application/json"


async def test_gzip_list_from_upstream_is_decoded_and_filtered(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods": "list-pods.json.gz"}) as (df, replay, _):
        status, headers, body = await get(df.url + "/api/v1/pods", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"  # the filtered body is still over 128 KiB
    assert len(orjson.loads(body)["items"]) == 9
    assert replay.requests[-1].headers["Accept-Encoding"] == "gzip"


async def test_per_namespace_list_outside_the_mesh_is_empty(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/namespaces/plain-1/pods": "list-pods.json"}) as (df, _, _):
        status, _, body = await get(df.url + "/api/v1/namespaces/plain-1/pods")
    assert status == 200
    doc = orjson.loads(body)
    assert doc["items"] == []
    assert doc["metadata"]["resourceVersion"] == "503"


async def test_table_list_is_filtered_by_row(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods": "list-pods-table.json"}) as (df, replay, _):
        accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        status, _, body = await get(df.url + "/api/v1/pods", headers={"Accept": accept})
    assert status == 200
    rows = orjson.loads(body)["rows"]
    assert {r["object"]["metadata"]["namespace"] for r in rows} == MESH
    assert replay.requests[-1].headers["Accept"] == accept  # JSON ranges only: forwarded as sent


async def test_watch_forwards_exactly_the_mesh_event_bytes(tmp_path: Path) -> None:
    query = (
        "?watch=1&allowWatchBookmarks=true&timeoutSeconds=75&resourceVersion=0"
        "&fieldSelector=status.phase%21%3DFailed"
    )
    async with stack(tmp_path, {"/api/v1/pods": "watch-pods.json"}) as (df, replay, _):
        status, headers, body = await get(df.url + "/api/v1/pods" + query)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert replay.requests[-1].raw_path == "/api/v1/pods" + query
    expected = [
        line
        for line in fixtures.body("watch-pods.json").splitlines(keepends=True)
        if (ev := orjson.loads(line))["type"] == "BOOKMARK" or ev["object"]["metadata"]["namespace"] in MESH
    ]
    assert body == b"".join(expected)


async def test_streaming_list_end_bookmark_reaches_the_client(tmp_path: Path) -> None:
    q = "?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    async with stack(tmp_path, {"/api/v1/pods": "watchlist-pods.json"}) as (df, _, _):
        _, _, body = await get(df.url + "/api/v1/pods" + q)
    events = [orjson.loads(line) for line in body.splitlines()]
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert {e["object"]["metadata"]["namespace"] for e in events[:-1]} <= MESH


async def test_watch_headers_go_out_before_any_event(tmp_path: Path) -> None:
    hold = asyncio.Event()
    async with stack(tmp_path, {"/api/v1/pods": "watch-pods-no-bookmark-at-head.json"}, hold_open=hold) as (
        df,
        _,
        _,
    ):
        async with aiohttp.ClientSession() as s:
            r = await asyncio.wait_for(s.get(df.url + "/api/v1/pods?watch=1"), 5)
            assert r.status == 200
            assert len(df.runtime.proxy.registry.watches) == 1
            r.close()
        # The client went away: discofilter releases the upstream and forgets the watch.
        for _ in range(100):
            if not df.runtime.proxy.registry.watches:
                break
            await asyncio.sleep(0.02)
        assert not df.runtime.proxy.registry.watches
        hold.set()


async def test_membership_change_ends_open_watches_with_410(tmp_path: Path) -> None:
    hold = asyncio.Event()
    async with stack(tmp_path, {"/api/v1/pods": "watch-pods.json"}, hold_open=hold) as (df, _, src):
        async with (
            aiohttp.ClientSession() as s,
            s.get(df.url + "/api/v1/pods?watch=1&resourceVersion=0") as r,
        ):
            got = b""
            while got.count(b"\n") < 12:  # the whole capture's mesh events and bookmarks
                got += await asyncio.wait_for(r.content.readany(), 5)
            src.modify("plain-1", **{"istio-injection": "enabled"})
            rest = await asyncio.wait_for(r.content.read(), 5)
        hold.set()
    last = orjson.loads(rest.splitlines()[-1])
    assert last["type"] == "ERROR"
    assert last["object"]["code"] == 410
    assert last["object"]["reason"] == "Expired"


async def test_resume_from_before_a_change_gets_410_and_after_a_relist_works(tmp_path: Path) -> None:
    async with stack(
        tmp_path,
        {
            "/api/v1/pods": "list-pods.json",
            "/api/v1/pods?watch": "watch-pods.json",
            "/api/v1/namespaces/mesh-a/pods": "watch-pods.json",
        },
    ) as (df, replay, src):
        _, _, body = await get(df.url + "/api/v1/pods")
        rv = orjson.loads(body)["metadata"]["resourceVersion"]
        src.modify("plain-2", **{"istio.io/rev": "canary"})
        await asyncio.sleep(0.1)
        _, _, body = await get(df.url + f"/api/v1/pods?watch=1&resourceVersion={rv}")
        ev = orjson.loads(body)
        assert (ev["type"], ev["object"]["code"]) == ("ERROR", 410)
        n = len(replay.requests)
        # A per-namespace watch of a namespace that did not change is not affected.
        _, _, body = await get(df.url + f"/api/v1/namespaces/mesh-a/pods?watch=1&resourceVersion={rv}")
        assert len(replay.requests) == n + 1
        # After a relist under the new membership, the same resume works.
        _, _, body = await get(df.url + "/api/v1/pods")
        assert "plain-2" in {i["metadata"]["namespace"] for i in orjson.loads(body)["items"]}
        status, _, body = await get(df.url + f"/api/v1/pods?watch=1&resourceVersion={rv}")
        assert status == 200
        assert orjson.loads(body.splitlines()[0])["type"] != "ERROR"


async def test_unknown_resume_point_older_than_startup_relists(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods": "watch-pods.json"}) as (df, replay, _):
        _, _, body = await get(df.url + "/api/v1/pods?watch=1&resourceVersion=400")
        assert orjson.loads(body)["object"]["code"] == 410
        assert replay.requests == []
        status, _, body = await get(df.url + "/api/v1/pods?watch=1&resourceVersion=503")
        assert status == 200 and len(replay.requests) == 1


async def test_fail_closed_until_membership_is_known(tmp_path: Path) -> None:
    src = namespace_source()
    src.fail_next = [OSError("api server down")] * 50
    async with stack(
        tmp_path,
        {"/api/v1/pods": "list-pods.json", "/version": "list-namespaces.json"},
        source=src,
        wait_ready=False,
    ) as (
        df,
        replay,
        _,
    ):
        status, headers, body = await get(df.url + "/api/v1/pods")
        assert status == 503
        assert headers["Retry-After"] == "1"
        st = orjson.loads(body)
        assert (st["kind"], st["code"], st["reason"]) == ("Status", 503, "ServiceUnavailable")
        status, _, _ = await get(df.url + "/api/v1/pods?watch=1")
        assert status == 503
        assert (await get(df.health_url + "/readyz"))[0] == 503
        assert (await get(df.health_url + "/healthz"))[0] == 200
        # Pass-through does not depend on membership.
        assert (await get(df.url + "/version"))[0] == 200
        assert all(r.raw_path == "/version" for r in replay.requests)


async def test_passthrough_is_byte_exact_including_gzip_and_errors(tmp_path: Path) -> None:
    routes = {
        "/api/v1/namespaces": "list-namespaces.json",
        "/api/v1/configmaps": "list-pods.json.gz",
        "/api/v1/namespaces/mesh-a/pods/no-such-pod": "error-404-pod.json",
    }
    async with stack(tmp_path, routes) as (df, replay, _):
        for path, name in routes.items():
            status, headers, body = await get(df.url + path, raw=True, headers={"Accept-Encoding": "gzip"})
            want_status, want_headers = fixtures.headers(name)
            assert status == want_status
            assert body == fixtures.body(name)
            wh = dict(want_headers)
            assert headers.get("Content-Encoding") == wh.get("Content-Encoding")
            assert headers["Audit-Id"] == wh["Audit-Id"]
        status, _, _ = await get(df.url + "/api/v1/pods", headers={"Accept-Encoding": "gzip"})
        async with aiohttp.ClientSession() as s:
            async with s.post(
                df.url + "/api/v1/namespaces/x/configmaps?fieldManager=t",
                data=b'{"a":1}',
                headers={"Content-Type": "application/json"},
            ) as r:
                await r.read()
            async with s.delete(df.url + "/api/v1/namespaces/x/pods/p") as r:
                await r.read()
    post = replay.requests[-2]
    assert (post.method, post.raw_path, post.body, post.headers["Content-Type"]) == (
        "POST",
        "/api/v1/namespaces/x/configmaps?fieldManager=t",
        b'{"a":1}',
        "application/json",
    )
    assert replay.requests[-1].method == "DELETE"


async def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """A GET written by hand, so no client library can clean the path first."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_path_tricks_are_refused(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods": "list-pods.json"}) as (df, replay, _):
        for path in (
            "/api/v1/namespaces/x/../../pods",
            "/api/v1/%70ods",
            "/api/v1//pods",
            "/api/v1/namespaces/x/%2E%2E/%2E%2E/pods?watch=1",
        ):
            status, body = await raw_get(df.url, path)
            assert status == 400, path
            assert b'"kind":"Status"' in body
    assert replay.requests == []


async def test_malformed_upstream_stream_ends_with_an_error_event(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods": "list-pods.json"}) as (df, _, _):
        # A LIST body where a watch stream is expected: not one well-formed event.
        status, _, body = await get(df.url + "/api/v1/pods?watch=1")
        assert df.runtime.proxy.malformed_streams == 1
    assert status == 200
    ev = orjson.loads(body.splitlines()[-1])
    assert ev["type"] == "ERROR" and ev["object"]["code"] == 500


# -- credentials -------------------------------------------------------------------------------------


async def _auth_seen(tmp_path: Path, settings: Settings, client_auth: str | None) -> str | None:
    headers = {"Authorization": client_auth} if client_auth else {}
    async with stack(
        tmp_path,
        {"/api/v1/pods": "list-pods.json", "/api/v1/nodes": "list-namespaces.json"},
        settings=settings,
    ) as (
        df,
        replay,
        _,
    ):
        await get(df.url + "/api/v1/nodes", headers=headers)
        await get(df.url + "/api/v1/pods", headers=headers)
    seen = {r.headers.get("Authorization") for r in replay.requests}
    assert len(seen) == 1
    return seen.pop()


@pytest.mark.parametrize("client_auth", [None, "Bearer istiod-token"])
async def test_plain_listener_forwards_only_what_the_client_sent(
    tmp_path: Path, client_auth: str | None
) -> None:
    assert await _auth_seen(tmp_path, Settings(), client_auth) == client_auth


@pytest.mark.parametrize(
    ("client_auth", "expected"), [(None, f"Bearer {OWN_TOKEN}"), ("Bearer mine", "Bearer mine")]
)
async def test_upstream_credentials_on_loopback(
    tmp_path: Path, client_auth: str | None, expected: str
) -> None:
    settings = replace(Settings(), server=ServerSettings(upstream_credentials=True))
    assert await _auth_seen(tmp_path, settings, client_auth) == expected


def test_upstream_credentials_refused_off_loopback() -> None:
    from discofilter.errors import ConfigError
    from discofilter.runner import check_server_settings

    for host in ("0.0.0.0", "10.0.0.1", "::", "example.com"):
        with pytest.raises(ConfigError, match="refused"):
            check_server_settings(ServerSettings(host=host, upstream_credentials=True))
    with pytest.raises(ConfigError):
        check_server_settings(ServerSettings(upstream_credentials=True, tls_cert_file="c", tls_key_file="k"))
    check_server_settings(ServerSettings(host="::1", upstream_credentials=True))


# -- protobuf, natively -------------------------------------------------------------------------------

ISTIOD_ACCEPT = "application/vnd.kubernetes.protobuf,application/json"


def pb_frames(body: bytes) -> list[bytes]:
    frames, pos = [], 0
    while pos < len(body):
        n = int.from_bytes(body[pos : pos + 4], "big")
        frames.append(body[pos : pos + 4 + n])
        pos += 4 + n
    assert pos == len(body)
    return frames


async def test_protobuf_list_is_filtered_natively(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods": "list-pods.pb"}) as (df, replay, _):
        status, headers, body = await get(df.url + "/api/v1/pods", headers={"Accept": ISTIOD_ACCEPT})
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.kubernetes.protobuf"
    assert replay.requests[-1].headers["Accept"] == ISTIOD_ACCEPT  # istiod's preference reached the server
    _, type_meta, lst = ref_unknown(body)
    assert ref_str(type_meta, 2) == "PodList"
    items = [ref_decode(raw) for raw in lst[2] if isinstance(raw, bytes)]
    assert sorted(ref_str(ref_meta(i), 3) for i in items) == sorted(["mesh-a", "mesh-b", "mesh-rev"] * 3)


async def test_protobuf_watch_forwards_the_mesh_frames_untouched(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods": "watch-pods.pb"}) as (df, _, _):
        status, headers, body = await get(df.url + "/api/v1/pods?watch=1", headers={"Accept": ISTIOD_ACCEPT})
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.kubernetes.protobuf;stream=watch"
    events = [ref_event(f) for f in pb_frames(body)]
    # The same decision as the JSON capture of the same events: by the manifest's counts.
    by_ns = manifest_entry("watch-pods.pb")["watch"]["by_namespace"]  # type: ignore[index]
    assert len(events) == sum(sum(t.values()) for ns, t in by_ns.items() if ns in MESH or ns == "")
    assert {ns for _, _, ns, _, _ in events} == {"mesh-a", "mesh-b", "mesh-rev", ""}
    original = fixtures.body("watch-pods.pb")
    assert all(f in original for f in pb_frames(body))


async def test_protobuf_client_resuming_after_a_change_gets_a_protobuf_410(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods": "watch-pods.pb"}) as (df, replay, _):
        _, headers, body = await get(
            df.url + "/api/v1/pods?watch=1&resourceVersion=400", headers={"Accept": ISTIOD_ACCEPT}
        )
    assert headers["Content-Type"] == "application/vnd.kubernetes.protobuf;stream=watch"
    assert ref_event(body)[0] == "ERROR" and ref_event(body)[4] == "410"
    assert body == proto_error_event(410, "Expired", ref_event_message(body))
    assert replay.requests == []


def ref_event_message(frame: bytes) -> str:
    raw = ref_bytes(ref_decode(ref_bytes(ref_decode(frame[4:]), 2)), 1)
    _, _, status = ref_unknown(raw)
    return ref_str(status, 3)


async def test_membership_change_ends_a_protobuf_watch_with_a_protobuf_410(tmp_path: Path) -> None:
    hold = asyncio.Event()
    async with stack(tmp_path, {"/api/v1/pods": "watch-pods.pb"}, hold_open=hold) as (df, _, src):
        headers = {"Accept": ISTIOD_ACCEPT}
        async with aiohttp.ClientSession() as s, s.get(df.url + "/api/v1/pods?watch=1", headers=headers) as r:
            got = b""
            while len(pb_frames_partial(got)) < 15:
                got += await asyncio.wait_for(r.content.readany(), 5)
            src.modify("plain-1", **{"istio-injection": "enabled"})
            got += await asyncio.wait_for(r.content.read(), 5)
        hold.set()
    last = pb_frames(got)[-1]
    assert ref_event(last)[0] == "ERROR" and ref_event(last)[4] == "410"


def pb_frames_partial(body: bytes) -> list[bytes]:
    frames, pos = [], 0
    while pos + 4 <= len(body):
        n = int.from_bytes(body[pos : pos + 4], "big")
        if pos + 4 + n > len(body):
            break
        frames.append(body[pos : pos + 4 + n])
        pos += 4 + n
    return frames


async def test_a_filtered_watch_asks_for_an_uncompressed_stream_on_its_own_connection(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods?watch": "watch-pods.json"}) as (df, replay, _):
        status, _, body = await get(
            df.url + "/api/v1/pods?watch=1&resourceVersion=0",
            headers={"Accept-Encoding": "gzip", "Authorization": "Bearer istiod"},
        )
    assert status == 200
    events = [orjson.loads(line) for line in body.splitlines()]
    assert events
    assert {e["object"]["metadata"]["namespace"] for e in events if e["type"] != "BOOKMARK"} <= MESH
    sent = replay.requests[-1]
    assert sent.headers["Accept-Encoding"] == "identity"  # the stream is filtered: it must come plain
    assert sent.headers["Connection"] == "close"  # a watch connection is never reused
    assert sent.headers["Authorization"] == "Bearer istiod"  # the client's own, unchanged


async def test_a_compressed_watch_answer_is_refused_never_forwarded(tmp_path: Path) -> None:
    async with stack(tmp_path, {"/api/v1/pods?watch": "list-pods.json.gz"}) as (df, _, _):
        status, _, body = await get(df.url + "/api/v1/pods?watch=1&resourceVersion=0")
    assert status == 502
    assert b"Content-Encoding 'gzip'" in body

"""WatchConnection over real loopback sockets: the request it sends, backpressure, ends and cuts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from yarl import URL

from discofilter.errors import StreamFramingError, UpstreamError
from discofilter.watchconn import UpstreamClosed, WatchConnection, request_bytes

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_the_request_goes_under_the_base_path_with_the_clients_headers() -> None:
    raw = request_bytes(
        "GET",
        URL("https://[fd00::1]:6443/k8s/clusters/c-1/"),
        "/api/v1/pods?watch=1&labelSelector=a%3Db",
        {"Authorization": "Bearer t", "Accept": "application/json", "Accept-Encoding": "gzip", "Host": "x"},
    )
    assert raw == (
        b"GET /k8s/clusters/c-1/api/v1/pods?watch=1&labelSelector=a%3Db HTTP/1.1\r\n"
        b"Host: [fd00::1]:6443\r\nAuthorization: Bearer t\r\nAccept: application/json\r\n"
        b"Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
    )
    assert request_bytes("GET", URL("https://api.example:443"), "/api/v1/pods", {}).startswith(
        b"GET /api/v1/pods HTTP/1.1\r\nHost: api.example\r\n"
    )


@pytest.mark.parametrize("bad", ["a\r\nX-Injected: 1", "a\nb", "a\0b"])
def test_control_characters_never_reach_the_wire(bad: str) -> None:
    with pytest.raises(UpstreamError, match="control character"):
        request_bytes("GET", URL("http://127.0.0.1:1"), "/api/v1/pods", {"Authorization": bad})


@asynccontextmanager
async def server(handler: Callable[..., object]) -> AsyncIterator[URL]:
    """A loopback server running ``handler`` per connection; every connection is closed at the end."""
    tasks: list[asyncio.Task[object]] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)  # type: ignore[misc]
        finally:
            writer.transport.abort()

    srv = await asyncio.start_server(run, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield URL(f"http://127.0.0.1:{port}")
    finally:
        srv.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def open_conn(url: URL, max_pending: int = 64 * 1024) -> WatchConnection:
    req = request_bytes("GET", url, "/api/v1/pods?watch=1", {})
    return await WatchConnection.open(url, req, False, connect_timeout=5, max_pending=max_pending)


def body(buf: bytes, spans: list[int]) -> bytes:
    """A sink that keeps the whole body of each read."""
    return b"".join(buf[a:b] for a, b in zip(spans[::2], spans[1::2], strict=True))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_a_stalled_reader_stops_reading_the_socket_and_loses_nothing() -> None:
    # ~24 MB: more than loopback TCP buffers hold (autotuned up to ~6 MB each way)
    events = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 8000) for i in range(3000)]
    blocked = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        for e in events:
            writer.write(chunk(e))
            try:
                await asyncio.wait_for(writer.drain(), 0.3)
            except TimeoutError:
                blocked.set()  # the client stopped taking bytes: its socket is not being read
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with server(handler) as url:
        conn = await open_conn(url)
        head = await conn.head()
        assert head.status == 200
        conn.attach(body)
        await asyncio.wait_for(blocked.wait(), 10)  # nothing read by the relay: the socket is not read
        got = []
        while data := await conn.read():
            got.append(data)
        assert b"".join(got) == b"".join(events)


async def test_kept_bytes_before_a_cut_are_handed_on_then_the_cut_is_raised() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + chunk(b'{"a":1}\n') + b"40\r\n" + b"partial")
        await writer.drain()
        writer.close()

    async with server(handler) as url:
        conn = await open_conn(url)
        await conn.head()
        conn.attach(lambda buf, spans: body(buf, spans).partition(b"\n")[0] + b"\n")
        assert await conn.read() == b'{"a":1}\n'
        with pytest.raises(UpstreamClosed, match="inside the body"):
            await conn.read()


async def test_malformed_framing_is_raised_to_the_relay() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + chunk(b'{"a":1}\n'))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"zz\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with server(handler) as url:
        conn = await open_conn(url)
        await conn.head()
        conn.attach(body)
        assert await conn.read() == b'{"a":1}\n'
        with pytest.raises(StreamFramingError, match="chunk-size"):
            await asyncio.wait_for(conn.read(), 5)


async def test_end_wakes_a_waiting_head_and_a_waiting_read() -> None:
    answered = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await answered.wait()
        writer.write(HEAD)
        await writer.drain()
        await asyncio.sleep(5)

    async with server(handler) as url:
        conn = await open_conn(url)
        waiting = asyncio.create_task(conn.head())
        await asyncio.sleep(0.05)
        conn.end()
        with pytest.raises(UpstreamClosed, match="ended by discofilter"):
            await asyncio.wait_for(waiting, 5)
        answered.set()
        conn = await open_conn(url)
        await conn.head()
        conn.attach(body)
        reading = asyncio.create_task(conn.read())
        await asyncio.sleep(0.05)
        conn.end()
        assert await asyncio.wait_for(reading, 5) == b""


async def test_an_unreachable_server_fails_within_the_connect_timeout() -> None:
    async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass

    async with server(nothing) as url:
        pass  # closed: nothing listens there now
    with pytest.raises(OSError):
        await open_conn(url)

"""core.http1.ResponseReader against the wire bytes of real API server answers, fed split every way.

The wire is rebuilt from the captures: the status line and headers exactly as curl wrote them, then the
body in the captured chunk sizes (``*.reads.json``), or as is with its Content-Length. The expected body is
the capture's own de-chunked body, never something this reader produced.
"""

from __future__ import annotations

import pytest

from discofilter.core.http1 import MAX_HEAD_BYTES, ResponseReader
from discofilter.errors import StreamFramingError
from tests import fixtures
from tests.helpers import fixture_names, reads, splits

STREAMS = [
    n
    for n in fixture_names(kind=("watch", "watchlist"), suffix="")
    if (fixtures.FIXTURES / (n + ".reads.json")).is_file()
]
ERRORS = fixture_names(kind="error")


def chunked(sizes: list[int], body: bytes, *, ext: bytes = b"") -> bytes:
    out, pos = [], 0
    for size in sizes:
        out.append(b"%x%s\r\n%s\r\n" % (size, ext, body[pos : pos + size]))
        pos += size
    assert pos == len(body)
    return b"".join(out) + b"0\r\n\r\n"


def wire(name: str) -> bytes:
    head = (fixtures.FIXTURES / (name + ".headers.txt")).read_bytes()
    body = fixtures.body(name)
    if b"transfer-encoding: chunked" in head.lower():
        return head + chunked(reads(name)["chunk_sizes"], body)
    return head + body


def read_all(pieces: list[bytes], *, eof: bool = True) -> tuple[ResponseReader, bytes]:
    r = ResponseReader()
    out = [r.feed(p) for p in pieces]
    if eof:
        r.feed_eof()
    return r, b"".join(out)


def test_there_are_chunked_captures_and_error_answers() -> None:
    assert len(STREAMS) >= 8
    assert len(ERRORS) >= 10


@pytest.mark.parametrize("name", STREAMS)
def test_real_chunked_streams_give_back_the_captured_body(name: str) -> None:
    data = wire(name)
    status, headers = fixtures.headers(name)
    for split, pieces in splits(data):
        if split == "bytewise" and len(data) > 200_000:
            continue
        r, body = read_all(pieces)
        assert body == fixtures.body(name), split
        assert r.done and r.head is not None
        assert r.head.status == status
        assert list(r.head.headers.items()) == headers


@pytest.mark.parametrize("name", ERRORS)
def test_real_error_answers_with_content_length(name: str) -> None:
    status, headers = fixtures.headers(name)
    for split, pieces in splits(wire(name)):
        r, body = read_all(pieces, eof=False)  # Content-Length ends the body: no close needed
        assert r.done, split
        assert body == fixtures.body(name)
        assert r.head is not None and r.head.status == status
        assert list(r.head.headers.items()) == headers


def test_one_read_per_chunk_hands_the_payload_on() -> None:
    r = ResponseReader()
    assert r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") == b""
    event = b'{"type":"ADDED"}\n'
    assert r.feed(b"%x\r\n%s\r\n" % (len(event), event)) == event
    assert r.feed(b"3;name=value\r\nabc\r\n0\r\nTrailer: x\r\n\r\n") == b"abc"
    assert r.done


def test_a_long_chunk_in_many_reads() -> None:
    payload = bytes(range(256)) * 400
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked([len(payload)], payload)
    for _, pieces in splits(data):
        assert read_all(pieces)[1] == payload


def test_informational_heads_are_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    r, body = read_all([data], eof=False)
    assert r.head is not None and r.head.status == 200 and body == b"ok"


def test_close_delimited_body_ends_at_eof() -> None:
    r = ResponseReader()
    assert r.feed(b"HTTP/1.0 200 OK\r\n\r\nabc") == b"abc"
    assert not r.done
    r.feed_eof()
    assert r.done


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "inside the body"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "inside the body"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: x", "inside the response head"),
    ],
)
def test_a_cut_connection_is_an_error(data: bytes, match: str) -> None:
    r = ResponseReader()
    r.feed(data)
    with pytest.raises(StreamFramingError, match=match):
        r.feed_eof()


TE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
        (b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nX: y\r\n folded\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc", "after the end"),
        (TE + b"0x5\r\nabcde\r\n", "chunk-size"),
        (TE + b"+5\r\nabcde\r\n", "chunk-size"),
        (TE + b"5 5\r\nabcde\r\n", "chunk-size"),
        (TE + b"z\r\n", "chunk-size"),
        (TE + b"12345678901234567\r\n", "chunk-size"),
        (TE + b"3\r\nabcX\r\n", "not followed by CRLF"),
        (TE + b"3\r\nabc\rX", "not followed by CRLF"),
        (TE + b"0\r\n\r\nmore", "after the end"),
    ],
)
def test_malformed_answers_are_refused_however_split(data: bytes, match: str) -> None:
    for _, pieces in splits(data):
        r = ResponseReader()
        with pytest.raises(StreamFramingError, match=match):
            for p in pieces:
                r.feed(p)
            r.feed_eof()


def test_nothing_is_buffered_without_bound() -> None:
    r = ResponseReader()
    with pytest.raises(StreamFramingError, match="head exceeds"):
        r.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES)
    r = ResponseReader()
    r.feed(TE)
    with pytest.raises(StreamFramingError, match="chunk-size"):
        r.feed(b"5;" + b"e" * MAX_HEAD_BYTES)
    r = ResponseReader()
    r.feed(TE + b"0\r\n")
    with pytest.raises(StreamFramingError, match="trailers exceed"):
        r.feed(b"T: " + b"t" * MAX_HEAD_BYTES)

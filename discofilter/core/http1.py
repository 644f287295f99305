"""ResponseReader: the client side of one HTTP/1.1 response, sans I/O (head, then body, de-chunked).

Why discofilter reads filtered watches with its own reader rather than aiohttp's: the API server
flushes one HTTP chunk per watch event, and aiohttp's client hands each chunk to its StreamReader with
Python-level bookkeeping (feed_data, end_http_chunk_receiving, pause/resume of the transport), then wakes
the relay task for every read. ``bench/receive_path.py`` measured that receive path alone at 5-7 µs per
event, more than the filter. Here ``feed`` turns one socket read into one bytes of body, and the relay
runs the filter in the same callback, so a dropped event never wakes a task.

Scope, on purpose small (h11 is the model, without its per-event objects):
- responses only, to a request that is not HEAD or CONNECT;
- ``Transfer-Encoding: chunked``, ``Content-Length``, or a body delimited by the connection's close;
- 1xx informational heads are skipped (RFC 9110 §15.2), 101 is refused (no upgrades here);
- chunk extensions are ignored and trailers read and dropped, as Go's client does;
- limits: the head, a chunk-size line and the trailers are each bounded (``MAX_HEAD_BYTES``), so a
  peer cannot make this buffer without end.

Malformed input raises ``StreamFramingError``; nothing after it is trusted.
"""

from __future__ import annotations

import re
from typing import Final

from multidict import CIMultiDict

from discofilter.errors import StreamFramingError

MAX_HEAD_BYTES: Final = 64 * 1024
"""A response head, one chunk-size line, and the trailers, each. h11 allows 16 KiB of head; the API
server's heads are well under 1 KiB, but a front proxy may add headers (Go's own client allows 1 MiB)."""

_HEAD, _SIZE, _DATA, _DATA_END, _TRAILER, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)
# A chunk-size line: hex digits (at most 16: a 64-bit size, as Go's parser allows), then optional
# extensions (ignored, as Go does), then CRLF. int(x, 16) alone would also take "0x", "_", signs and
# spaces, which HTTP does not.
_SIZE_LINE: Final = re.compile(rb"([0-9a-fA-F]{1,16})(?:[ \t]*;[^\r\n]*)?\r\n")
# What an incomplete size line may look like while its CRLF is still to come.
_SIZE_PREFIX: Final = re.compile(rb"[0-9a-fA-F]{0,16}(?:[ \t]*(?:;[^\r\n]*)?)?\r?\Z")


def join_spans(buf: bytes, spans: list[int]) -> bytes:
    """The bytes of ``buf[spans[0]:spans[1]]``, ``buf[spans[2]:spans[3]]``... as one bytes: ``buf`` itself
    when one span covers it, else one copy."""
    if len(spans) == 2 and spans[0] == 0 and spans[1] == len(buf):
        return buf
    view = memoryview(buf)
    return b"".join([view[spans[i] : spans[i + 1]] for i in range(0, len(spans), 2)])


class ResponseHead:
    __slots__ = ("headers", "reason", "status", "version")

    def __init__(self, version: str, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers


def parse_head(block: bytes) -> ResponseHead:
    """Parse a status line and header fields (``block`` without its final empty line)."""
    text = block.decode("latin-1")  # RFC 9110 §5.5: field values are octets; latin-1 keeps each one
    lines = text.split("\r\n")
    status_line = lines[0]
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise StreamFramingError(f"not an HTTP/1.x status line: {status_line[:100]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or line[0] in " \t":
            # A space before the colon, or a folded line (obs-fold), is a smuggling vector: refused,
            # as h11 and Go do.
            raise StreamFramingError(f"malformed response header line: {line[:100]!r}")
        headers.add(name, value.strip(" \t"))
    return ResponseHead(version, int(code), reason, headers)


class ResponseReader:
    """Feed the bytes of one connection; get the response head once, then the body, one bytes per read.

    ``feed(data)`` returns the body bytes that ``data`` completed (b"" if none). Until the head is
    complete it returns b"" and ``head`` is None. ``done`` turns true at the end of the body; bytes
    after it are an error (this reader is for one response per connection). ``feed_eof()`` says the
    connection closed: it ends a close-delimited body and raises if the body was cut short.
    """

    __slots__ = ("_buf", "_need", "_state", "head")

    def __init__(self) -> None:
        self._state = _HEAD
        self._buf = b""  # an incomplete head, chunk-size line or trailer section
        self._need = 0  # body bytes still to come: of this chunk (_DATA) or of the whole body (_LENGTH)
        self.head: ResponseHead | None = None

    @property
    def done(self) -> bool:
        """The body has ended."""
        return self._state == _DONE

    def feed(self, data: bytes) -> bytes:
        """The body bytes ``data`` completes, as one bytes (one copy when the read held chunk framing)."""
        return join_spans(*self.feed_spans(data))

    def feed_spans(self, data: bytes) -> tuple[bytes, list[int]]:
        """The body bytes ``data`` completes, not copied: a buffer and the ``[start, end, start, end...]``
        offsets of the body in it (the chunk payloads between chunk framing). The buffer is ``data``
        itself unless an incomplete size line was held from the last read. The watch relay filters
        the spans in place, so a dropped event is never copied at all."""
        state = self._state
        n = len(data)
        if state == _DATA and n < self._need:
            self._need -= n  # the middle of a long chunk: passed on as it came
            return data, [0, n] if n else []
        if state == _UNTIL_CLOSE:
            return data, [0, n] if n else []
        if state == _LENGTH:
            return self._feed_length(data)
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if state == _HEAD:
            data = self._feed_head(data)
            if self._state == _LENGTH:
                return self._feed_length(data)
            if self._state == _UNTIL_CLOSE:
                return data, [0, len(data)] if data else []
        return data, self._feed_chunked(data)

    def feed_eof(self) -> None:
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
        elif self._state != _DONE:
            where = "response head" if self._state == _HEAD else "body"
            raise StreamFramingError(f"the API server closed the connection inside the {where}")

    # -- head -----------------------------------------------------------------------------------------

    def _feed_head(self, data: bytes) -> bytes:
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HEAD_BYTES:
                    raise StreamFramingError(f"response head exceeds {MAX_HEAD_BYTES} bytes")
                self._buf = data
                return b""
            if end > MAX_HEAD_BYTES:
                raise StreamFramingError(f"response head exceeds {MAX_HEAD_BYTES} bytes")
            head = parse_head(data[:end])
            data = data[end + 4 :]
            if 100 <= head.status < 200:
                if head.status == 101:
                    raise StreamFramingError("the API server switched protocols (101): not a watch")
                continue  # 1xx: another head follows
            break
        self.head = head
        self._start_body(head)
        return data

    def _start_body(self, head: ResponseHead) -> None:
        h = head.headers
        te = h.getall("Transfer-Encoding", [])
        cl = h.getall("Content-Length", [])
        if head.status in (204, 304):
            self._state = _DONE
        elif te:
            # RFC 9112 §6.3: chunked must be the final coding; with Content-Length too, chunked wins, but
            # that combination is a smuggling sign and Go's server never sends it: refused.
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if codings != ["chunked"] or cl:
                raise StreamFramingError(f"unsupported Transfer-Encoding {', '.join(te)!r}")
            self._state = _SIZE
        elif cl:
            values = {v.strip() for one in cl for v in one.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise StreamFramingError(f"malformed Content-Length {', '.join(cl)!r}")
            self._need = int(values.pop())
            self._state = _LENGTH
            if self._need == 0:
                self._state = _DONE
        else:
            self._state = _UNTIL_CLOSE

    # -- bodies ---------------------------------------------------------------------------------------

    def _feed_length(self, data: bytes) -> tuple[bytes, list[int]]:
        n = len(data)
        if n < self._need:
            self._need -= n
            return data, [0, n] if n else []
        extra = n - self._need
        if extra:
            raise StreamFramingError(f"{extra} bytes after the end of the response body")
        self._state = _DONE
        return data, [0, n] if n else []

    def _feed_chunked(self, data: bytes) -> list[int]:
        """The loop over chunk framing: per chunk one regular-expression match for its size line, and
        its payload's offsets."""
        spans: list[int] = []
        pos = 0
        n = len(data)
        state = self._state
        need = self._need
        size_line = _SIZE_LINE.match
        while pos < n:
            if state == _SIZE:
                m = size_line(data, pos)
                if m is None:
                    self._check_size_line(data, pos)
                    self._buf = data[pos:]
                    break
                need = int(m.group(1), 16)
                pos = m.end()
                if not need:
                    state = _TRAILER
                    continue
                state = _DATA
            if state == _DATA:
                end = pos + need
                if end > n:
                    spans += (pos, n)
                    need = end - n
                    pos = n
                    break
                spans += (pos, end)
                pos = end
                need = 0
                state = _DATA_END
            if state == _DATA_END:
                if data.startswith(b"\r\n", pos):
                    pos += 2
                    state = _SIZE
                    continue
                if n - pos < 2 and data.startswith(b"\r"[: n - pos], pos):
                    self._buf = data[pos:]
                    break
                raise StreamFramingError("HTTP chunk not followed by CRLF")
            if state == _TRAILER:
                # Trailer fields, then an empty line. Read and dropped: a watch has none.
                if data.startswith(b"\r\n", pos):
                    pos += 2
                    state = _DONE
                    continue
                tend = data.find(b"\r\n\r\n", pos)
                if tend < 0:
                    if n - pos > MAX_HEAD_BYTES:
                        raise StreamFramingError(f"HTTP trailers exceed {MAX_HEAD_BYTES} bytes")
                    self._buf = data[pos:]
                    break
                pos = tend + 4
                state = _DONE
            elif state == _DONE:
                raise StreamFramingError(f"{n - pos} bytes after the end of the response body")
        self._state = state
        self._need = need
        return spans

    @staticmethod
    def _check_size_line(data: bytes, pos: int) -> None:
        """A size line that did not match: wait for more only if it can still become a valid one."""
        eol = data.find(b"\r\n", pos)
        if eol >= 0 or len(data) - pos > MAX_HEAD_BYTES:
            line = data[pos : eol if eol >= 0 else pos + 40]
            raise StreamFramingError(f"malformed HTTP chunk-size line {bytes(line[:40])!r}")
        if _SIZE_PREFIX.match(data, pos) is None:
            raise StreamFramingError(f"malformed HTTP chunk-size line {bytes(data[pos : pos + 40])!r}")


__all__ = ["MAX_HEAD_BYTES", "ResponseHead", "ResponseReader", "join_spans", "parse_head"]

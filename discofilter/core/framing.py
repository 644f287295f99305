"""LineFramer: turns the chunks of a JSON watch body into whole event lines.

The kube-apiserver writes one JSON document per watch event and ends each with exactly one ``\\n``
(Go's ``json.Encoder.Encode``). HTTP chunk boundaries and TCP reads mean nothing: an event can span
many chunks and a chunk can hold many events (see the ``*.reads.json`` captures in the fixtures).

Invariants:
- Rule 1: no I/O. ``feed`` takes bytes and returns whole lines, each ending in ``\\n``, byte for byte as
  received. Lines are never decoded here.
- The output does not depend on how the input was split.
- Work is O(n) in the bytes fed: a partial line is kept as a list of pieces and joined once, when its
  newline arrives, so a 3 MiB object arriving in 2 KiB reads costs one join, not a quadratic regrowth.
- The pending partial line is bounded by ``max_line_bytes``; going past it raises
  ``ObjectTooLargeError`` and the stream must be ended.
"""

from __future__ import annotations

from typing import Final

from discofilter.errors import ObjectTooLargeError, StreamFramingError

# The API server accepts request bodies up to 3 MiB and etcd's default --max-request-bytes is 1.5 MiB,
# but a JSON watch event of an object stored as protobuf runs 1.4-2x larger, and operators raise etcd's
# limit. 16 MiB leaves room for all of that while still bounding one watch's buffer (h11 caps an
# incomplete HTTP head at 16 KiB for the same reason: a peer must not make us buffer without limit).
DEFAULT_MAX_LINE_BYTES: Final = 16 * 1024 * 1024


class LineFramer:
    """Splits a byte stream into ``\\n``-terminated lines. Feed chunks, get whole lines back."""

    __slots__ = ("_pending", "_pending_size", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0

    @property
    def buffered(self) -> int:
        """Bytes of the incomplete line held back, waiting for its newline."""
        return self._pending_size

    def feed(self, data: bytes) -> list[bytes]:
        """Return the lines completed by ``data``, each with its trailing newline."""
        lines: list[bytes] = []
        nl = data.find(b"\n")
        if nl < 0:
            if data:
                self._hold(data)
            return lines
        start = 0
        if self._pending:
            self._pending.append(data[: nl + 1])
            line = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._check(len(line))
            lines.append(line)
            start = nl + 1
            nl = data.find(b"\n", start)
        limit = self.max_line_bytes
        while nl >= 0:
            if nl + 1 - start > limit:
                self._check(nl + 1 - start)
            lines.append(data[start : nl + 1])
            start = nl + 1
            nl = data.find(b"\n", start)
        if start < len(data):
            self._hold(data[start:])
        return lines

    def complete(self, piece: bytes | memoryview) -> bytes:
        """Join the pending partial line with ``piece``, its end up to and including the newline.

        For callers that split lines themselves (WatchFilter's hot loop): a memoryview piece of the
        read costs one copy, in the join, instead of a slice and then the join.
        """
        self._pending.append(piece)
        line = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self._check(len(line))
        return line

    def hold(self, piece: bytes | memoryview) -> None:
        """Keep the start of a line whose newline has not arrived (a memoryview keeps its read alive)."""
        self._hold(piece)

    def take(self) -> bytes:
        """The partial line held, handed back (and forgotten here): a stream that stops deciding
        (``WatchFilter.blocked``) holds it with the rest."""
        rest = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return rest

    def feed_eof(self) -> bytes | None:
        """End of stream. Return a final line that lacked its newline, or None.

        A stream that ends inside an event is an error: the fragment is never a whole event, and a proxy
        must not forward half an event (the API server always ends events with a newline).
        """
        if not self._pending:
            return None
        rest = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if rest.strip():
            raise StreamFramingError(f"stream ended inside an event ({len(rest)} bytes without a newline)")
        return None

    def _hold(self, piece: bytes | memoryview) -> None:
        self._pending.append(piece)
        self._pending_size += len(piece)
        self._check(self._pending_size)

    def _check(self, size: int) -> None:
        if size > self.max_line_bytes:
            self._pending.clear()
            self._pending_size = 0
            raise ObjectTooLargeError(
                f"watch event larger than the {self.max_line_bytes}-byte limit ({size} bytes so far)"
            )

"""EventBoundary: does a watch stream forwarded as it came end between two events right now?

Pass-through watches (ConfigMaps, Nodes, CRDs...) are relayed byte for byte, unparsed. To end one
cleanly at shutdown, discofilter only needs to know whether what it has forwarded so far ends at an
event boundary: then the stream can end there, as at an API server watch timeout; otherwise it must
be cut (no final chunk), so the client knows the last event is incomplete.

- JSON: the API server ends every event with a newline (``json.Encoder.Encode``), and compact JSON
  never holds a raw newline byte inside an event, so the boundary is "the last byte was a newline".
- Protobuf: 4-byte big-endian length prefixes; only the lengths are counted.

Rule 1: no I/O. O(1) per chunk for JSON, O(frames) for protobuf; nothing is buffered.
"""

from __future__ import annotations


class EventBoundary:
    __slots__ = ("_at", "_header", "_protobuf", "_remaining")

    def __init__(self, *, protobuf: bool) -> None:
        self._protobuf = protobuf
        self._at = True
        self._header = b""
        self._remaining = 0

    @property
    def at_boundary(self) -> bool:
        if self._protobuf:
            return not self._header and self._remaining == 0
        return self._at

    def feed(self, data: bytes) -> None:
        """Account for ``data``, just forwarded."""
        if not data:
            return
        if not self._protobuf:
            self._at = data.endswith(b"\n")
            return
        i, n = 0, len(data)
        while i < n:
            if self._remaining:
                take = min(self._remaining, n - i)
                self._remaining -= take
                i += take
                continue
            piece = data[i : i + 4 - len(self._header)]
            self._header += piece
            i += len(piece)
            if len(self._header) == 4:
                self._remaining = int.from_bytes(self._header, "big")
                self._header = b""

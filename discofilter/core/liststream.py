"""ListStream: filters a JSON LIST answer incrementally, as its chunks arrive.

``feed(chunk)`` returns the filtered list's bytes that are ready; ``finish()`` checks the end and returns
the rest with the ``ListResult`` counts. The output is what ``listfilter.filter_list`` gives for the
whole body (the tests hold the two to it, split every way), but only one item is ever held: a 25 MB
pod list no longer becomes 25 MB of buffer plus ~145 MB of decoded objects, and no single call blocks
the caller's event loop for more than one chunk's worth of scanning.

How a value's end is found without a Python-level tokenizer: msgspec decodes a ``Raw`` from the
value's first byte to the end of what has arrived. A complete value followed by more bytes fails with
"trailing characters (byte N)": N is where the value ended. An incomplete one fails with "Input data
was truncated": wait for more. JSON parsing is prefix-deterministic, so the first value that parses is
the whole value, never a part of it. Retries on a growing item wait until its buffered bytes doubled,
so one item of n bytes costs O(n) scanning however finely it was chunked.

The list's own members (kind, apiVersion, metadata) are written before ``items`` by the API server
(Go field order of TypeMeta, ListMeta, Items). When the entries array arrives before kind says what
the list is, ListStream cannot know how to read its entries: it then keeps the whole body and filters
it in ``finish`` with ``filter_list`` (correct, not bounded; never seen from a real API server).

Rule 1: no I/O. Malformed input raises ``StreamFramingError``; an item larger than ``max_item_bytes``
raises ``ObjectTooLargeError``. Either way, what was already returned must not be completed: the
caller ends the answer so the client sees a truncated body, never a wrong list.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import replace
from enum import Enum, auto
from typing import Final

import msgspec
import orjson

from discofilter.core.lifecycle import ByName, Undecided, decider_of
from discofilter.core.listfilter import (
    ListHead,
    ListResult,
    entry_namespace,
    entry_resource_version,
    filter_list,
)
from discofilter.core.membership import parse_rv
from discofilter.errors import ObjectTooLargeError, StreamFramingError

# An item beyond this is refused. The largest object the API server stores is 1.5 MiB in etcd by
# default (3 MiB request limit), 1.4-2x that as JSON; the watch path allows 16 MiB per event
# (core.framing), and one list item is the same object.
DEFAULT_MAX_ITEM_BYTES: Final = 16 * 1024 * 1024

_RAW: Final = msgspec.json.Decoder(msgspec.Raw)
_TRAILING: Final = re.compile(r"trailing characters \(byte (\d+)\)")
_KEY: Final = msgspec.json.Decoder(str)
_AT_BYTE: Final = re.compile(r"\(byte (\d+)\)$")


class _State(Enum):
    START = auto()  # before the list's opening brace
    MEMBER = auto()  # before a member of the list object (or its closing brace)
    ENTRIES = auto()  # inside the items/rows array, before an entry (or its closing bracket)
    END = auto()  # after the list's closing brace: only whitespace may follow
    WHOLE = auto()  # keeping the whole body for filter_list (see the module docstring)


class ListStream:
    """Feed the chunks of a JSON list body; get back the filtered list's bytes."""

    __slots__ = (
        "_api_seen",
        "_buf",
        "_decider",
        "_entries_key",
        "_head",
        "_head_raw",
        "_members",
        "_need",
        "_out",
        "_pending",
        "_pos",
        "_seen_entries",
        "_state",
        "_top_members",
        "_whole",
        "_whole_size",
        "blocked",
        "items_in",
        "items_kept",
        "max_item_bytes",
        "max_whole_bytes",
    )

    def __init__(
        self,
        members: Container[str],
        *,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        max_whole_bytes: int = 1024 * 1024 * 1024,
    ) -> None:
        self._members = members
        self._decider = decider_of(members)
        self.blocked: Undecided | None = None
        """The item the list stopped at: its namespace is not known yet (``core.lifecycle``). Resolve
        it, then ``feed(b"")`` (or ``finish()`` again) goes on from that item."""
        self.max_item_bytes = max_item_bytes
        self.max_whole_bytes = max_whole_bytes
        self._buf = b""
        self._pos = 0
        self._need = 0  # don't retry the value at _pos before the buffer holds this many bytes
        self._state = _State.START
        self._head = ListHead()
        self._entries_key: str | None = None  # set while inside the entries array
        self._seen_entries = False
        self._top_members = 0
        # Output waits in _pending until the first entry is filtered: until then the stream may still
        # fall back to WHOLE, and then nothing may have been returned. _head_raw keeps that input.
        self._pending: list[bytes] = []
        self._out = False
        self._head_raw: list[bytes] = []
        self._whole: list[bytes] = []
        self._whole_size = 0
        self._api_seen = False
        self.items_in = 0
        self.items_kept = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> bytes:
        """Return the filtered bytes completed by ``data`` (possibly empty)."""
        if self._state is _State.WHOLE:
            self._keep_whole(data)
            return b""
        if not self._out:
            self._head_raw.append(data)
        if self._pos:
            self._buf = self._buf[self._pos :] + data
            self._need -= self._pos
            self._pos = 0
        else:
            self._buf += data
        self._run(eof=False)
        if self.buffered > self.max_item_bytes and not self._is_whole():
            # Whatever is pending (an item, a member name, a list member, whitespace) is over the limit.
            raise ObjectTooLargeError(
                f"list answer: over {self.max_item_bytes} bytes without a complete value"
            )
        if not self._out or not self._pending:  # never out in WHOLE
            return b""
        out = b"".join(self._pending)
        self._pending.clear()
        return out

    def finish(self) -> tuple[bytes, ListResult]:
        """End of the body: return the last bytes and the counts (``ListResult.body`` stays empty: the
        bytes were returned along the way); raises if the list is incomplete."""
        if not self._is_whole():
            self._run(eof=True)
            if self.blocked is not None:
                raise self.blocked
        if self._is_whole():
            # ByName raises Undecided (the body stays held: finish() again once it is resolved).
            result = filter_list(b"".join(self._whole), ByName(self._members))
            self._whole.clear()
            return result.body, replace(result, body=b"")
        if self._state is not _State.END:
            raise StreamFramingError("list answer ended before its closing brace")
        key = self._head.entries_key()
        if not self._seen_entries:
            self._pending.append((b"," if self._top_members else b"") + orjson.dumps(key) + b":[]")
        self._pending.append(b"}\n")
        out = b"".join(self._pending)
        self._pending.clear()
        return out, self._head.result(b"", self.items_in, self.items_kept)

    def _is_whole(self) -> bool:
        return self._state is _State.WHOLE

    # -- the state machine -------------------------------------------------------------------------

    def _run(self, *, eof: bool) -> None:
        self.blocked = None
        while True:
            if len(self._buf) < self._need and not eof:
                return
            pos = _skip_ws(self._buf, self._pos)
            if pos == len(self._buf):
                self._pos = pos
                return
            self._pos = pos
            c = self._buf[pos]
            state = self._state
            if state is _State.START:
                if c != 0x7B:  # {
                    raise StreamFramingError("list answer is not a JSON object")
                self._pos += 1
                self._pending.append(b"{")
                self._state = _State.MEMBER
            elif state is _State.MEMBER:
                if not self._member(c, eof=eof):
                    return
            elif state is _State.ENTRIES:
                if not self._entry(c, eof=eof):
                    return
            else:  # END
                raise StreamFramingError("list answer has bytes after its closing brace")

    def _member(self, c: int, *, eof: bool) -> bool:
        """One ``"key":value`` of the list object. False when more input is needed."""
        buf = self._buf
        pos = self._pos
        if c == 0x7D:  # }
            self._pos = pos + 1
            self._state = _State.END
            return True
        if self._top_members:
            if c != 0x2C:  # ,
                raise StreamFramingError("list answer: expected ',' or '}' between members")
            pos = _skip_ws(buf, pos + 1)
        key_end = self._value_end(pos, eof=eof)
        if key_end is None:
            return False
        key = _decode_key(buf[pos:key_end])
        colon = _skip_ws(buf, key_end)
        if colon >= len(buf):
            return self._wait(eof)
        if buf[colon] != 0x3A:  # :
            raise StreamFramingError("list answer: expected ':' after a member name")
        vpos = _skip_ws(buf, colon + 1)
        if vpos >= len(buf):
            return self._wait(eof)
        entries = False
        if key in ("items", "rows") and not self._seen_entries:
            if self._head.kind is None or (self._head.kind == "Table" and not self._api_seen):
                self._to_whole()
                return False
            if key == self._head.entries_key():
                if buf[vpos] == 0x5B:  # [
                    self._open_entries(key, vpos + 1)
                    return True
                entries = True
        vend = self._value_end(vpos, eof=eof)
        if vend is None:
            if len(buf) - vpos > self.max_item_bytes:
                raise ObjectTooLargeError(f"list member {key!r} larger than {self.max_item_bytes} bytes")
            return False
        value = memoryview(buf)[vpos:vend]
        if entries:
            self._no_entries(key, value)
        else:
            self._emit_member(key, self._top_value(key, value))
        self._pos = vend
        return True

    def _top_value(self, key: str, value: memoryview) -> bytes | memoryview:
        try:
            if key == "kind":
                self._head.kind = orjson.loads(value)
            elif key == "apiVersion":
                self._head.api_version = orjson.loads(value)
                self._api_seen = True
            elif key == "metadata":
                return self._head.set_meta(value)
        except orjson.JSONDecodeError as exc:
            raise StreamFramingError(f"list answer is not valid JSON: {exc}") from exc
        return value

    def _no_entries(self, key: str, value: memoryview) -> None:
        """items/rows that is not an array: as filter_list_slow, null (any falsy rows) is an empty list."""
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise StreamFramingError(f"list answer is not valid JSON: {exc}") from exc
        if decoded is not None if key == "items" else decoded:
            what = "Table has malformed rows" if key == "rows" else "list answer has malformed items"
            raise StreamFramingError(what)
        self._emit_member(key, b"[]")
        self._seen_entries = True

    def _emit_member(self, key: str, value: bytes | memoryview) -> None:
        sep = b"," if self._top_members else b""
        self._pending.append(sep + orjson.dumps(key) + b":" + bytes(value))
        self._top_members += 1

    def _open_entries(self, key: str, pos: int) -> None:
        self._emit_member(key, b"[")
        self._entries_key = key
        self._seen_entries = True
        self._state = _State.ENTRIES
        self._pos = pos
        # From here on the stream is committed: what was held may go out.
        self._out = True
        self._head_raw.clear()

    def _entry(self, c: int, *, eof: bool) -> bool:
        """One entry of the items/rows array, or its end. False when more input is needed."""
        buf = self._buf
        pos = self._pos
        if c == 0x5D:  # ]
            self._pending.append(b"]")
            self._pos = pos + 1
            self._state = _State.MEMBER
            self._entries_key = None
            return True
        if self.items_in:
            if c != 0x2C:  # ,
                raise StreamFramingError("list answer: expected ',' or ']' between items")
            pos = _skip_ws(buf, pos + 1)
            if pos >= len(buf):
                return self._wait(eof)
        end = self._value_end(pos, eof=eof)
        if end is None:
            if len(buf) - pos > self.max_item_bytes:
                raise ObjectTooLargeError(f"list item larger than the {self.max_item_bytes}-byte limit")
            return False
        if end - pos > self.max_item_bytes:
            raise ObjectTooLargeError(f"list item of {end - pos} bytes exceeds {self.max_item_bytes}")
        raw = memoryview(buf)[pos:end]
        row = self._entries_key == "rows"
        ns = entry_namespace(raw, row=row)
        decider = self._decider
        if decider is not None and decider.undecided(ns):
            keep = decider.decide_at(ns, parse_rv(entry_resource_version(raw, row=row)))
            if keep is None:
                # Stop before this item (nothing consumed): feed(b"") retries it once resolved.
                self.blocked = Undecided(ns, parse_rv(entry_resource_version(raw, row=row)))
                return False
        else:
            keep = ns in self._members
        self.items_in += 1
        if keep:
            self._pending.append(b"," + bytes(raw) if self.items_kept else bytes(raw))
            self.items_kept += 1
        self._pos = end
        return True

    @staticmethod
    def _cut_short(exc: msgspec.DecodeError, size: int) -> bool:
        """A number cut after ``.``, ``e`` or ``-`` is "invalid number (byte N)", not "truncated", in
        msgspec 0.23, with N (0-based) at the end of the input: more bytes may still make it valid."""
        m = _AT_BYTE.search(str(exc))
        return m is not None and int(m.group(1)) >= size

    def _value_end(self, pos: int, *, eof: bool) -> int | None:
        """Where the JSON value at ``pos`` ends, or None (and _pos, _need set) if it has not all arrived."""
        buf = self._buf
        try:
            _RAW.decode(memoryview(buf)[pos:])
        except msgspec.DecodeError as exc:
            m = _TRAILING.search(str(exc))
            if m is not None:
                self._need = 0
                # msgspec counts bytes from 1: byte N is the first one after the value.
                return _rstrip_ws(buf, pos, pos + int(m.group(1)) - 1)
            if str(exc) != "Input data was truncated" and not self._cut_short(exc, len(buf) - pos):
                raise StreamFramingError(f"list answer is not valid JSON: {exc}") from exc
            if eof:
                raise StreamFramingError("list answer ended inside a value") from exc
            # Retry once the value's bytes have doubled: O(n) scanning for an n-byte value.
            self._need = len(buf) + max(len(buf) - pos, 4096)
            return None
        # The value runs to the end of the input: complete unless a number or literal could go on.
        if eof or buf[pos] in b'{["':
            self._need = 0
            return _rstrip_ws(buf, pos, len(buf))
        self._need = len(buf) + 1
        return None

    def _wait(self, eof: bool) -> bool:
        if eof:
            raise StreamFramingError("list answer ended inside a member")
        self._need = len(self._buf) + 1
        return False

    def _to_whole(self) -> None:
        self._state = _State.WHOLE
        self._whole = self._head_raw
        self._whole_size = sum(len(p) for p in self._whole)
        self._head_raw = []
        self._pending.clear()
        self._buf = b""
        self._pos = 0
        self._check_whole()

    def _keep_whole(self, data: bytes) -> None:
        self._whole.append(data)
        self._whole_size += len(data)
        self._check_whole()

    def _check_whole(self) -> None:
        if self._whole_size > self.max_whole_bytes:
            raise ObjectTooLargeError(f"LIST answer exceeds the {self.max_whole_bytes}-byte limit")


def _decode_key(raw: bytes) -> str:
    try:
        return _KEY.decode(raw)
    except msgspec.ValidationError as exc:
        raise StreamFramingError("list answer: a member name is not a string") from exc
    except msgspec.DecodeError as exc:
        raise StreamFramingError(f"list answer is not valid JSON: {exc}") from exc


def _rstrip_ws(buf: bytes, start: int, end: int) -> int:
    while end > start and buf[end - 1] in b" \t\r\n":
        end -= 1
    return end


def _skip_ws(buf: bytes, pos: int) -> int:
    # The API server writes compact JSON (pretty only for curl-like User-Agents): usually no loop.
    n = len(buf)
    while pos < n and buf[pos] in b" \t\r\n":
        pos += 1
    return pos

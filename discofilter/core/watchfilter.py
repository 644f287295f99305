"""WatchFilter: keeps the events of mesh namespaces in a JSON watch stream, byte for byte.

``feed(chunk)`` returns the kept event lines exactly as the API server wrote them; they are written on
to the client unchanged. Nothing is decoded and re-encoded, except a Table event whose rows span
namespaces in and out of the mesh (a real server sends one row per watch event, so this is a corner).

How an event's namespace is found, per line:
1. Fast path: one anchored regular expression over the head of the line. The API server writes
   ``{"type":T,"object":{"kind":K,"apiVersion":A,"metadata":{"name":N,"generateName":G,"namespace":NS``
   in this order (Go struct field order of TypeMeta and ObjectMeta). The pattern only matches when the
   namespace key is the third key at most of the object's own metadata, after string-valued name and
   generateName without escapes, so a ``"namespace"`` key inside labels or annotations can never match.
   name and generateName can be 253 characters each; the scan stays within the head of the line.
2. Slow path: ``orjson.loads`` of the line whenever the fast path cannot be sure (other key order,
   escapes, Table and PartialObjectMetadata objects, BOOKMARK and ERROR). Both paths must agree; the
   tests run every case through both (``classify_fast`` and ``classify_slow``).

Rule 1: no I/O here. Rule 2: a line that is not a well-formed event raises ``StreamFramingError``;
it is never forwarded unparsed.
"""

from __future__ import annotations

import re
from collections.abc import Container
from typing import Final

import orjson

from discofilter.core.exclusion import tally_drop
from discofilter.core.framing import DEFAULT_MAX_LINE_BYTES, LineFramer
from discofilter.core.kube_types import ALWAYS_FORWARDED, EVENT_TYPES, OBJECT_EVENT_TYPES
from discofilter.core.lifecycle import Undecided, decide, decider_of
from discofilter.core.membership import parse_rv
from discofilter.errors import StreamFramingError

# The head of an object event: the API server writes
# {"type":T,"object":{"kind":K,"apiVersion":A,"metadata":{"name":N,"generateName":G,"namespace":NS
# in this order (Go struct field order of TypeMeta and ObjectMeta). Values are matched with ``[^"]*``,
# which sre runs as a tight byte loop (NOT_LITERAL); ``[^"\\]*`` (a charset) cost ~3 ns a character,
# 1.7 µs per event with 253-character names. Escapes are excluded afterwards by one memchr for a
# backslash over the matched head: without one, every quote the pattern met is a real string end.
_FAST: Final = re.compile(
    rb'\{"type":"(?:ADDED|MODIFIED|DELETED)","object":\{"kind":"[A-Za-z0-9]+","apiVersion":"[A-Za-z0-9./-]+",'
    rb'"metadata":\{(?:"name":"[^"]*",)?(?:"generateName":"[^"]*",)?"namespace":"([^"]*)"'
)
_FAST_ALWAYS: Final = re.compile(rb'\{"type":"(BOOKMARK|ERROR)","object":\{')
_TYPES: Final = {t.encode(): t for t in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")}
# What a decision is: the event type, and the namespace of an object event (None for BOOKMARK/ERROR).
Verdict = tuple[str, str | None]
_ALWAYS: Final = "\0always"  # _scan: a BOOKMARK or ERROR event, forwarded whatever its namespace


def _scan(data: bytes, start: int, end: int) -> str | None:
    """The namespace of the event ``data[start:end]`` (ending in ``}\\n``) from its head, _ALWAYS for
    BOOKMARK/ERROR, or None when the head does not settle it (then the slow path decides).

    The namespace key must be the third key at most of the object's own metadata, after string-valued
    name and generateName without escapes, so a ``"namespace"`` key inside labels or annotations can
    never match. Beyond the head, only the tail is checked (the event must close its object):
    validating the whole line would be the full parse this path exists to avoid, and the client's own
    decoder rejects a corrupt middle anyway.
    """
    m = _FAST.match(data, start, end)
    if m is None:
        if _FAST_ALWAYS.match(data, start, end) is not None:
            return _ALWAYS
        return None
    if data.find(b"\\", start, m.end()) >= 0:
        return None
    try:
        return m.group(1).decode()
    except UnicodeDecodeError:
        return None


def classify_fast(line: bytes) -> Verdict | None:
    """Return (type, namespace) when the head of the line settles it, else None (see ``_scan``)."""
    if not line.endswith(b"}\n"):
        return None
    ns = _scan(line, 0, len(line))
    if ns is None:
        return None
    etype = _TYPES[line[9 : line.index(b'"', 9)]]
    return (etype, None) if ns is _ALWAYS else (etype, ns)


def _decode(line: bytes) -> dict[str, object]:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise StreamFramingError(f"watch event is not valid JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise StreamFramingError("watch event is not a JSON object")
    return event


def _event_type(event: dict[str, object]) -> str:
    etype = event.get("type")
    if not isinstance(etype, str) or etype not in EVENT_TYPES:
        raise StreamFramingError(f"watch event has an unknown type {etype!r}")
    if not isinstance(event.get("object"), dict):
        raise StreamFramingError(f"{etype} watch event has no object")
    return etype


def object_namespace(obj: object) -> str:
    """The ``metadata.namespace`` of a raw object; "" when it has none."""
    if not isinstance(obj, dict):
        raise StreamFramingError("object is not a JSON object")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise StreamFramingError("object has no metadata")
    ns = meta.get("namespace", "")
    if not isinstance(ns, str):
        raise StreamFramingError("object has a non-string namespace")
    return ns


def table_rows(obj: dict[str, object]) -> list[dict[str, object]] | None:
    """The rows of a meta.k8s.io Table object, or None if ``obj`` is not a Table."""
    if obj.get("kind") != "Table" or not str(obj.get("apiVersion", "")).startswith("meta.k8s.io/"):
        return None
    rows = obj.get("rows") or []
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise StreamFramingError("Table has malformed rows")
    return rows


def row_namespace(row: dict[str, object]) -> str:
    """A Table row's namespace, from the PartialObjectMetadata (or full object) it carries."""
    if "object" not in row:
        # includeObject=None gives rows without objects: their namespace cannot be known.
        raise StreamFramingError("Table row carries no object, so its namespace is unknown")
    return object_namespace(row["object"])


def classify_slow(line: bytes) -> Verdict:
    """Return (type, namespace) by decoding the whole line. Table events are handled by the caller."""
    event = _decode(line)
    etype = _event_type(event)
    if etype in ALWAYS_FORWARDED:
        return etype, None
    obj = event["object"]
    assert isinstance(obj, dict)
    if table_rows(obj) is not None:
        raise _TableEvent(event)
    return etype, object_namespace(obj)


class _TableEvent(Exception):
    """Internal signal: the line is a Table event, to be filtered row by row."""

    def __init__(self, event: dict[str, object]) -> None:
        super().__init__()
        self.event = event


class NamespaceDecisions:
    """Namespace (as bytes) -> kept, shared by every watch filtered against one live membership, so an
    event of a namespace seen before costs one dict lookup instead of a decode and a Python-level
    membership test. Valid while ``members.version`` stands still (core.membership bumps it on every
    change of the member set, wherever it comes from: it changes only in ``Membership._recompute``);
    cleared on the first read after it moves. One per process, not per watch: a thousand watches must
    not each hold a copy (the RSS goal is 100 MB)."""

    __slots__ = ("kept", "version")

    MAX: Final = 16_384
    """Entries at most, whatever the upstream sends (a cluster has at most 10k namespaces)."""

    def __init__(self) -> None:
        self.kept: dict[bytes, bool] = {}
        self.version: int | None = None


class WatchFilter:
    """Feed JSON watch-body chunks; get back the kept event lines, unchanged.

    ``members`` is the live set of mesh namespaces (anything supporting ``in``). ``use_fast_path`` exists
    so the tests can prove the fast and slow paths decide alike.
    """

    __slots__ = (
        "_decider",
        "_decisions",
        "_framer",
        "_held",
        "_members",
        "_use_fast",
        "blocked",
        "bytes_in",
        "bytes_out",
        "events_dropped",
        "events_in",
        "events_kept",
        "forward_bookmarks",
        "last_bookmark",
        "last_kept",
        "last_seen",
        "tally",
    )

    def __init__(
        self,
        members: Container[str],
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        use_fast_path: bool = True,
        decisions: NamespaceDecisions | None = None,
    ) -> None:
        self._framer = LineFramer(max_line_bytes)
        # Shared decisions only for a container that says when it changes (core.membership.Membership).
        self._decisions = decisions if isinstance(getattr(members, "version", None), int) else None
        self._members = members
        self._decider = decider_of(members)
        self._use_fast = use_fast_path
        self.blocked: Undecided | None = None
        """The event the stream waits at (its namespace is not known yet; ``core.lifecycle``): nothing
        after it is decided until ``resume()``, so the client sees every event in order."""
        self._held = b""
        """The body from the blocked event on, held while ``blocked``."""
        self.events_in = 0
        self.events_kept = 0
        self.events_dropped = 0
        self.bytes_in = 0
        self.bytes_out = 0
        # The last line forwarded: the client's resume point is the resourceVersion inside it. Sliced
        # out once per read rather than kept as an offset into the read: that would hold a whole read
        # (up to 256 KiB) per quiet watch.
        self.last_kept: bytes | None = None
        # Server-side exclusion (core.exclusion) sets these. last_seen: the last event *processed*,
        # kept or dropped, bookmarks included: the exact point an upstream re-open resumes from (every
        # event up to it is filtered already). Sliced once per read, and only when tally is set.
        self.forward_bookmarks = True
        """False when discofilter asked the upstream for bookmarks the client did not ask for."""
        self.tally: dict[bytes, int] | None = None
        """Dropped bytes per namespace (core.exclusion.Planner.tally), when set."""
        self.last_seen: bytes | None = None
        self.last_bookmark: bytes | None = None
        """The last BOOKMARK event processed (rare: a copy each costs nothing)."""

    @property
    def buffered(self) -> int:
        return self._framer.buffered

    def discard_partial(self) -> None:
        """Forget an event begun but not finished: the upstream stream is being replaced, and the new
        one starts after the last whole event processed here (core.exclusion)."""
        self._framer = LineFramer(self._framer.max_line_bytes)

    def feed(self, data: bytes) -> list[bytes]:
        """The kept events of ``data``, one bytes each (what the tests compare event by event)."""
        out = self.feed_joined(data)
        if not out:
            return []
        # Every kept event is one line ending in its only newline (Table rewrites included: orjson
        # never writes a raw newline), so splitting the joined output gives the events back exactly.
        return [line + b"\n" for line in out[:-1].split(b"\n")]

    def feed_joined(self, data: bytes) -> bytes:
        """The kept events of ``data`` as one bytes (b"" when none).

        Runs of consecutive kept events are taken as memoryview slices of the read and joined once, so a
        kept byte is copied once, and a read that is kept whole comes back as itself, not copied at all.
        """
        if not data:
            return b""
        return self.feed_spans(data, [0, len(data)])

    def feed_spans(self, data: bytes, spans: list[int]) -> bytes:
        """The kept events of the body bytes ``data[spans[0]:spans[1]]``, ``data[spans[2]:spans[3]]``...
        (one socket read with its HTTP chunk framing in between: ``core.http1.ResponseReader.feed_spans``),
        as one bytes: what the relay writes. The body is never joined first, so a dropped event is never
        copied; the kept ones are copied once, into the answer.

        The hot loop: events are decided in place, by offset, and each run of consecutive kept events
        goes to the answer as one slice of the read. An event begun in an earlier read or chunk is
        joined once and decided by the line path.

        An event whose namespace membership cannot decide yet (``core.lifecycle``) stops the read: it
        and everything after it are held (``blocked``) until ``resume()``."""
        if self.blocked is not None:
            self._hold_spans(data, spans, 0)
            return b""
        if not self._use_fast:
            return self._feed_spans_slow(data, spans)
        members = self._members
        framer = self._framer
        limit = framer.max_line_bytes
        match = _FAST.match
        find = data.find
        seen = self._seen()
        view = memoryview(data)
        pieces: list[bytes | memoryview] = []
        events = dropped = kept_bytes = bytes_in = 0
        last = last_end = -1  # the last event kept by the fast path, while none kept later elsewhere
        tally = self.tally
        proc = proc_end = -1  # the last event processed by the fast path (only with a tally)
        for i in range(0, len(spans), 2):
            start, stop = spans[i], spans[i + 1]
            bytes_in += stop - start
            nl = find(b"\n", start, stop)
            if nl < 0:
                framer.hold(view[start:stop])
                continue
            if framer.buffered:
                kept = self._feed_lines([framer.complete(view[start : nl + 1])])  # sets last_kept
                proc = -1
                if kept:
                    pieces.extend(kept)
                    last = -1
                start = nl + 1
                if self._stopped():
                    self._hold_spans(data, spans, i, start)
                    break
                nl = find(b"\n", start, stop)
            run = -1  # where the current run of kept events begins
            while nl >= 0:
                end = nl + 1
                if end - start > limit:
                    framer.feed(data[start:end])  # raises ObjectTooLargeError
                m = match(data, start, end) if data[nl - 1] == 0x7D else None
                keep: bool | None = None  # None: the fast path cannot tell, the slow path decides
                if m is not None:
                    a, b = m.span(1)
                    if find(b"\\", start, b) < 0:  # b is the namespace's closing quote
                        key = data[a:b]
                        keep = seen.get(key)
                        if keep is None:
                            # A namespace not decided yet: the slow path below, which may block.
                            try:
                                name = key.decode()
                            except UnicodeDecodeError:
                                pass
                            else:
                                decider = self._decider
                                if decider is None or not decider.undecided(name):
                                    keep = name in members
                                    if len(seen) < NamespaceDecisions.MAX:
                                        seen[key] = keep
                elif nl > start and data[nl - 1] == 0x7D:
                    ns = _scan(data, start, end)  # BOOKMARK and ERROR, or None
                    if ns is _ALWAYS:
                        keep = self._always(data, start, end)
                    # _FAST did not match, so anything but a BOOKMARK or ERROR (_ALWAYS) goes the slow
                    # way, which also knows undecided namespaces.
                if tally is not None and keep is not None:
                    proc, proc_end = start, end
                    if not keep and m is not None:
                        tally_drop(tally, key, end - start)
                if keep:
                    if run < 0:
                        run = start
                    last, last_end = start, end
                    events += 1
                    kept_bytes += end - start
                else:
                    if run >= 0:
                        pieces.append(view[run:start])
                        run = -1
                    if keep is None:
                        slow = self._feed_lines([data[start:end]])  # counts for itself, sets last_kept
                        proc = -1
                        if slow:
                            pieces.extend(slow)
                            last = -1
                        if self._stopped():
                            self._hold_spans(data, spans, i, end)
                            break  # no run is open: it was added to pieces above
                    else:
                        events += 1
                        dropped += 1
                start = end
                nl = find(b"\n", start, stop)
            else:  # no break: the span was decided to its end
                if run >= 0:
                    pieces.append(view[run:start])
                if start < stop:
                    framer.hold(view[start:stop])
                continue
            break  # the slow path stopped at an undecided event: the rest is held
        self.bytes_in += bytes_in
        self.events_in += events
        self.events_dropped += dropped
        self.events_kept += events - dropped
        self.bytes_out += kept_bytes
        if last >= 0:
            self.last_kept = data if last == 0 and last_end == len(data) else data[last:last_end]
        if proc >= 0:
            self.last_seen = data[proc:proc_end]
        if len(pieces) == 1:
            piece = pieces[0]
            if isinstance(piece, memoryview):
                # A read kept whole is written on as it came.
                whole = piece.obj is data and piece.nbytes == len(data)
                return data if whole else piece.tobytes()
            return piece
        return b"".join(pieces)

    def _feed_spans_slow(self, data: bytes, spans: list[int]) -> bytes:
        """Every line through the line path (the tests' proof that both paths decide alike)."""
        out: list[bytes] = []
        for i in range(0, len(spans), 2):
            self.bytes_in += spans[i + 1] - spans[i]
            if self._stopped():
                self._held += data[spans[i] : spans[i + 1]]
                continue
            out.extend(self._feed_lines(self._framer.feed(data[spans[i] : spans[i + 1]])))
            if self._stopped():
                self._held += self._framer.take()  # a partial line after the held ones
        return b"".join(out)

    def _hold_spans(self, data: bytes, spans: list[int], i: int, pos: int | None = None) -> None:
        """Hold the body from ``pos`` in span ``i`` (its start when None) on, while blocked. Bytes of
        span ``i`` are counted by the caller, except when ``pos`` is None (a read while blocked)."""
        parts = [self._held, data[spans[i] if pos is None else pos : spans[i + 1]]]
        for j in range(i + 2, len(spans), 2):
            parts.append(data[spans[j] : spans[j + 1]])
            self.bytes_in += spans[j + 1] - spans[j]
        if pos is None:
            self.bytes_in += spans[i + 1] - spans[i]
        self._held = b"".join(parts)

    def _stopped(self) -> bool:
        """Did deciding stop at an undecided event (a method: mypy keeps ``blocked`` narrowed)."""
        return self.blocked is not None

    def resume(self) -> bytes:
        """Once the blocked event's namespace is resolved: decide the held body, as ``feed_joined``
        (it may block again, on another namespace)."""
        if self.blocked is None:
            return b""
        held, self._held, self.blocked = self._held, b"", None
        self.bytes_in -= len(held)  # counted when it arrived
        return self.feed_spans(held, [0, len(held)]) if held else b""

    def _seen(self) -> dict[bytes, bool]:
        decisions = self._decisions
        if decisions is None:
            return {}  # this read only: nothing changes within one synchronous call
        version: int = getattr(self._members, "version")  # noqa: B009 (an int, checked in __init__)
        if version != decisions.version:  # the member set changed: earlier decisions are stale
            decisions.kept.clear()
            decisions.version = version
        return decisions.kept

    def _feed_lines(self, lines: list[bytes]) -> list[bytes]:
        """Decide whole lines one by one (the slow path, and lines completed across reads). A line whose
        namespace cannot be decided yet sets ``blocked`` and is held with the lines after it."""
        if not lines:
            return lines
        kept: list[bytes] = []
        members = self._members
        decider = self._decider
        fast = self._use_fast
        events = 0
        for n, line in enumerate(lines):
            events += 1
            verdict = classify_fast(line) if fast else None
            try:
                if verdict is None:
                    if not line.strip():
                        events -= 1  # a blank line is not an event; the API server never sends one
                        continue
                    try:
                        verdict = classify_slow(line)
                    except _TableEvent as table:
                        out = self._filter_table(table.event, line)
                        if self.tally is not None:
                            self.last_seen = line
                        if out is None:
                            self.events_dropped += 1
                        else:
                            kept.append(out)
                            self.events_kept += 1
                        continue
                ns = verdict[1]
                if ns is None:
                    keep = verdict[0] != "BOOKMARK" or self._bookmark(line)
                elif decider is not None and decider.undecided(ns):
                    keep = decide(decider, ns, parse_rv(event_resource_version(line)))
                else:
                    keep = ns in members
            except Undecided as blocked:
                events -= 1  # counted when it is decided
                self.blocked = blocked
                self._held = b"".join(lines[n:]) + self._held
                break
            if self.tally is not None:
                # Only a decided event is processed: server-side exclusion re-opens from here.
                self.last_seen = line
                if not keep and ns is not None:
                    tally_drop(self.tally, ns.encode(), len(line))
            if keep:
                kept.append(line)
                self.events_kept += 1
            else:
                self.events_dropped += 1
        self.events_in += events
        if kept:
            self.last_kept = kept[-1]
            self.bytes_out += sum(map(len, kept))
        return kept

    def feed_eof(self) -> None:
        """End of the upstream body: raises StreamFramingError if it ended inside an event."""
        self._framer.feed_eof()

    def _always(self, data: bytes, start: int, end: int) -> bool:
        """A BOOKMARK or ERROR event found by the fast path: forwarded, but a BOOKMARK only to a
        client that asked for bookmarks."""
        if data.startswith(b'{"type":"BOOKMARK"', start):
            return self._bookmark(data[start:end])
        return True

    def _bookmark(self, line: bytes) -> bool:
        self.last_bookmark = line
        return self.forward_bookmarks

    def _filter_table(self, event: dict[str, object], line: bytes) -> bytes | None:
        obj = event["object"]
        assert isinstance(obj, dict)
        rows = table_rows(obj) or []
        keep = [row for row in rows if self._row_kept(row)]
        if len(keep) == len(rows):
            return line if rows else None
        if not keep:
            return None
        obj["rows"] = keep
        return orjson.dumps(event) + b"\n"

    def _row_kept(self, row: dict[str, object]) -> bool:
        ns = row_namespace(row)
        decider = self._decider
        if decider is None or not decider.undecided(ns):
            return ns in self._members
        obj = row["object"]
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        return decide(decider, ns, parse_rv(rv if isinstance(rv, str) else None))


def event_resource_version(line: bytes) -> str | None:
    """The ``metadata.resourceVersion`` of an event line's object (one decode; used once per stream)."""
    try:
        event = orjson.loads(line)
        rv = event["object"]["metadata"]["resourceVersion"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return rv if isinstance(rv, str) and rv else None


__all__ = [
    "OBJECT_EVENT_TYPES",
    "NamespaceDecisions",
    "WatchFilter",
    "classify_fast",
    "classify_slow",
    "event_resource_version",
    "object_namespace",
]

from __future__ import annotations

import pytest

from discofilter.core.framing import LineFramer
from discofilter.errors import ObjectTooLargeError, StreamFramingError
from tests import fixtures
from tests.helpers import feed_every_split, fixture_names, reads

JSON_WATCHES = fixture_names(kind=("watch", "watchlist"))


def test_there_are_watch_captures() -> None:
    assert len(JSON_WATCHES) >= 10


@pytest.mark.parametrize("name", JSON_WATCHES)
def test_lines_are_exactly_the_events_of_real_captures(name: str) -> None:
    data = fixtures.body(name)
    lines = feed_every_split(data, lambda: LineFramer().feed)
    assert b"".join(lines) == data
    expected_ends = reads(name)["event_end_offsets"] if data else []
    ends, pos = [], 0
    for line in lines:
        pos += len(line)
        ends.append(pos)
    assert ends == expected_ends


@pytest.mark.parametrize("name", ["watch-pods.json", "watchlist-pods.json"])
def test_real_read_boundaries(name: str) -> None:
    data = fixtures.body(name)
    offsets = reads(name)["read_end_offsets"]
    framer, prev, out = LineFramer(), 0, []
    for end in offsets:
        out.extend(framer.feed(data[prev:end]))
        prev = end
    assert b"".join(out) == data


def test_partial_line_is_held_then_completed() -> None:
    f = LineFramer()
    assert f.feed(b'{"a":') == []
    assert f.buffered == 5
    assert f.feed(b'1}\n{"b"') == [b'{"a":1}\n']
    assert f.feed(b":2}\n") == [b'{"b":2}\n']
    assert f.feed_eof() is None


def test_eof_inside_an_event_is_an_error() -> None:
    f = LineFramer()
    f.feed(b'{"type":"ADDED"')
    with pytest.raises(StreamFramingError, match="ended inside an event"):
        f.feed_eof()


def test_three_mib_object_passes_and_oversize_is_refused() -> None:
    big = b'{"x":"' + b"a" * (3 * 1024 * 1024) + b'"}\n'
    assert feed_every_split(big, lambda: LineFramer().feed, bytewise_limit=0) == [big]
    f = LineFramer(max_line_bytes=1024)
    with pytest.raises(ObjectTooLargeError):
        f.feed(b"a" * 1025)
    f = LineFramer(max_line_bytes=1024)
    with pytest.raises(ObjectTooLargeError):
        f.feed(b"a" * 1500 + b"\n")
    f = LineFramer(max_line_bytes=1024)
    f.feed(b"a" * 1000)
    with pytest.raises(ObjectTooLargeError):
        f.feed(b"a" * 100 + b"\n")

"""JSON exactly as kube-apiserver writes it: Go's ``encoding/json``, reproduced on top of orjson.

The real server (1.28) encodes with ``json.NewEncoder(w).Encode(obj)``: compact, map keys sorted (the
store already keeps them sorted), a trailing ``\\n``, and Go's HTML-safe escaping of ``<``, ``>`` and
``&`` as ``\\u003c``/``\\u003e``/``\\u0026`` (the Table capture shows ``"\\u003cnone\\u003e"``), plus
U+2028/U+2029 and, before Go 1.22, ``\\b``/``\\f`` as ``\\u0008``/``\\u000c``. orjson matches everything else
byte for byte (checked against every list capture), so these replacements are all that is needed. They are
safe on orjson's output because those characters only ever occur inside strings there.

Pretty printing (``json.MarshalIndent(obj, "", "  ")``, no trailing newline) is what the server does for
User-Agents starting with ``curl``, ``Wget`` or ``Mozilla/5.0`` (``list-namespaces.curl-ua-pretty.json``).

Rule: nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar

import orjson

_HTML_ESCAPES: Final = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)
# A \b or \f escape is one preceded by an even number of backslashes (an odd run would be "\\" + "b").
_SHORT_ESCAPE_RE: Final = re.compile(rb"(?<!\\)((?:\\\\)*)\\([bf])")
_SHORT_ESCAPES: Final = {b"b": b"\\u0008", b"f": b"\\u000c"}
T = TypeVar("T")


def _go_escapes(data: bytes) -> bytes:
    for raw, escaped in _HTML_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    if b"\\b" in data or b"\\f" in data:
        data = _SHORT_ESCAPE_RE.sub(lambda m: m.group(1) + _SHORT_ESCAPES[m.group(2)], data)
    return data


def dumps(obj: Any) -> bytes:
    """Compact JSON without the trailing newline (the building block of list bodies and watch events)."""
    return _go_escapes(orjson.dumps(obj))


def encode_body(obj: Any, *, pretty: bool = False) -> bytes:
    """A whole non-watch response body: compact with ``\\n``, or indented without it."""
    if pretty:
        return _go_escapes(orjson.dumps(obj, option=orjson.OPT_INDENT_2))
    return _go_escapes(orjson.dumps(obj)) + b"\n"


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ``orjson.JSONDecodeError`` (a ``ValueError``)."""
    return orjson.loads(data)


def deep_copy(obj: T) -> T:
    """A deep copy of a JSON value; an orjson round trip is faster than ``copy.deepcopy`` on these trees."""
    copied: T = orjson.loads(orjson.dumps(obj))
    return copied

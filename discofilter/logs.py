"""Log set-up: the human text format, or one JSON object per line for log pipelines.

What is logged, and at which level, is a promise to operators: at ``info`` a line for start-up, each mesh
membership change (with how many open watches it ended), namespace-watch trouble and shutdown; nothing per
request or per watch event, which at istiod's churn would be thousands of lines a minute. Per-request
lines come at ``debug`` only.

JSON lines carry ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``message`` and every
``extra={...}`` field the call gave, under its own key, so pipelines can filter on e.g. ``generation``
without parsing the message.
"""

from __future__ import annotations

import datetime
import logging
from typing import TextIO

import orjson

from discofilter.settings import LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _default(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value, key=str)
    return str(value)  # never fail a log line over an odd extra: write what it prints as


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        # orjson escapes newlines inside strings, so a traceback still makes one line.
        return orjson.dumps(doc, default=_default).decode()


def setup_logging(level: str, fmt: LogFormat, stream: TextIO) -> None:
    """Configure the root logger once, for ``discofilter serve``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would be a line per request at info; discofilter logs requests at debug itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

"""Logging for every CLI command: one line per event, as ``key=value`` text or as JSON.

The text form is made for journald and grep::

    ts=2024-05-01T12:00:00.123Z level=info logger=trio_fwagent.operation \
        event="download progress" child=c1 op=abc pct=50

(one line in the output; wrapped here).

Fields are passed with :func:`log_event` (or ``extra={"fields": {...}}`` on any stdlib
logging call); plain log messages from other modules and libraries come out the same way
with ``event="<message>"``. Values are quoted when needed and newlines are escaped, so one
event is always one line. Under systemd (``JOURNAL_STREAM`` set) the timestamp is left to
the journal.

This module owns formatting and handler setup only; it must not decide what is logged.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal, TextIO

__all__ = ["JsonFormatter", "KeyValueFormatter", "format_value", "log_event", "setup_logging"]

# Attributes every LogRecord has; anything else in record.__dict__ came from `extra=`.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "fields", "taskName"}
)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Libraries whose INFO/DEBUG lines are per-request noise for an agent's log.
_NOISY = ("httpx", "httpcore", "hpack", "trio-websocket", "trio_websocket", "asyncio")


def log_event(
    logger: logging.Logger, event: str, /, level: int = logging.INFO, **fields: Any
) -> None:
    """Logs one event with structured fields.

    Args:
        logger: where to log.
        event: a short, fixed description ("download progress"); variable data goes in fields.
        level: a stdlib logging level.
        **fields: key=value pairs (values are rendered with :func:`format_value`).
    """
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields}, stacklevel=2)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = value
    extra = record.__dict__.get("fields")
    if isinstance(extra, Mapping):
        fields.update(extra)
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


_BARE_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@+,%")


def format_value(value: object) -> str:
    """Renders one value for the text form: bare when safe, else a JSON string (one line)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    text = value if isinstance(value, str) else str(value)
    if text and all(c in _BARE_SAFE for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _safe_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "_" for c in key) or "_"


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... event="..." key=value ...`` on one line."""

    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts: list[str] = []
        if self.timestamps:
            parts.append(f"ts={_timestamp(record)}")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={format_value(record.name)}")
        parts.append(f"event={format_value(record.getMessage())}")
        for key, value in _fields(record).items():
            parts.append(f"{_safe_key(key)}={format_value(value)}")
        if record.exc_info:
            parts.append(f"exc={format_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(
    level: str = "info",
    fmt: Literal["text", "json"] | str = "text",
    *,
    stream: TextIO | None = None,
) -> None:
    """Configures the root logger for a CLI command (idempotent: replaces earlier handlers).

    Args:
        level: "debug", "info", "warning" or "error".
        fmt: "text" (key=value, one line per event) or "json" (one object per line).
        stream: where to write; default stderr.

    Raises:
        ValueError: unknown level or format.
    """
    try:
        numeric = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None
    formatter: logging.Formatter
    if fmt == "text":
        formatter = KeyValueFormatter(timestamps="JOURNAL_STREAM" not in os.environ)
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))

"""How fedtrace processes log: one JSON object per line for collectors, or lines for people.

`configure_logging("json", …)` makes every record one JSON object on one line with
``time`` (ISO-8601 UTC), ``level``, ``event`` (the message), ``logger``, and the
fields passed as context::

    log.info("query answered", extra=context(kind="match", partner="FR", outcome="ok"))

`configure_logging("text", …)` keeps the human format nodes have always printed;
with ``None`` the choice follows the stream: text on a terminal, JSON otherwise
(a service manager or container runtime collecting stderr).

Context is for codes, counts and durations. Never pass an identifier, a key, or
anything a policy protects: logs leave the node.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT = "context"  # the `extra` key whose mapping becomes fields of a JSON line
_RESERVED = ("time", "level", "event", "logger", "exception")


def context(**fields: Any) -> dict[str, Any]:
    """The `extra=` argument that attaches `fields` to one record."""
    return {CONTEXT: fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; context fields never overwrite the standard ones."""

    def format(self, record: logging.LogRecord) -> str:
        moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
        line: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        fields = getattr(record, CONTEXT, None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                name = str(key)
                line[f"context_{name}" if name in _RESERVED else name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class _OurHandler(logging.StreamHandler[TextIO]):
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(
    fmt: LogFormat | None, level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send every record at `level` or above to `stream` (stderr) in `fmt`; returns the handler.

    Calling it again replaces the handler it installed before; other handlers stay.
    """
    out = sys.stderr if stream is None else stream
    if fmt is None:
        fmt = "text" if _is_terminal(out) else "json"
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = _OurHandler(out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False

"""Argument values more than one command group parses the same way."""

from __future__ import annotations

import re

from fedtrace.errors import FedtraceError

_REQUEST_ID = re.compile(r"^RQ-[0-9A-F]{10}$")


def parse_fields(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    if not fields:
        raise FedtraceError(
            f"--fields {text!r} names no field; use e.g. --fields tx_count,first_seen"
        )
    return fields


def parse_request_id(text: str) -> str:
    value = text.strip().upper()
    if not _REQUEST_ID.match(value):
        raise FedtraceError(
            f"{text!r} is not a request id (RQ- and 10 hex digits, as `node requests` lists them)"
        )
    return value

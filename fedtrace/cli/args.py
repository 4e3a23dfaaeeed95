"""Arguments more than one command group takes: their parsing, and their one help text each."""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Iterator, Sequence

from fedtrace.errors import FedtraceError

_REQUEST_ID = re.compile(r"^RQ-[0-9A-F]{10}$")

FEDERATION_HELP = "the federation file: your certificate and key, the CA and the nodes"
CASE_HELP = "case reference: 1–64 characters of letters, digits and . _ / - (no spaces)"
LEGAL_BASIS_HELP = (
    "legal basis code, e.g. MLA, EIO, JIT, FIU-EXCHANGE, COURT-ORDER, TREATY "
    "(any case; FED.toml [investigator] legal_bases adds codes)"
)
DATASET_HELP = "dataset to query, as the nodes name it (e.g. wallets, subjects)"
FORMAT_HELP = "output format (default: table)"
OUT_HELP = "write the report here instead of stdout, and print a one-line summary"


def parse_moment(option: str, text: str | None, *, end_of_day: bool = False) -> dt.datetime | None:
    """An ISO date or date-time (UTC unless given); with ``end_of_day`` a bare date
    includes that whole day (for --until). None when ``text`` is empty."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FedtraceError(
            f"{option} {text!r} is not a date such as 2026-11-25 or 2026-11-25T08:00Z"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    if end_of_day and len(text.strip()) == 10:
        moment += dt.timedelta(days=1, microseconds=-1)
    return moment


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


def add_federation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--federation", required=True, metavar="FED.toml", help=FEDERATION_HELP)


def add_case(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", required=True, metavar="REF", help=CASE_HELP)


def add_legal_basis(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    if required:
        parser.add_argument("--legal-basis", required=True, metavar="B", help=LEGAL_BASIS_HELP)
    else:
        parser.add_argument("--legal-basis", default="", metavar="B", help=LEGAL_BASIS_HELP)


def add_dataset(parser: argparse.ArgumentParser, metavar: str | None = None) -> None:
    parser.add_argument("--dataset", required=True, metavar=metavar, help=DATASET_HELP)


def add_format(parser: argparse.ArgumentParser, choices: Sequence[str]) -> None:
    parser.add_argument("--format", choices=tuple(choices), default="table", help=FORMAT_HELP)


def add_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE", help=OUT_HELP)


def without_help(parser: argparse.ArgumentParser, path: str = "fedtrace") -> Iterator[str]:
    """Every option or positional of `parser` and its sub-commands that has no help text."""
    for action in parser._actions:  # argparse offers no public way to walk its tree
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from without_help(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            if not action.help or action.help == argparse.SUPPRESS:
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

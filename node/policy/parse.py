"""Parsing a policy file strictly, with the file, line and column of every problem.

`read_policy` and `parse_policy` never raise for problems in the file: they
return a `PolicyParse` holding the policy (None when any error) and every
`Diagnostic`; `load_policy` is the strict form a node uses at start-up. Grants
are read by `node.policy.grants`, positions found by `node.policy.source`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrace.errors import ConfigError
from fedtrace.tomlconfig import suggest
from node.policy.grants import GRANT_KEYS, JURISDICTION, read_grant, type_name, unknown_keys
from node.policy.model import Policy, utc_now
from node.policy.source import Diagnostic, KeyPath, Problems, SourceMap

__all__ = [
    "TOP_KEYS",
    "Diagnostic",
    "KeyPath",
    "PolicyParse",
    "SourceMap",
    "deny_all_policy_text",
    "load_policy",
    "parse_policy",
    "read_policy",
]

TOP_KEYS = ("jurisdiction", "version", "defaults", "grant")
_DECODE_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


@dataclass(frozen=True)
class PolicyParse:
    """The outcome of reading a policy: the policy (None when any error) and every diagnostic."""

    policy: Policy | None
    diagnostics: tuple[Diagnostic, ...]
    sha256: str

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "warning")


def deny_all_policy_text(jurisdiction: str, version: str) -> str:
    return (
        f"# Disclosure policy of {jurisdiction}. Deny by default: no partner learns anything\n"
        "# until a [[grant]] below names it. See policies/README.md for every key.\n"
        f'jurisdiction = "{jurisdiction}"\n'
        f'version = "{version}"\n'
    )


def read_policy(path: Path, *, now: dt.datetime | None = None) -> PolicyParse:
    """Read and check a policy file; never raises for problems in the file itself."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return PolicyParse(
            None, (Diagnostic(str(path), 1, 1, "error", "disclosure policy not found"),), ""
        )
    except OSError as exc:
        return PolicyParse(
            None,
            (Diagnostic(str(path), 1, 1, "error", f"cannot read the policy: {exc.strerror}"),),
            "",
        )
    return parse_policy(raw, path, now=now)


def parse_policy(raw: bytes, path: Path, *, now: dt.datetime | None = None) -> PolicyParse:
    """Parse policy bytes; `now` decides which grants are expired or not yet valid."""
    sha256 = hashlib.sha256(raw).hexdigest()
    name = str(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return PolicyParse(
            None, (Diagnostic(name, line, 1, "error", f"not UTF-8 text ({exc.reason})"),), sha256
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _DECODE_POSITION.search(message)
        line, column = (
            (int(found.group(1)), int(found.group(2)))
            if found
            else (max(1, len(text.splitlines())), 1)
        )
        reason = _DECODE_POSITION.sub("", message).strip()
        return PolicyParse(
            None, (Diagnostic(name, line, column, "error", f"not valid TOML: {reason}"),), sha256
        )
    problems = Problems(name, SourceMap(text))
    policy = _policy(data, path, sha256, problems, now or utc_now())
    unique = dict.fromkeys(problems.items)  # [defaults] problems are met once per grant
    return PolicyParse(
        None if problems.has_errors else policy,
        tuple(sorted(unique, key=lambda d: (d.line, d.column))),
        sha256,
    )


def load_policy(path: Path) -> Policy:
    """The policy in `path`, or a ConfigError naming its first error (file:line:column)."""
    outcome = read_policy(path)
    if outcome.policy is None:
        first = outcome.errors[0]
        more = len(outcome.errors) - 1
        tail = f" (and {more} more; run `fedtrace policy check {path}`)" if more else ""
        raise ConfigError(f"{first.path}:{first.line}:{first.column}: {first.message}{tail}")
    return outcome.policy


def _policy(
    data: dict[str, Any], path: Path, sha256: str, problems: Problems, now: dt.datetime
) -> Policy:
    for key in data:
        if key not in TOP_KEYS:
            hint = "" if key in GRANT_KEYS else suggest(key, TOP_KEYS + GRANT_KEYS)
            if key in GRANT_KEYS or (hint and suggest(key, GRANT_KEYS) == hint):
                hint += " (grant keys belong in a [[grant]] table or in [defaults])"
            problems.error((key,), f"unknown top-level key {key!r}{hint}")
    jurisdiction = _top_string(data, "jurisdiction", problems)
    if jurisdiction and not JURISDICTION.match(jurisdiction):
        problems.error(
            ("jurisdiction",),
            f'jurisdiction {jurisdiction!r} is not a jurisdiction code such as "EE"',
            value=True,
        )
    version = _top_string(data, "version", problems)
    defaults: dict[str, Any] = {}
    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        problems.error(("defaults",), "'defaults' must be a table ([defaults])")
    else:
        defaults = raw_defaults
        unknown_keys(defaults, ("defaults",), GRANT_KEYS, problems, "[defaults]")
    raw_grants = data.get("grant", [])
    if not isinstance(raw_grants, list) or not all(isinstance(g, dict) for g in raw_grants):
        problems.error(("grant",), "'grant' must be an array of tables ([[grant]])")
        raw_grants = []
    grants = []
    for index, table in enumerate(raw_grants):
        grant = read_grant(table, defaults, index, problems, now)
        if grant is not None:
            grants.append(grant)
    if not raw_grants:
        problems.warning((), "no [[grant]]: this policy denies every request (deny by default)")
    return Policy(
        jurisdiction=jurisdiction or "",
        version=version or "",
        sha256=sha256,
        grants=tuple(grants),
        path=path,
    )


def _top_string(data: Mapping[str, Any], key: str, problems: Problems) -> str | None:
    value = data.get(key)
    if value is None:
        problems.error((), f"missing required key {key!r}")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.error(
            (key,), f"{key!r} must be a non-empty string, not {type_name(value)}", value=True
        )
        return None
    return value

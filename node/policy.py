"""Disclosure policies: the privacy officer's file, parsed strictly, and the decision per request.

Deny by default: a partner learns nothing from a dataset unless a valid grant
names both. The file is parsed into frozen values; every problem becomes a
`Diagnostic` carrying the file, line and column (Python's tomllib gives no
positions, so `SourceMap` finds them by scanning the source). A typo is an
error with the nearest valid key, never a silent default.

`decide` is the one policy decision every query kind goes through; it is a
plain function so tests call it without gRPC. Budgets (rate limits, item and
epsilon budgets) are counted in `node.budget`; the admission API that ties the
decision, the budgets and the audit trail together is `node.gate`.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtrace.errors import ConfigError
from fedtrace.tomlconfig import suggest


class Level(enum.IntEnum):
    """Disclosure levels, lowest first (docs/protocol.md); values match fedtrace.v1.Disclosure."""

    CARDINALITY = 1
    AGGREGATE = 2
    MEMBERSHIP = 3
    DISCLOSURE_REQUEST = 4
    OVERLAP = 5

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str, where: str) -> Level:
        for level in cls:
            if level.label == text:
                return level
        labels = ", ".join(level.label for level in cls)
        raise ConfigError(f"{where}: unknown disclosure level {text!r}; use one of {labels}")

    @classmethod
    def from_label(cls, text: str) -> Level | None:
        return next((level for level in cls if level.label == text), None)


class QueryKind(enum.StrEnum):
    """What a request asks for; each kind is served by grants of particular levels."""

    MATCH = "match"
    AGGREGATE = "aggregate"
    OVERLAP = "overlap"
    DISCLOSE = "disclose"
    PRESERVE = "preserve"


# The levels that answer a match query, and what each implies for the answer.
MATCH_LEVELS = (Level.CARDINALITY, Level.AGGREGATE, Level.MEMBERSHIP, Level.DISCLOSURE_REQUEST)

TOP_KEYS = ("jurisdiction", "version", "defaults", "grant")
GRANT_KEYS = (
    "partners",
    "datasets",
    "disclosure",
    "max_items_per_query",
    "rate_limit",
    "item_budget",
    "aggregate_columns",
    "clip",
    "min_cohort",
    "epsilon_per_query",
    "epsilon_budget",
    "noise",
    "legal_bases",
    "require_case",
    "valid_from",
    "expires",
    "total_only",
    "reveal_to_owner",
    "disclosable_fields",
    "approval",
    "answer_within_days",
    "preservation_days_max",
)
RATE_LIMIT_KEYS = ("queries", "per")
ITEM_BUDGET_KEYS = ("items", "per")
EPSILON_BUDGET_KEYS = ("epsilon", "per")
APPROVALS = ("automatic", "officer")
NOISE_VALUES = ("on", "off")

DEFAULT_MIN_COHORT = 1
DEFAULT_EPSILON_PER_QUERY = 1.0
DEFAULT_APPROVAL = "officer"
DEFAULT_PRESERVATION_DAYS_MAX = 90

_JURISDICTION = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")
_DATASET = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_LEGAL_BASIS = re.compile(r"^[A-Z][A-Z0-9._-]{0,63}$")
_PERIOD = re.compile(r"^([1-9][0-9]{0,4})([hd])$")
_NAMED_PERIODS = {"hour": 3600, "day": 86_400, "week": 7 * 86_400}
_AGGREGATE_CAPABLE = (Level.AGGREGATE, Level.MEMBERSHIP, Level.DISCLOSURE_REQUEST)


# --- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A sliding window: usage in the last `seconds` counts against a limit."""

    seconds: int
    label: str  # as written in the policy: "day", "30d" …

    @classmethod
    def parse(cls, text: str) -> Period | None:
        if text in _NAMED_PERIODS:
            return cls(_NAMED_PERIODS[text], text)
        match = _PERIOD.match(text)
        if not match:
            return None
        unit = 3600 if match.group(2) == "h" else 86_400
        return cls(int(match.group(1)) * unit, text)

    def describe(self) -> str:
        match = _PERIOD.match(self.label)
        if match:
            unit = "hours" if match.group(2) == "h" else "days"
            return f"{match.group(1)} {unit}"
        return self.label


@dataclass(frozen=True)
class RateLimit:
    queries: int
    per: Period


@dataclass(frozen=True)
class ItemBudget:
    items: int
    per: Period


@dataclass(frozen=True)
class EpsilonBudget:
    epsilon: float
    per: Period


@dataclass(frozen=True)
class Grant:
    """One grant after [defaults] were applied; every key has its final value."""

    partners: tuple[str, ...]
    datasets: tuple[str, ...]
    disclosure: Level
    max_items_per_query: int
    aggregate_columns: tuple[str, ...] = ()
    min_cohort: int = DEFAULT_MIN_COHORT
    epsilon_per_query: float = DEFAULT_EPSILON_PER_QUERY
    noise: bool = True
    line: int = 0  # line of the [[grant]] header in the file, for messages
    index: int = 0  # 1-based position among the file's grants
    rate_limit: RateLimit | None = None
    item_budget: ItemBudget | None = None
    clip: tuple[tuple[str, float, float], ...] = ()
    epsilon_budget: EpsilonBudget | None = None
    legal_bases: tuple[str, ...] = ()  # empty: any legal basis, including none
    require_case: bool = True
    valid_from: dt.datetime | None = None
    expires: dt.datetime | None = None
    total_only: bool = False
    reveal_to_owner: bool = False
    disclosable_fields: tuple[str, ...] = ()
    approval: str = DEFAULT_APPROVAL
    answer_within_days: int | None = None
    preservation_days_max: int = DEFAULT_PRESERVATION_DAYS_MAX

    def applies(self, partner: str, dataset: str) -> bool:
        return (partner in self.partners or "*" in self.partners) and dataset in self.datasets

    def valid_at(self, now: dt.datetime) -> bool:
        if self.valid_from is not None and now < self.valid_from:
            return False
        return self.expires is None or now < self.expires

    def serves(self, kind: QueryKind) -> bool:
        """Whether this grant can answer a request of `kind` at all."""
        if kind is QueryKind.MATCH:
            return self.disclosure in MATCH_LEVELS
        if kind is QueryKind.AGGREGATE:
            return self.disclosure in _AGGREGATE_CAPABLE and bool(self.aggregate_columns)
        if kind is QueryKind.OVERLAP:
            return self.disclosure is Level.OVERLAP
        return self.disclosure is Level.DISCLOSURE_REQUEST

    def clip_bounds(self, column: str) -> tuple[float, float] | None:
        return next(((lo, hi) for name, lo, hi in self.clip if name == column), None)

    def where(self) -> str:
        return f"grant #{self.index} (line {self.line})"


@dataclass(frozen=True)
class Policy:
    jurisdiction: str
    version: str
    sha256: str
    grants: tuple[Grant, ...]
    path: Path

    def grant_for(
        self,
        partner: str,
        dataset: str,
        kind: QueryKind = QueryKind.MATCH,
        now: dt.datetime | None = None,
    ) -> Grant | None:
        """The most permissive grant valid now that serves `kind` for this partner and dataset."""
        moment = now or utc_now()
        candidates = [
            g
            for g in self.grants
            if g.applies(partner, dataset) and g.serves(kind) and g.valid_at(moment)
        ]
        return max(candidates, key=_preference, default=None)

    def partners(self) -> tuple[str, ...]:
        names = sorted({p for g in self.grants for p in g.partners})
        return tuple(names)

    def datasets(self) -> tuple[str, ...]:
        return tuple(sorted({d for g in self.grants for d in g.datasets}))


def _preference(grant: Grant) -> tuple[int, int, int]:
    return (int(grant.disclosure), grant.max_items_per_query, -grant.index)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- diagnostics and source positions ------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a policy file, at a position; `severity` is "error" or "warning"."""

    path: str
    line: int
    column: int
    severity: str
    message: str

    def format(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.severity}: {self.message}"


KeyPath = tuple[str | int, ...]
_TABLE_ARRAY = re.compile(r"^\[\[\s*([^\]]+?)\s*\]\]")
_TABLE = re.compile(r"^\[\s*([^\]]+?)\s*\]")
_KEY = re.compile(
    r"""^((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=\s*"""
)
_INLINE_KEY = re.compile(r"""([A-Za-z0-9_-]+|"[^"]*")\s*=""")
_DECODE_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def _split_key(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return tuple(p.strip("\"'") for p in parts)


class SourceMap:
    """Line and column of each key (and its value) in a TOML source, found by scanning it.

    Paths are tuples such as ``("grant", 0, "rate_limit", "per")`` (grants counted from
    0) or ``("defaults", "noise")``. It understands tables, arrays of tables, dotted keys,
    inline tables, multi-line arrays and multi-line strings: enough for policy files.
    """

    def __init__(self, text: str) -> None:
        self.keys: dict[KeyPath, tuple[int, int]] = {}
        self.values: dict[KeyPath, tuple[int, int]] = {}
        self.last_line = max(1, len(text.splitlines()))
        self._scan(text)

    def _scan(self, text: str) -> None:
        current: KeyPath = ()
        arrays: dict[str, int] = {}
        skip_until: str | None = None
        depth = 0
        for number, raw in enumerate(text.splitlines(), 1):
            if skip_until is not None:
                if skip_until in raw:
                    skip_until = None
                continue
            if depth > 0:
                depth += _bracket_balance(raw)
                continue
            stripped = raw.lstrip()
            indent = len(raw) - len(stripped)
            if not stripped or stripped.startswith("#"):
                continue
            match = _TABLE_ARRAY.match(stripped)
            if match:
                name = _split_key(match.group(1))
                arrays[".".join(name)] = arrays.get(".".join(name), -1) + 1
                current = (*name, arrays[".".join(name)])
                self.keys.setdefault(current, (number, indent + 1))
                continue
            match = _TABLE.match(stripped)
            if match:
                name = _split_key(match.group(1))
                if name and name[0] in arrays:  # [grant.clip] belongs to the last [[grant]]
                    current = (name[0], arrays[name[0]], *name[1:])
                else:
                    current = name
                self.keys.setdefault(current, (number, indent + 1))
                continue
            match = _KEY.match(stripped)
            if not match:
                continue
            path = (*current, *_split_key(match.group(1)))
            self.keys.setdefault(path, (number, indent + 1))
            value_column = indent + match.end() + 1
            self.values.setdefault(path, (number, value_column))
            rest = stripped[match.end() :]
            if rest.startswith("{"):
                for inner in _INLINE_KEY.finditer(rest):
                    sub = (*path, inner.group(1).strip('"'))
                    self.keys.setdefault(sub, (number, value_column + inner.start()))
                    after = rest[inner.end() :]
                    offset = inner.end() + len(after) - len(after.lstrip())
                    self.values.setdefault(sub, (number, value_column + offset))
            for quote in ('"""', "'''"):
                if rest.startswith(quote) and rest.count(quote) == 1:
                    skip_until = quote
            if rest.startswith("["):
                depth = _bracket_balance(rest)

    def position(self, path: KeyPath, *, value: bool = False) -> tuple[int, int]:
        """Where `path` (or its nearest enclosing key) is written; (1, 1) when nowhere."""
        probe = path
        while probe:
            if value and probe in self.values:
                return self.values[probe]
            if probe in self.keys:
                return self.keys[probe]
            probe = probe[:-1]
        return (1, 1)


def _bracket_balance(text: str) -> int:
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', "", text.split("#", 1)[0])
    return without_strings.count("[") - without_strings.count("]")


class _Problems:
    """Collects diagnostics for one file, positioned through its SourceMap."""

    def __init__(self, path: str, source: SourceMap) -> None:
        self.path = path
        self.source = source
        self.items: list[Diagnostic] = []

    def add(self, severity: str, where: KeyPath, message: str, *, value: bool = False) -> None:
        line, column = self.source.position(where, value=value)
        self.items.append(Diagnostic(self.path, line, column, severity, message))

    def error(self, where: KeyPath, message: str, *, value: bool = False) -> None:
        self.add("error", where, message, value=value)

    def warning(self, where: KeyPath, message: str, *, value: bool = False) -> None:
        self.add("warning", where, message, value=value)

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)


# --- parsing ----------------------------------------------------------------------------------


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
    problems = _Problems(name, SourceMap(text))
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
    data: dict[str, Any], path: Path, sha256: str, problems: _Problems, now: dt.datetime
) -> Policy:
    for key in data:
        if key not in TOP_KEYS:
            hint = "" if key in GRANT_KEYS else suggest(key, TOP_KEYS + GRANT_KEYS)
            if key in GRANT_KEYS or (hint and suggest(key, GRANT_KEYS) == hint):
                hint += " (grant keys belong in a [[grant]] table or in [defaults])"
            problems.error((key,), f"unknown top-level key {key!r}{hint}")
    jurisdiction = _top_string(data, "jurisdiction", problems)
    if jurisdiction and not _JURISDICTION.match(jurisdiction):
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
        _unknown_keys(defaults, ("defaults",), GRANT_KEYS, problems, "[defaults]")
    raw_grants = data.get("grant", [])
    if not isinstance(raw_grants, list) or not all(isinstance(g, dict) for g in raw_grants):
        problems.error(("grant",), "'grant' must be an array of tables ([[grant]])")
        raw_grants = []
    grants = []
    for index, table in enumerate(raw_grants):
        grant = _grant(table, defaults, index, problems, now)
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


def _top_string(data: Mapping[str, Any], key: str, problems: _Problems) -> str | None:
    value = data.get(key)
    if value is None:
        problems.error((), f"missing required key {key!r}")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.error(
            (key,), f"{key!r} must be a non-empty string, not {_type(value)}", value=True
        )
        return None
    return value


def _unknown_keys(
    table: Mapping[str, Any],
    where: KeyPath,
    valid: tuple[str, ...],
    problems: _Problems,
    label: str,
) -> None:
    for key in table:
        if key not in valid:
            problems.error((*where, key), f"unknown key {key!r} in {label}{suggest(key, valid)}")


def _type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return "a date/time"
    return type(value).__name__


class _GrantReader:
    """Reads one grant's keys, falling back to [defaults]; problems are collected, not raised."""

    def __init__(
        self, table: dict[str, Any], defaults: dict[str, Any], index: int, problems: _Problems
    ) -> None:
        self.table = table
        self.defaults = defaults
        self.index = index
        self.problems = problems
        self.label = f"grant #{index + 1}"

    def origin(self, key: str) -> KeyPath:
        return ("grant", self.index, key) if key in self.table else ("defaults", key)

    def raw(self, key: str) -> Any:
        return self.table[key] if key in self.table else self.defaults.get(key)

    def explicit(self, key: str) -> bool:
        return key in self.table

    def _label(self, key: str) -> str:
        # A bad value in [defaults] is reported once, as [defaults]'s, not once per grant.
        return "[defaults]" if key in self.defaults and key not in self.table else self.label

    def error(self, key: str, message: str, *, sub: str | None = None) -> None:
        where = self.origin(key) if sub is None else (*self.origin(key), sub)
        self.problems.error(where, f"{self._label(key)}: {message}", value=True)

    def warning(self, key: str, message: str) -> None:
        self.problems.warning(
            self.origin(key) if self.raw(key) is not None else ("grant", self.index),
            f"{self.label}: {message}",
        )

    def integer(self, key: str, minimum: int, default: int | None) -> int | None:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"{key!r} must be a whole number, not {_type(value)}")
            return default
        if value < minimum:
            self.error(key, f"{key!r} must be at least {minimum}, not {value}")
            return default
        return value

    def number(self, key: str, default: float) -> float:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"{key!r} must be a number, not {_type(value)}")
            return default
        if value <= 0:
            self.error(key, f"{key!r} must be positive, not {value}")
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"{key!r} must be true or false, not {_type(value)}")
            return default
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            hint = suggest(value, choices) if isinstance(value, str) else ""
            self.error(
                key,
                f"{key!r} must be one of {', '.join(map(repr, choices))}, not {_type(value)}{hint}",
            )
            return default
        return value

    def strings(self, key: str, pattern: re.Pattern[str] | None, what: str) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"{key!r} must be an array of strings, not {_type(value)}")
            return ()
        for item in value:
            if pattern is not None and item != "*" and not pattern.match(item):
                fixed = item.strip().upper() if pattern is not _DATASET else item.strip().lower()
                hint = f' (did you mean "{fixed}"?)' if pattern.match(fixed) else ""
                self.error(key, f"{item!r} in {key!r} is not {what}{hint}")
        if len(set(value)) != len(value):
            self.warning(key, f"{key!r} lists a name twice")
        return tuple(value)

    def period_table(self, key: str, amount_key: str, integer: bool) -> tuple[float, Period] | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.error(
                key,
                f"{key!r} must be a table such as "
                f'{{ {amount_key} = 50, per = "day" }}, not {_type(value)}',
            )
            return None
        origin = self.origin(key)
        for sub in value:
            if sub not in (amount_key, "per"):
                self.problems.error(
                    (*origin, sub),
                    f"{self._label(key)}: unknown key {sub!r} in "
                    f"{key!r}{suggest(sub, (amount_key, 'per'))}",
                )
        amount = value.get(amount_key)
        per = value.get("per")
        ok = True
        if amount is None or per is None:
            missing = amount_key if amount is None else "per"
            self.error(key, f"{key!r} needs {missing!r}")
            return None
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or (integer and not isinstance(amount, int))
            or amount <= 0
        ):
            what = "a positive whole number" if integer else "a positive number"
            self.error(
                key, f"'{key}.{amount_key}' must be {what}, not {_type(amount)}", sub=amount_key
            )
            ok = False
        period = Period.parse(per) if isinstance(per, str) else None
        if period is None:
            self.error(
                key,
                f'\'{key}.per\' must be "hour", "day", "week", "<N>h" or '
                f'"<N>d" (e.g. "30d"), not {_type(per)}',
                sub="per",
            )
            ok = False
        return (float(amount), period) if ok and period is not None else None

    def moment(self, key: str, *, end: bool) -> dt.datetime | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        hint = " (write the date without quotes, e.g. 2027-01-01)" if isinstance(value, str) else ""
        self.error(key, f"{key!r} must be a TOML date or date-time, not {_type(value)}{hint}")
        return None


def _grant(
    table: dict[str, Any],
    defaults: dict[str, Any],
    index: int,
    problems: _Problems,
    now: dt.datetime,
) -> Grant | None:
    before = len([d for d in problems.items if d.severity == "error"])
    reader = _GrantReader(table, defaults, index, problems)
    _unknown_keys(table, ("grant", index), GRANT_KEYS, problems, reader.label)
    here: KeyPath = ("grant", index)
    line = problems.source.position(here)[0]

    partners = reader.strings("partners", _JURISDICTION, 'a jurisdiction code such as "FR"')
    datasets = reader.strings("datasets", _DATASET, 'a dataset name such as "wallets"')
    if reader.raw("partners") is None:
        problems.error(here, f"{reader.label}: missing 'partners' (who may ask)")
    elif not partners:
        reader.error("partners", "'partners' is empty: this grant can never apply")
    if reader.raw("datasets") is None:
        problems.error(here, f"{reader.label}: missing 'datasets' (what may be asked)")
    elif not datasets:
        reader.error("datasets", "'datasets' is empty: this grant can never apply")
    if "*" in datasets:
        reader.error("datasets", "'datasets' must name each dataset; \"*\" is not allowed")
    if "*" in partners:
        reader.warning("partners", '"*" grants every member of the federation')

    level: Level | None = None
    disclosure = reader.raw("disclosure")
    labels = tuple(lv.label for lv in Level)
    if disclosure is None:
        problems.error(here, f"{reader.label}: missing 'disclosure' (one of {', '.join(labels)})")
    elif not isinstance(disclosure, str) or Level.from_label(disclosure) is None:
        hint = suggest(disclosure, labels) if isinstance(disclosure, str) else ""
        reader.error(
            "disclosure",
            f"unknown disclosure level {disclosure!r}; use one of {', '.join(labels)}{hint}",
        )
    else:
        level = Level.from_label(disclosure)

    max_items = reader.integer("max_items_per_query", 1, None)
    if max_items is None and reader.raw("max_items_per_query") is None:
        if level is Level.OVERLAP or level is None:
            max_items = 0
        else:
            problems.error(
                here,
                f"{reader.label}: missing 'max_items_per_query' (set it in the "
                "grant or in [defaults])",
            )
    rate = reader.period_table("rate_limit", "queries", integer=True)
    items = reader.period_table("item_budget", "items", integer=True)
    epsilon_budget = reader.period_table("epsilon_budget", "epsilon", integer=False)
    columns = reader.strings("aggregate_columns", None, "")
    noise = reader.choice("noise", NOISE_VALUES, "on") == "on"
    clip = _clip(reader, columns)
    grant_kwargs: dict[str, Any] = dict(
        min_cohort=reader.integer("min_cohort", 1, DEFAULT_MIN_COHORT) or DEFAULT_MIN_COHORT,
        epsilon_per_query=reader.number("epsilon_per_query", DEFAULT_EPSILON_PER_QUERY),
        legal_bases=reader.strings("legal_bases", _LEGAL_BASIS, 'a legal-basis code such as "MLA"'),
        require_case=reader.boolean("require_case", True),
        valid_from=reader.moment("valid_from", end=False),
        expires=reader.moment("expires", end=True),
        total_only=reader.boolean("total_only", False),
        reveal_to_owner=reader.boolean("reveal_to_owner", False),
        disclosable_fields=reader.strings("disclosable_fields", None, ""),
        approval=reader.choice("approval", APPROVALS, DEFAULT_APPROVAL),
        answer_within_days=reader.integer("answer_within_days", 1, None),
        preservation_days_max=reader.integer(
            "preservation_days_max", 1, DEFAULT_PRESERVATION_DAYS_MAX
        ),
    )
    if (
        reader.raw("legal_bases") is not None
        and not grant_kwargs["legal_bases"]
        and isinstance(reader.raw("legal_bases"), list)
    ):
        reader.error(
            "legal_bases",
            "'legal_bases' is empty: no query could ever name an "
            "accepted legal basis (leave the key out to accept any)",
        )

    _semantic_checks(reader, level, columns, noise, clip, grant_kwargs, now)
    errors_now = len([d for d in problems.items if d.severity == "error"])
    if errors_now > before or level is None or max_items is None:
        return None
    return Grant(
        partners=partners,
        datasets=datasets,
        disclosure=level,
        max_items_per_query=max_items,
        aggregate_columns=columns,
        noise=noise,
        clip=clip,
        line=line,
        index=index + 1,
        rate_limit=RateLimit(int(rate[0]), rate[1]) if rate else None,
        item_budget=ItemBudget(int(items[0]), items[1]) if items else None,
        epsilon_budget=EpsilonBudget(epsilon_budget[0], epsilon_budget[1])
        if epsilon_budget
        else None,
        **grant_kwargs,
    )


def _clip(reader: _GrantReader, columns: tuple[str, ...]) -> tuple[tuple[str, float, float], ...]:
    value = reader.raw("clip")
    if value is None:
        return ()
    if not isinstance(value, dict):
        reader.error(
            "clip",
            "'clip' must be a table of [low, high] bounds per column, e.g. "
            "{ total_in_eur = [0, 1000000] }",
        )
        return ()
    bounds = []
    for column, pair in value.items():
        ok = (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
        )
        if not ok:
            reader.error("clip", f"'clip.{column}' must be [low, high] numbers", sub=column)
            continue
        low, high = float(pair[0]), float(pair[1])
        if low >= high:
            reader.error(
                "clip",
                f"'clip.{column}' low bound {pair[0]} is not below the high bound {pair[1]}",
                sub=column,
            )
            continue
        if column not in columns:
            reader.error(
                "clip",
                f"'clip.{column}' bounds a column that 'aggregate_columns' does "
                f"not list{suggest(column, columns)}",
                sub=column,
            )
            continue
        bounds.append((column, low, high))
    return tuple(bounds)


def _semantic_checks(
    reader: _GrantReader,
    level: Level | None,
    columns: tuple[str, ...],
    noise: bool,
    clip: tuple[tuple[str, float, float], ...],
    values: dict[str, Any],
    now: dt.datetime,
) -> None:
    here: KeyPath = ("grant", reader.index)
    problems = reader.problems
    valid_from, expires = values["valid_from"], values["expires"]
    if valid_from and expires and expires <= valid_from:
        reader.error(
            "expires",
            f"'expires' {expires:%Y-%m-%d %H:%M}Z is not after 'valid_from' "
            f"{valid_from:%Y-%m-%d %H:%M}Z: this grant can never apply",
        )
    elif expires and expires <= now:
        reader.warning("expires", f"expired on {expires:%Y-%m-%d %H:%M} UTC: it no longer applies")
    elif valid_from and valid_from > now:
        reader.warning(
            "valid_from", f"not valid before {valid_from:%Y-%m-%d %H:%M} UTC: it does not apply yet"
        )
    if level is Level.AGGREGATE and not columns:
        problems.error(
            reader.origin("aggregate_columns")
            if reader.raw("aggregate_columns") is not None
            else here,
            f"{reader.label}: an aggregate grant needs 'aggregate_columns'; without "
            "them it can never apply",
        )
    if columns and level is not None and level in _AGGREGATE_CAPABLE and noise:
        written = reader.raw("clip")
        bounded = set(written) if isinstance(written, dict) else set()  # bad bounds: said once
        for column in columns:
            if column not in bounded:
                reader.error(
                    "aggregate_columns",
                    f"aggregate column {column!r} has no 'clip' "
                    "bounds: noise cannot be calibrated without them (add clip = { "
                    f"{column} = [low, high] }})",
                )
    if not noise and (columns or reader.explicit("noise")):
        reader.warning(
            "noise",
            'noise = "off": aggregates are exact; differential privacy does not protect them',
        )
    if level is None:
        return
    irrelevant: list[tuple[str, str]] = []
    if level not in _AGGREGATE_CAPABLE:
        irrelevant += [
            (k, "aggregate")
            for k in (
                "aggregate_columns",
                "clip",
                "total_only",
                "epsilon_per_query",
                "epsilon_budget",
            )
        ]
    elif not columns:
        irrelevant += [(k, "aggregate") for k in ("total_only", "epsilon_budget")]
    if level is not Level.OVERLAP:
        irrelevant.append(("reveal_to_owner", "overlap"))
    if level is not Level.DISCLOSURE_REQUEST:
        irrelevant += [
            (k, "disclosure-request")
            for k in (
                "disclosable_fields",
                "approval",
                "answer_within_days",
                "preservation_days_max",
            )
        ]
    for key, needs in irrelevant:
        if reader.explicit(key):
            reader.warning(
                key,
                f"{key!r} has no effect on a {level.label} grant (it applies to {needs} grants)",
            )
    if level is Level.DISCLOSURE_REQUEST and not values["disclosable_fields"]:
        reader.warning(
            "disclosable_fields" if reader.raw("disclosable_fields") is not None else "disclosure",
            "a disclosure-request grant without "
            "'disclosable_fields' can confirm a hit but disclose no attribute",
        )


# --- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestFacts:
    """What the node knows about a request when it decides: all from the certificate or header."""

    partner: str
    role: str
    kind: QueryKind
    dataset: str
    asked: Level
    item_count: int
    case_ref: str = ""
    legal_basis: str = ""
    columns: tuple[str, ...] = ()
    epsilon: float = 0.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    level: Level | None  # the level granted, possibly lower than asked
    reason: str
    code: str  # "ok" | "PERMISSION_DENIED" | "INVALID_ARGUMENT"
    grant: Grant | None = field(default=None)


def _answer_level(kind: QueryKind, grant: Grant, asked: Level) -> Level:
    if kind is QueryKind.MATCH:
        level = min(asked, grant.disclosure) if asked in MATCH_LEVELS else grant.disclosure
        if level == Level.AGGREGATE:  # aggregates need their own exchange; a match gives a count
            level = Level.CARDINALITY
        if level == Level.DISCLOSURE_REQUEST:
            level = Level.MEMBERSHIP
        return level
    if kind is QueryKind.AGGREGATE:
        return Level.AGGREGATE
    if kind is QueryKind.OVERLAP:
        return Level.OVERLAP
    return Level.DISCLOSURE_REQUEST


def _refusal(policy: Policy, facts: RequestFacts, grant: Grant) -> Decision | None:
    """Why `grant` cannot answer this request, or None when it can."""
    j = policy.jurisdiction
    if grant.require_case and not facts.case_ref:
        return Decision(
            False,
            None,
            f"{j}'s policy {policy.version} requires a case reference "
            f"for {facts.partner} on {facts.dataset!r}; pass --case",
            "INVALID_ARGUMENT",
        )
    if grant.legal_bases and facts.legal_basis not in grant.legal_bases:
        named = repr(facts.legal_basis) if facts.legal_basis else "no legal basis"
        return Decision(
            False,
            None,
            f"{j}'s policy {policy.version} does not accept {named} for "
            f"{facts.partner} on {facts.dataset!r}; accepted: "
            f"{', '.join(grant.legal_bases)} (pass --legal-basis)",
            "PERMISSION_DENIED",
        )
    if facts.kind is not QueryKind.OVERLAP and facts.item_count > grant.max_items_per_query:
        return Decision(
            False,
            None,
            f"{facts.item_count} items exceed {j}'s limit of "
            f"{grant.max_items_per_query} items per query for {facts.partner} on "
            f"{facts.dataset!r}; split the watchlist",
            "PERMISSION_DENIED",
        )
    extra = [c for c in facts.columns if c not in grant.aggregate_columns]
    if extra:
        return Decision(
            False,
            None,
            f"{j}'s policy {policy.version} does not let "
            f"{facts.partner} aggregate {', '.join(extra)} of {facts.dataset!r}; "
            f"allowed: {', '.join(grant.aggregate_columns) or 'none'}",
            "PERMISSION_DENIED",
        )
    if facts.epsilon > grant.epsilon_per_query + 1e-12:
        return Decision(
            False,
            None,
            f"epsilon {facts.epsilon:g} exceeds {j}'s limit of "
            f"{grant.epsilon_per_query:g} per query for {facts.partner} on "
            f"{facts.dataset!r}",
            "PERMISSION_DENIED",
        )
    return None


def decide(policy: Policy, facts: RequestFacts, now: dt.datetime | None = None) -> Decision:
    """The policy's answer to one request: which grant applies and at which level, or why not."""
    moment = now or utc_now()
    j = policy.jurisdiction
    who = f"{facts.partner} ({facts.role})"
    if facts.role != "investigator":
        return Decision(
            False,
            None,
            f"{j} answers {facts.kind.value} queries only from "
            f"investigator certificates, not from {who}",
            "PERMISSION_DENIED",
        )
    naming = [
        g for g in policy.grants if g.applies(facts.partner, facts.dataset) and g.serves(facts.kind)
    ]
    current = [g for g in naming if g.valid_at(moment)]
    if not current:
        reason = (
            f"{j}'s policy {policy.version} grants {facts.partner} no "
            f"{facts.kind.value} access to dataset {facts.dataset!r}"
        )
        if naming:
            reason += "; " + _validity_note(naming, moment)
        return Decision(
            False, None, reason + f"; ask {j}'s privacy officer for a grant", "PERMISSION_DENIED"
        )
    ranked = sorted(current, key=_preference, reverse=True)
    refusals = [(g, _refusal(policy, facts, g)) for g in ranked]
    usable = [g for g, refusal in refusals if refusal is None]
    if not usable:
        first = refusals[0][1]
        assert first is not None
        return first
    grant = usable[0]
    return Decision(True, _answer_level(facts.kind, grant, facts.asked), "", "ok", grant)


def _validity_note(grants: Iterable[Grant], now: dt.datetime) -> str:
    notes = []
    for grant in grants:
        if grant.expires is not None and now >= grant.expires:
            notes.append(f"{grant.where()} expired on {grant.expires:%Y-%m-%d %H:%M} UTC")
        elif grant.valid_from is not None and now < grant.valid_from:
            notes.append(f"{grant.where()} applies from {grant.valid_from:%Y-%m-%d %H:%M} UTC")
    return "; ".join(notes)


def decide_match(
    policy: Policy, partner: str, role: str, dataset: str, asked: Level, item_count: int
) -> Decision:
    """May `partner` run a match of `item_count` items on `dataset`, and at which level?

    Kept for callers that know no case or legal basis; the node itself goes through
    `node.gate.Gate.admit`, which passes both.
    """
    return decide(
        policy,
        RequestFacts(partner, role, QueryKind.MATCH, dataset, asked, item_count, case_ref="-"),
    )

"""Reading one `[[grant]]` table of a policy file: types, ranges, defaults and coherence.

Every problem is collected as a positioned `Diagnostic` (through `Problems`), never
raised: a typo is an error with the nearest valid key, a key that has no effect
on the grant's level is a warning, and a grant with errors is left out.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from fedtrace.tomlconfig import suggest
from fedtrace.wire import Level
from node.policy.model import (
    AGGREGATE_LEVELS,
    DEFAULT_APPROVAL,
    DEFAULT_EPSILON_PER_QUERY,
    DEFAULT_MIN_COHORT,
    DEFAULT_PRESERVATION_DAYS_MAX,
    EpsilonBudget,
    Grant,
    ItemBudget,
    Period,
    RateLimit,
)
from node.policy.source import KeyPath, Problems

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
    "epsilon_lifetime",
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
    "freeze_days_max",
    "freeze_approval",
    "monitor",
)
APPROVALS = ("automatic", "officer")
NOISE_VALUES = ("on", "off")

JURISDICTION = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")
_DATASET = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_LEGAL_BASIS = re.compile(r"^[A-Z][A-Z0-9._-]{0,63}$")


def unknown_keys(
    table: Mapping[str, Any],
    where: KeyPath,
    valid: tuple[str, ...],
    problems: Problems,
    label: str,
) -> None:
    for key in table:
        if key not in valid:
            problems.error((*where, key), f"unknown key {key!r} in {label}{suggest(key, valid)}")


def type_name(value: object) -> str:
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
        self, table: dict[str, Any], defaults: dict[str, Any], index: int, problems: Problems
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
            self.error(key, f"{key!r} must be a whole number, not {type_name(value)}")
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
            self.error(key, f"{key!r} must be a number, not {type_name(value)}")
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
            self.error(key, f"{key!r} must be true or false, not {type_name(value)}")
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
                f"{key!r} must be one of {', '.join(map(repr, choices))}, "
                f"not {type_name(value)}{hint}",
            )
            return default
        return value

    def strings(self, key: str, pattern: re.Pattern[str] | None, what: str) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"{key!r} must be an array of strings, not {type_name(value)}")
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
                f'{{ {amount_key} = 50, per = "day" }}, not {type_name(value)}',
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
                key, f"'{key}.{amount_key}' must be {what}, not {type_name(amount)}", sub=amount_key
            )
            ok = False
        period = Period.parse(per) if isinstance(per, str) else None
        if period is None:
            self.error(
                key,
                f'\'{key}.per\' must be "hour", "day", "week", "<N>h" or '
                f'"<N>d" (e.g. "30d"), not {type_name(per)}',
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
        self.error(key, f"{key!r} must be a TOML date or date-time, not {type_name(value)}{hint}")
        return None


def read_grant(
    table: dict[str, Any],
    defaults: dict[str, Any],
    index: int,
    problems: Problems,
    now: dt.datetime,
) -> Grant | None:
    """Grant number `index` (0-based) with [defaults] applied, or None when it has errors."""
    before = len([d for d in problems.items if d.severity == "error"])
    reader = _GrantReader(table, defaults, index, problems)
    unknown_keys(table, ("grant", index), GRANT_KEYS, problems, reader.label)
    here: KeyPath = ("grant", index)
    line = problems.source.position(here)[0]

    partners = reader.strings("partners", JURISDICTION, 'a jurisdiction code such as "FR"')
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
        epsilon_lifetime=_positive_or_none(reader, "epsilon_lifetime"),
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
        freeze_days_max=reader.integer("freeze_days_max", 1, None),
        freeze_approval=reader.choice("freeze_approval", APPROVALS, DEFAULT_APPROVAL),
        monitor=_monitor(reader),
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
    if columns and level is not None and level in AGGREGATE_LEVELS and noise:
        # Windows slide: 10 per 30 days is ~122 a year. A partner that queries every
        # window must still meet a cap over the grant's whole life.
        for key, example in (
            ("epsilon_budget", 'epsilon_budget = { epsilon = 10.0, per = "30d" }'),
            ("epsilon_lifetime", "epsilon_lifetime = 40.0"),
        ):
            if reader.raw(key) is None:
                problems.error(
                    here,
                    f"{reader.label}: an aggregate grant with noise needs {key!r}, or a "
                    f"partner can spend privacy loss without end (add {example})",
                )
        lifetime, per_query = values["epsilon_lifetime"], values["epsilon_per_query"]
        if lifetime is not None and lifetime < per_query:
            reader.error(
                "epsilon_lifetime",
                f"'epsilon_lifetime' {lifetime:g} is below 'epsilon_per_query' "
                f"{per_query:g}: no query could ever be answered",
            )
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
    if level not in AGGREGATE_LEVELS:
        irrelevant += [
            (k, "aggregate")
            for k in (
                "aggregate_columns",
                "clip",
                "total_only",
                "epsilon_per_query",
                "epsilon_budget",
                "epsilon_lifetime",
            )
        ]
    elif not columns:
        irrelevant += [
            (k, "aggregate") for k in ("total_only", "epsilon_budget", "epsilon_lifetime")
        ]
    if level is not Level.OVERLAP:
        irrelevant.append(("reveal_to_owner", "overlap"))
    else:
        irrelevant.append(("monitor", "match and aggregate"))
    if level is not Level.DISCLOSURE_REQUEST:
        irrelevant += [
            (k, "disclosure-request")
            for k in (
                "disclosable_fields",
                "approval",
                "answer_within_days",
                "preservation_days_max",
                "freeze_days_max",
                "freeze_approval",
            )
        ]
    elif values["freeze_days_max"] is None and reader.explicit("freeze_approval"):
        reader.warning(
            "freeze_approval",
            "'freeze_approval' has no effect without 'freeze_days_max': freeze orders are refused",
        )
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


def _monitor(reader: _GrantReader) -> str:
    """The monitor whose sealed opening every answer under the grant needs, or ""."""
    value = reader.raw("monitor")
    if value is None:
        return ""
    if not isinstance(value, str) or not JURISDICTION.match(value):
        reader.error(
            "monitor",
            f"'monitor' must be the name on a monitor's certificate, e.g. \"OVS\", not {value!r}",
        )
        return ""
    return value


def _positive_or_none(reader: _GrantReader, key: str) -> float | None:
    """A positive number, or None when the key is absent (an error is reported if invalid)."""
    if reader.raw(key) is None:
        return None
    value = reader.number(key, 0.0)
    if not value > 0:
        reader.error(key, f"{key!r} must be a positive number")
        return None
    return value

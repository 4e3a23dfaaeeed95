"""Strict TOML reading: files become validated values, and a typo is an error, never a default.

Every parser in fedtrace (node.toml, FED.toml, policy files) reads tables through
`TableReader`, which tracks the keys it consumed and reports the rest as unknown
with the nearest valid key as a suggestion.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from fedtrace.errors import ConfigError

T = TypeVar("T")


def load_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into one ConfigError line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def suggest(key: str, valid: Sequence[str]) -> str:
    """' (did you mean "x"?)' when a valid key is close to `key`, else ''."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class TableReader:
    """Reads one TOML table key by key; `finish()` rejects keys nobody asked for."""

    def __init__(self, table: dict[str, Any], where: str, valid_keys: Sequence[str]) -> None:
        self._table = table
        self._where = where
        self._valid = tuple(valid_keys)

    def _raw(self, key: str) -> Any:
        if key not in self._valid:  # a programming error, not a user error
            raise KeyError(f"{key} is not declared for {self._where}")
        return self._table.get(key)

    def has(self, key: str) -> bool:
        return self._raw(key) is not None

    def required(self, key: str, kind: type[T]) -> T:
        value = self._raw(key)
        if value is None:
            unknown = [k for k in self._table if k not in self._valid]
            typo = difflib.get_close_matches(key, unknown, n=1, cutoff=0.6)
            hint = f" (found {typo[0]!r}: a typo?)" if typo else ""
            raise ConfigError(f"{self._where}: missing required key {key!r}{hint}")
        return self._check(key, value, kind)

    def optional(self, key: str, kind: type[T], default: T) -> T:
        value = self._raw(key)
        if value is None:
            return default
        return self._check(key, value, kind)

    def string_list(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        value = self._raw(key)
        if value is None:
            return tuple(default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._where}: {key!r} must be a list of strings")
        return tuple(value)

    def tables(self, key: str) -> list[dict[str, Any]]:
        value = self._raw(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{self._where}: {key!r} must be an array of tables ([[{key}]])")
        return value

    def finish(self) -> None:
        for key in self._table:
            if key not in self._valid:
                raise ConfigError(f"{self._where}: unknown key {key!r}{suggest(key, self._valid)}")

    def _check(self, key: str, value: Any, kind: type[T]) -> T:
        # bool is an int subclass in Python; a policy must not read `true` as 1.
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]
        if not ok:
            raise ConfigError(
                f"{self._where}: {key!r} must be {kind.__name__}, not {type(value).__name__}"
            )
        return value  # type: ignore[no-any-return]

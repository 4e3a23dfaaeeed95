"""Positions in a policy file: `Diagnostic` (file:line:column), `KeyPath`, `SourceMap`.

Python's tomllib gives no positions, so `SourceMap` finds the line and column of
each key (and its value) by scanning the TOML source; `Problems` collects the
diagnostics of one file, positioned through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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


class Problems:
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

"""What a benchmark run collects: figures that name their method, targets, and the table."""

from __future__ import annotations

import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20

Say = Callable[[str], None]


@dataclass(frozen=True)
class Figure:
    section: str
    name: str
    value: float
    unit: str
    method: str


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    limit: float
    comparison: str  # ">=", "<=" or "<"
    unit: str

    @property
    def met(self) -> bool:
        if self.comparison == ">=":
            return self.measured >= self.limit
        if self.comparison == "<":
            return self.measured < self.limit
        return self.measured <= self.limit


class Bench:
    """Collects figures and targets; ``say`` reports progress on stderr."""

    def __init__(self, say: Say) -> None:
        self.figures: list[Figure] = []
        self.targets: list[Target] = []
        self.notes: list[str] = []
        self.say = say

    def add(self, section: str, name: str, value: float, unit: str, method: str) -> float:
        self.figures.append(Figure(section, name, value, unit, method))
        return value

    def target(self, name: str, measured: float, comparison: str, limit: float, unit: str) -> None:
        self.targets.append(Target(name, measured, limit, comparison, unit))


def wallet_items(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct canonical Ethereum addresses, deterministic for a seed."""
    rng = random.Random(seed)
    return ["0x" + rng.randbytes(20).hex() for _ in range(count)]


def timed(action: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(wall seconds, result) of ``action(*args)``."""
    started = time.perf_counter()
    result = action(*args)
    return time.perf_counter() - started, result


def render_table(bench: Bench) -> str:
    lines = [
        f"fedtrace bench — {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "",
    ]
    section = ""
    for figure in bench.figures:
        if figure.section != section:
            section = figure.section
            lines.append(f"[{section}]")
        value = f"{figure.value:,.0f}" if abs(figure.value) >= 1000 else f"{figure.value:.3f}"
        lines.append(f"  {figure.name:<46} {value:>12} {figure.unit:<8} {figure.method}")
    lines += ["", "[targets]"]
    for target in bench.targets:
        lines.append(
            f"  {'MET    ' if target.met else 'NOT MET'} {target.name:<46} "
            f"{target.measured:>10.3f} {target.comparison} {target.limit:g} "
            f"{target.unit}"
        )
    for note in bench.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines) + "\n"

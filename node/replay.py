"""Replay protection for queries: every QueryContext carries a fresh nonce and the time it was sent.

The gate refuses a request whose nonce is missing or malformed, whose timestamp is
outside the window around the node's clock (``INVALID_ARGUMENT``), or whose nonce
was already seen inside the window (``ALREADY_EXISTS``). Nonces are remembered in
memory for twice the window: anything older is refused by its timestamp anyway.

A restart does not open a replay gap: on start the guard is seeded from the tail
of the node's own audit trail, which records every request's nonce and query
time (docs/audit.md), so a request answered just before a restart is still
recognised just after it. Nothing else is persisted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from node.audit import TRAIL_FILE, AuditLog

NONCE_BYTES = 16
DEFAULT_WINDOW_SECONDS = 300.0
_TAIL_BLOCK = 1 << 16


class ReplayRefused(Exception):
    """A request the replay guard refuses; `code` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ReplayWindow:
    """How far a query's timestamp may be from the node's clock, either way."""

    seconds: float = DEFAULT_WINDOW_SECONDS


def _utc_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


class ReplayGuard:
    """Remembers the nonces of recent requests; thread-safe."""

    def __init__(
        self,
        window: ReplayWindow = ReplayWindow(),
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.window = window
        self._clock = clock
        self._seen: OrderedDict[str, int] = OrderedDict()  # nonce hex -> query time (ms)
        self._lock = threading.Lock()

    def check(self, nonce_hex: str, timestamp_unix_ms: int) -> None:
        """Accept and remember this nonce, or raise ReplayRefused saying why."""
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            nonce = b""
        if len(nonce) != NONCE_BYTES:
            raise ReplayRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the query context needs a fresh random nonce of {NONCE_BYTES} bytes, "
                f"got {len(nonce)}",
            )
        now_ms = _utc_ms(self._clock())
        window_ms = int(self.window.seconds * 1000)
        skew_ms = timestamp_unix_ms - now_ms
        if abs(skew_ms) > window_ms:
            raise ReplayRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the query was sent {abs(skew_ms) / 1000:.0f} s "
                f"{'after' if skew_ms > 0 else 'before'} the node's time, outside the "
                f"±{self.window.seconds:.0f} s window; check the clocks and send a fresh query",
            )
        with self._lock:
            self._forget(now_ms - 2 * window_ms)
            if nonce_hex in self._seen:
                raise ReplayRefused(
                    grpc.StatusCode.ALREADY_EXISTS,
                    "replayed request: this query's nonce was already used; "
                    "a coordinator sends a fresh nonce with every query",
                )
            self._seen[nonce_hex] = timestamp_unix_ms

    def remember(self, nonce_hex: str, timestamp_unix_ms: int) -> None:
        """Record a nonce seen earlier (from the audit trail) without checking it."""
        if nonce_hex:
            with self._lock:
                self._seen[nonce_hex] = timestamp_unix_ms

    def _forget(self, before_ms: int) -> None:
        # Insertion order is close to time order; stop at the first one still young.
        while self._seen:
            nonce, moment = next(iter(self._seen.items()))
            if moment >= before_ms:
                break
            del self._seen[nonce]

    def __len__(self) -> int:
        return len(self._seen)


def _tail_lines(path: Path) -> Iterator[bytes]:
    """The file's complete lines, last first, read in blocks from the end."""
    try:
        handle = path.open("rb")
    except OSError:
        return
    with handle:
        end = handle.seek(0, os.SEEK_END)
        rest = b""
        while end > 0:
            start = max(0, end - _TAIL_BLOCK)
            handle.seek(start)
            block = handle.read(end - start) + rest
            end = start
            lines = block.split(b"\n")
            rest = lines[0] if start > 0 else b""
            for line in reversed(lines[1:] if start > 0 else lines):
                if line:
                    yield line
        if rest:
            yield rest


def seed_from_audit(guard: ReplayGuard, trail: Path) -> int:
    """Remember the nonces of requests the trail recorded inside the window; return how many."""
    now_ms = _utc_ms(guard._clock())
    oldest_ms = now_ms - 2 * int(guard.window.seconds * 1000)
    found: list[tuple[str, int]] = []
    for line in _tail_lines(trail):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn line: the audit module sets it aside
        if not isinstance(entry, dict):
            continue
        written = str(entry.get("time", ""))
        try:
            moment = dt.datetime.fromisoformat(written.replace("Z", "+00:00"))
        except ValueError:
            continue
        if _utc_ms(moment) < oldest_ms:
            break
        nonce, query_ms = entry.get("nonce"), entry.get("query_time_ms")
        if isinstance(nonce, str) and nonce and isinstance(query_ms, int):
            found.append((nonce, query_ms))
    for nonce, query_ms in reversed(found):
        guard.remember(nonce, query_ms)
    return len(found)


def replay_guard(audit: AuditLog, window: ReplayWindow = ReplayWindow()) -> ReplayGuard:
    """A guard for a starting node, seeded with the nonces its audit trail recorded recently."""
    guard = ReplayGuard(window)
    seed_from_audit(guard, audit.directory / TRAIL_FILE)
    return guard

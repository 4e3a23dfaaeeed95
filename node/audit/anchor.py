"""Where the audit trail began, recorded outside the trail: in the node's DuckDB file.

Deleting ``NODE_DIR/audit/`` would otherwise leave a node that starts a fresh,
perfectly consistent trail, and `audit verify` would call it intact. At its first
start a node records the hash, time and signer of its trail's first entry (the
genesis) in the database's ``meta`` table. From then on a trail that is missing,
empty, or begins with another entry is an error at start and in `audit verify`.

A node that already served (its database holds epochs) before the genesis was
recorded is held to the same rule: an empty trail there is an error, a present one
has its first entry recorded.

The node also records its trail's last entry (number and hash, the "high-water
mark") when it starts and when it stops. A trail found shorter than that mark, or
whose entry at the mark differs, was cut back or spliced between two runs (say
entries deleted and an older signed head put back): the node refuses to start.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb

from fedtrace.errors import ConfigError
from node.audit.chain import TRAIL_FILE, AuditError, read_trail
from node.audit.log import AuditLog
from node.store import NodeDatabase, first_row

log = logging.getLogger(__name__)

GENESIS_KEY = "audit_genesis"
HIGH_WATER_KEY = "audit_high_water"


@dataclass(frozen=True)
class Genesis:
    """The trail's first entry as the node recorded it."""

    hash: str
    time: str
    signer: str

    def describe(self) -> str:
        return f"{self.time} (entry 1, hash {self.hash[:16]}…)"


@dataclass(frozen=True)
class Anchor:
    """What the database says about the trail: its genesis, and whether the node has served."""

    genesis: Genesis | None
    served: bool  # the database holds epochs: the node has answered or could have
    high_water: tuple[int, str] | None = None  # (seq, hash) of the last entry recorded


def read_anchor(con: duckdb.DuckDBPyConnection) -> Anchor:
    row = first_row(con, "SELECT value FROM meta WHERE key = ?", [GENESIS_KEY])
    genesis = None
    if row is not None:
        try:
            value = json.loads(str(row[0]))
            genesis = Genesis(str(value["hash"]), str(value["time"]), str(value["signer"]))
        except (ValueError, KeyError, TypeError):
            genesis = Genesis("unreadable", "an unknown time", "")
    tables = {
        str(r[0])
        for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    served = False
    if "epochs" in tables:
        served = first_row(con, "SELECT 1 FROM epochs LIMIT 1") is not None
    high_water = None
    row = first_row(con, "SELECT value FROM meta WHERE key = ?", [HIGH_WATER_KEY])
    if row is not None:
        try:
            value = json.loads(str(row[0]))
            high_water = (int(value["seq"]), str(value["hash"]))
        except (ValueError, KeyError, TypeError):
            high_water = None
    return Anchor(genesis, served, high_water)


def load_anchor(database: Path, *, busy_seconds: float = 15.0) -> Anchor | None:
    """The anchor in the node's database file, or None when there is no database."""
    if not database.exists():
        return None
    with NodeDatabase(database, busy_seconds=busy_seconds).session() as con:
        return read_anchor(con)


def record_genesis(con: duckdb.DuckDBPyConnection, first: dict[str, object]) -> Genesis:
    genesis = Genesis(str(first["hash"]), str(first["time"]), str(first["signer"]))
    con.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT DO NOTHING",
        [GENESIS_KEY, json.dumps(genesis.__dict__, sort_keys=True)],
    )
    con.execute("CHECKPOINT")
    return genesis


def record_high_water(con: duckdb.DuckDBPyConnection, last: dict[str, object]) -> None:
    """Remember the trail's last entry (at start and at stop)."""
    value = json.dumps({"seq": int(str(last["seq"])), "hash": str(last["hash"])})
    con.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [HIGH_WATER_KEY, value],
    )


def high_water_problem(anchor: Anchor | None, lines: list[str]) -> str:
    """Why the trail (its lines) is shorter than, or differs at, the recorded high-water mark."""
    if anchor is None or anchor.high_water is None:
        return ""
    seq, digest = anchor.high_water
    if len(lines) < seq:
        return (
            f"the trail was cut back: it holds {len(lines)} lines, but the node recorded "
            f"entry {seq} when it last started or stopped"
        )
    try:
        entry = json.loads(lines[seq - 1])
    except ValueError:
        entry = {}
    if not isinstance(entry, dict) or entry.get("hash") != digest:
        return (
            f"the trail was spliced: line {seq} is not the entry {seq} the node recorded "
            "when it last started or stopped"
        )
    return ""


def anchor_problem(anchor: Anchor | None, first: dict[str, object] | None, directory: Path) -> str:
    """Why the trail in `directory`, whose first entry is `first`, contradicts the anchor."""
    if anchor is None:
        return ""
    trail = directory / TRAIL_FILE
    if first is None:
        if anchor.genesis is not None:
            return (
                f"trail missing, the node recorded a genesis at {anchor.genesis.describe()} "
                f"but {trail} holds no entry"
            )
        if anchor.served:
            return (
                f"trail missing, the node's database holds epochs (it has served) but {trail} "
                "holds no entry"
            )
        return ""
    if anchor.genesis is not None and first.get("hash") != anchor.genesis.hash:
        return (
            f"the trail was replaced: its entry 1 is not the genesis the node recorded at "
            f"{anchor.genesis.describe()}"
        )
    return ""


def open_trail(audit: AuditLog, database: NodeDatabase) -> None:
    """Refuse to start (one line) on a trail the node cannot extend, or one that is missing or
    replaced although the database recorded its genesis (`node.audit.anchor`)."""
    with database.session() as con:
        anchor = read_anchor(con)
    lines, _ = read_trail(audit.directory)
    first = _first_entry(lines)
    problem = anchor_problem(anchor, first, audit.directory) or high_water_problem(anchor, lines)
    if problem:
        raise ConfigError(f"{audit.directory}: audit trail NOT intact: {problem}")
    try:
        audit.check()
    except AuditError as exc:
        raise ConfigError(f"audit trail cannot be extended: {exc}") from None


def anchor_genesis(audit: AuditLog, database: NodeDatabase) -> None:
    """Record the trail's first entry in the database, once (the first start, or a migration),
    and its last entry as the high-water mark."""
    lines, _ = read_trail(audit.directory)
    with database.session() as con:
        if lines:
            record_high_water_of(con, lines)
        if read_anchor(con).genesis is not None:
            return
        first = _first_entry(lines)
        if first is not None:
            genesis = record_genesis(con, first)
            log.info("audit trail genesis recorded in the node database: %s", genesis.describe())


def record_high_water_of(con: duckdb.DuckDBPyConnection, lines: list[str]) -> None:
    try:
        last = json.loads(lines[-1])
        record_high_water(con, last)
    except (ValueError, KeyError, TypeError):
        log.error("audit trail: its last line is not an entry; high-water mark not recorded")


def close_trail(audit: AuditLog, database: NodeDatabase) -> None:
    """At stop: record the trail's last entry as the high-water mark."""
    lines, _ = read_trail(audit.directory)
    if lines:
        with database.session() as con:
            record_high_water_of(con, lines)


def _first_entry(lines: list[str]) -> dict[str, object] | None:
    if not lines:
        return None
    try:
        value = json.loads(lines[0])
    except ValueError:
        return {"hash": ""}  # not an entry: `audit verify` names the problem
    return value if isinstance(value, dict) else {"hash": ""}

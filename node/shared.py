"""Own-item reveal results: which of this node's records a overlap found shared, per case.

The node writes them in its own database at the end of a reveal overlap; the
operator lists them with `fedtrace node shared NODE_DIR --case REF`, which takes
its turn on the database like any other command, so it works while the node
serves. Only this node's own records are stored, with the jurisdictions that
hold them too; nothing about any other node's items exists here.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from node.store import NodeDatabase

FORMATS = ("table", "json", "csv")

_DDL = """
CREATE TABLE IF NOT EXISTS overlap_shared (
    case_ref VARCHAR NOT NULL, overlap_id VARCHAR NOT NULL, dataset VARCHAR NOT NULL,
    investigator VARCHAR NOT NULL, record VARCHAR NOT NULL, shared_with VARCHAR NOT NULL,
    recorded TIMESTAMPTZ NOT NULL);
"""


@dataclass(frozen=True)
class SharedRecord:
    """One of this node's records that other participants of a overlap hold too."""

    record: str  # canonical identifier (wallet address) or subject id
    shared_with: tuple[str, ...]  # jurisdiction codes, sorted
    dataset: str
    overlap_id: str
    investigator: str
    recorded: dt.datetime


def store_shared(
    database: NodeDatabase,
    *,
    case_ref: str,
    overlap_id: str,
    dataset: str,
    investigator: str,
    records: Sequence[tuple[str, Sequence[str]]],
    now: dt.datetime | None = None,
) -> int:
    """Write one overlap's shared records (record, jurisdictions) in one transaction."""
    moment = now or dt.datetime.now(dt.UTC)
    rows = sorted({(record, ",".join(sorted(partners))) for record, partners in records})
    table = pa.table(
        {
            "case_ref": [case_ref] * len(rows),
            "overlap_id": [overlap_id] * len(rows),
            "dataset": [dataset] * len(rows),
            "investigator": [investigator] * len(rows),
            "record": [record for record, _ in rows],
            "shared_with": [partners for _, partners in rows],
            "recorded": pa.array([moment] * len(rows), type=pa.timestamp("us", tz="UTC")),
        }
    )
    with database.session() as con:
        con.execute(_DDL)
        con.execute("BEGIN TRANSACTION")
        try:
            con.register("incoming_shared", table)
            con.execute("INSERT INTO overlap_shared SELECT * FROM incoming_shared")
            con.unregister("incoming_shared")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return len(rows)


def list_shared(con: duckdb.DuckDBPyConnection, case_ref: str) -> list[SharedRecord]:
    """This node's shared records for a case, from the latest overlap of each dataset."""
    con.execute(_DDL)
    rows = con.execute(
        """
        WITH latest AS (
            SELECT dataset, arg_max(overlap_id, recorded) AS overlap_id
            FROM overlap_shared WHERE case_ref = ? GROUP BY dataset)
        SELECT s.record, s.shared_with, s.dataset, s.overlap_id, s.investigator, s.recorded
        FROM overlap_shared s JOIN latest USING (dataset, overlap_id)
        WHERE s.case_ref = ? ORDER BY s.dataset, s.record
        """,
        [case_ref, case_ref],
    ).fetchall()
    return [
        SharedRecord(
            str(record),
            tuple(str(shared).split(",")),
            str(dataset),
            str(overlap),
            str(investigator),
            recorded,
        )
        for record, shared, dataset, overlap, investigator, recorded in rows
    ]


def render_shared(
    records: Sequence[SharedRecord], fmt: str, *, jurisdiction: str, case_ref: str
) -> str:
    if fmt == "json":
        document = {
            "node": jurisdiction,
            "case": case_ref,
            "shared": [
                {
                    "record": r.record,
                    "shared_with": list(r.shared_with),
                    "dataset": r.dataset,
                    "overlap_id": r.overlap_id,
                    "investigator": r.investigator,
                    "recorded": r.recorded.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                for r in records
            ],
        }
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["record", "shared_with", "dataset", "overlap_id", "investigator"])
        for r in records:
            writer.writerow(
                [r.record, " ".join(r.shared_with), r.dataset, r.overlap_id, r.investigator]
            )
        return buffer.getvalue()
    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    if not records:
        console.print(
            f"{jurisdiction}: no shared records for case {case_ref} (no reveal overlap "
            "for this case, or none of this node's records is shared)"
        )
    else:
        overlap = ", ".join(sorted({r.overlap_id for r in records}))
        table = Table(
            title=Text(
                f"{jurisdiction} · case {case_ref} · {len(records)} own record(s) shared "
                f"· overlap {overlap}"
            ),
            box=box.SIMPLE_HEAVY,
            title_justify="left",
        )
        for column in ("record", "shared with", "dataset"):
            table.add_column(column, overflow="fold")
        for r in records:
            table.add_row(Text(r.record), Text(", ".join(r.shared_with)), Text(r.dataset))
        console.print(table, highlight=False)
    return str(console.file.getvalue())  # type: ignore[attr-defined]


def list_for_case(node_dir: Path, case_ref: str, fmt: str) -> str:
    """`fedtrace node shared NODE_DIR --case REF`: waits its turn on the database, then lists."""
    from node.config import load_node_config

    config = load_node_config(node_dir)
    with NodeDatabase(config.database).session() as con:
        records = list_shared(con, case_ref)
    return render_shared(records, fmt, jurisdiction=config.jurisdiction, case_ref=case_ref)

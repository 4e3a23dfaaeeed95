"""Follow-up requests at the node: disclosure, preservation and freeze requests, their states.

Plain functions over the node database (tests call them without gRPC):

- `earlier_match` checks the node's own audit trail: a follow-up must name a case
  under which the partner already ran an answered match on that dataset here.
- `lookup` (from `node.holdings`) finds what the node holds on one item; only
  declared disclosable columns are ever selected.
- `submit`, `approve`, `refuse`, `expire_overdue` move a request through its states
  (pending → approved | partly-approved | refused | expired; no-record at once) in
  the `followup_requests` table, so the officer's commands work while the node serves.
  Freeze orders (pending → frozen → released | expired) are in `node.followup_freeze`.
- `record_of` turns a row into the `fedtrace.followup.FollowUpRecord` the node signs.

Nothing here writes an identifier into the audit trail: entries name the request id.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb

from fedtrace.errors import FedtraceError
from fedtrace.followup import (
    APPROVED,
    EXPIRED,
    FROZEN,
    KIND_DISCLOSE,
    KIND_FREEZE,
    KIND_PRESERVE,
    NO_RECORD,
    PARTLY_APPROVED,
    PENDING,
    REFUSED,
    FollowUpRecord,
)
from node import audit as audit_trail
from node.config import DatasetConfig
from node.holdings import LINKED_SUBJECTS as LINKED_SUBJECTS
from node.holdings import MAX_RECORDS_PER_ITEM as MAX_RECORDS_PER_ITEM
from node.holdings import allowed_fields as allowed_fields
from node.holdings import canonical_item as canonical_item
from node.holdings import iso as iso
from node.holdings import lookup as lookup
from node.store import NodeDatabase

REASON_MAX_CHARS = 2000

_DDL = """
CREATE TABLE IF NOT EXISTS followup_requests (
    request_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, partner VARCHAR NOT NULL,
    partner_subject VARCHAR NOT NULL, case_ref VARCHAR NOT NULL, legal_basis VARCHAR NOT NULL,
    reason VARCHAR NOT NULL, dataset VARCHAR NOT NULL, item VARCHAR NOT NULL,
    fields_asked VARCHAR NOT NULL, preservation_days INTEGER NOT NULL,
    submitted_at VARCHAR NOT NULL, deadline VARCHAR NOT NULL, state VARCHAR NOT NULL,
    decided_at VARCHAR NOT NULL, decided_by VARCHAR NOT NULL, decision_reason VARCHAR NOT NULL,
    fields_disclosed VARCHAR NOT NULL, fields_withheld VARCHAR NOT NULL,
    disclosed VARCHAR NOT NULL, preserved_until VARCHAR NOT NULL,
    policy_version VARCHAR NOT NULL, grant_index INTEGER NOT NULL, nonce VARCHAR NOT NULL);
"""
# Added with freeze orders; tables made before get them with these defaults.
_FREEZE_COLUMNS = {
    "amount_eur": "BIGINT NOT NULL DEFAULT 0",
    "frozen_until": "VARCHAR NOT NULL DEFAULT ''",
    "released_at": "VARCHAR NOT NULL DEFAULT ''",
    "released_by": "VARCHAR NOT NULL DEFAULT ''",
    "release_reason": "VARCHAR NOT NULL DEFAULT ''",
    # Added with policy binding: the SHA-256 of the policy file the request was decided under.
    "policy_sha256": "VARCHAR NOT NULL DEFAULT ''",
}
_COLUMNS = (
    *"""
    request_id kind partner partner_subject case_ref legal_basis reason dataset item
    fields_asked preservation_days submitted_at deadline state decided_at decided_by
    decision_reason fields_disclosed fields_withheld disclosed preserved_until policy_version
    grant_index nonce
    """.split(),
    *_FREEZE_COLUMNS,
)
_JSON_COLUMNS = ("fields_asked", "fields_disclosed", "fields_withheld", "disclosed")
WRITES = threading.Lock()  # one writer per process: DuckDB aborts conflicting transactions


class FollowUpError(FedtraceError):
    """An officer's command that cannot be done as asked; the message says why."""


def parse_iso(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class FollowUpRow:
    """One row of `followup_requests`, JSON columns decoded."""

    request_id: str
    kind: str
    partner: str
    partner_subject: str
    case_ref: str
    legal_basis: str
    reason: str
    dataset: str
    item: str
    fields_asked: list[str]
    preservation_days: int
    submitted_at: str
    deadline: str
    state: str
    decided_at: str
    decided_by: str
    decision_reason: str
    fields_disclosed: list[str]
    fields_withheld: list[str]
    disclosed: list[dict[str, Any]]
    preserved_until: str
    policy_version: str
    grant_index: int
    nonce: str
    amount_eur: int = 0
    frozen_until: str = ""
    released_at: str = ""
    released_by: str = ""
    release_reason: str = ""
    policy_sha256: str = ""  # "" for requests recorded before it was kept

    def overdue(self, now: dt.datetime) -> bool:
        """Pending past its answer deadline, or frozen past its end: it reads as expired."""
        if self.state == FROZEN:
            return bool(self.frozen_until) and parse_iso(self.frozen_until) <= now
        return self.state == PENDING and bool(self.deadline) and parse_iso(self.deadline) <= now


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_DDL)
    present = {
        str(r[0])
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'followup_requests'"
        ).fetchall()
    }
    for name, definition in _FREEZE_COLUMNS.items():
        if name not in present:
            con.execute(f"ALTER TABLE followup_requests ADD COLUMN {name} {definition}")


def _row(values: Sequence[Any]) -> FollowUpRow:
    fields = dict(zip(_COLUMNS, values, strict=True))
    for name in _JSON_COLUMNS:
        fields[name] = json.loads(fields[name])
    return FollowUpRow(**fields)


def _insert(con: duckdb.DuckDBPyConnection, row: FollowUpRow) -> None:
    values = [
        json.dumps(getattr(row, c), ensure_ascii=False) if c in _JSON_COLUMNS else getattr(row, c)
        for c in _COLUMNS
    ]
    con.execute(
        f"INSERT INTO followup_requests ({', '.join(_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
        values,
    )


def update_row(con: duckdb.DuckDBPyConnection, row: FollowUpRow, expected_state: str) -> bool:
    """Write a decision if the row is still in `expected_state`; False when it moved meanwhile."""
    changed = """state decided_at decided_by decision_reason fields_disclosed fields_withheld
        disclosed preserved_until frozen_until released_at released_by release_reason""".split()
    values = [
        json.dumps(getattr(row, c), ensure_ascii=False) if c in _JSON_COLUMNS else getattr(row, c)
        for c in changed
    ]
    done = con.execute(
        f"UPDATE followup_requests SET {', '.join(f'{c} = ?' for c in changed)} "
        "WHERE request_id = ? AND state = ? RETURNING request_id",
        [*values, row.request_id, expected_state],
    ).fetchall()
    return bool(done)


def select_rows(
    con: duckdb.DuckDBPyConnection,
    *,
    partner: str | None = None,
    case_ref: str | None = None,
    request_id: str | None = None,
    pending_only: bool = False,
    live_only: bool = False,
) -> list[FollowUpRow]:
    ensure_schema(con)
    where, params = [], []
    for column, value in (("partner", partner), ("case_ref", case_ref), ("request_id", request_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if pending_only:
        where.append("state = 'pending'")
    elif live_only:
        where.append("state IN ('pending', 'frozen')")
    sql = f"SELECT {', '.join(_COLUMNS)} FROM followup_requests"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY submitted_at, request_id"
    return [_row(values) for values in con.execute(sql, params).fetchall()]


# --- the audit check: an earlier match under the case -----------------------------------------


def earlier_match(audit_dir: Path, partner: str, case_ref: str, dataset: str) -> bool:
    """Whether `partner` ran a match under `case_ref` on `dataset` here that was answered."""
    for entry in audit_trail.entries(audit_dir):
        peer = entry.get("peer")
        if (
            entry.get("event") == "query"
            and entry.get("kind") == "match"
            and entry.get("outcome") == "answered"
            and entry.get("case_ref") == case_ref
            and entry.get("dataset") == dataset
            and isinstance(peer, dict)
            and peer.get("jurisdiction") == partner
        ):
            return True
    return False


# --- state changes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """A follow-up as admitted by the gate, with everything the node decided about it."""

    kind: str
    partner: str
    partner_subject: str
    case_ref: str
    legal_basis: str
    reason: str
    dataset: DatasetConfig
    item: str  # canonical
    fields_asked: tuple[str, ...]
    preservation_days: int
    automatic: bool
    answer_within_days: int | None
    policy_version: str
    grant_index: int
    nonce: str
    amount_eur: int = 0  # freeze: the amount to restrain
    policy_sha256: str = ""  # the policy file the gate admitted it under


def new_request_id() -> str:
    return "RQ-" + secrets.token_hex(5).upper()


def submit(database: NodeDatabase, submission: Submission, now: dt.datetime) -> FollowUpRow:
    """Record a follow-up: no-record at once, approved at once (automatic), or pending."""
    s = submission
    base = FollowUpRow(
        request_id=new_request_id(),
        kind=s.kind,
        partner=s.partner,
        partner_subject=s.partner_subject,
        case_ref=s.case_ref,
        legal_basis=s.legal_basis,
        reason=s.reason,
        dataset=s.dataset.name,
        item=s.item,
        fields_asked=list(s.fields_asked),
        preservation_days=s.preservation_days,
        submitted_at=iso(now),
        deadline="",
        state=PENDING,
        decided_at="",
        decided_by="",
        decision_reason="",
        fields_disclosed=[],
        fields_withheld=[],
        disclosed=[],
        preserved_until="",
        policy_version=s.policy_version,
        grant_index=s.grant_index,
        nonce=s.nonce,
        amount_eur=s.amount_eur,
        policy_sha256=s.policy_sha256,
    )
    with WRITES, database.session() as con:
        ensure_schema(con)
        held = lookup(con, s.dataset, s.item, s.fields_asked if s.kind == KIND_DISCLOSE else ())
        if not held:
            row = replace(
                base,
                state=NO_RECORD,
                decided_at=iso(now),
                decided_by="policy",
                decision_reason="the node holds no record of this item",
            )
        elif s.automatic:
            row = _decided(
                base,
                held,
                list(s.fields_asked),
                "policy",
                "approved automatically by the node's policy",
                now,
            )
        else:
            deadline = (
                iso(now + dt.timedelta(days=s.answer_within_days))
                if s.answer_within_days is not None
                else ""
            )
            row = replace(base, deadline=deadline)
        _insert(con, row)
    return row


def _decided(
    row: FollowUpRow,
    held: list[dict[str, Any]],
    fields: list[str],
    by: str,
    reason: str,
    now: dt.datetime,
) -> FollowUpRow:
    withheld = [f for f in row.fields_asked if f not in fields]
    state = PARTLY_APPROVED if withheld else APPROVED
    if row.kind == KIND_FREEZE:
        return replace(
            row,
            state=FROZEN,
            decided_at=iso(now),
            decided_by=by,
            decision_reason=reason,
            frozen_until=iso(now + dt.timedelta(days=row.preservation_days)),
        )
    if row.kind == KIND_PRESERVE:
        return replace(
            row,
            state=APPROVED,
            decided_at=iso(now),
            decided_by=by,
            decision_reason=reason,
            preserved_until=iso(now + dt.timedelta(days=row.preservation_days)),
        )
    return replace(
        row,
        state=state,
        decided_at=iso(now),
        decided_by=by,
        decision_reason=reason,
        fields_disclosed=list(fields),
        fields_withheld=withheld,
        disclosed=[{f: record[f] for f in fields if f in record} for record in held],
    )


def forget(database: NodeDatabase, request_id: str) -> None:
    """Remove a request whose answer could not be audited (it was never answered)."""
    with WRITES, database.session() as con:
        con.execute("DELETE FROM followup_requests WHERE request_id = ?", [request_id])


def expire_overdue(database: NodeDatabase, now: dt.datetime) -> list[FollowUpRow]:
    """Mark `expired` every pending request past its deadline and every freeze past its end.

    Returns the rows it changed (each needs its audit entry). A freeze keeps its
    decision (who approved, when) and its `frozen_until`.
    """
    changed = []
    with WRITES, database.session() as con:
        for row in select_rows(con, live_only=True):
            if not row.overdue(now):
                continue
            if row.state == FROZEN:
                expired = replace(row, state=EXPIRED)
            else:
                expired = replace(
                    row,
                    state=EXPIRED,
                    decided_at=row.deadline,
                    decided_by="deadline",
                    decision_reason=f"not answered by the deadline {row.deadline}",
                )
            if update_row(con, expired, row.state):
                changed.append(expired)
    return changed


def find(database: NodeDatabase, request_id: str) -> FollowUpRow:
    with database.session() as con:
        rows = select_rows(con, request_id=request_id)
    if not rows:
        raise FollowUpError(
            f"no follow-up request {request_id!r} at this node; list them with "
            "`fedtrace node requests NODE_DIR`"
        )
    return rows[0]


def _pending(row: FollowUpRow) -> None:
    if row.state == FROZEN:
        raise FollowUpError(
            f"request {row.request_id} is frozen until {row.frozen_until}; to lift it, "
            f"release it: `fedtrace node release NODE_DIR {row.request_id} --reason TEXT`"
        )
    if row.state == EXPIRED and row.frozen_until:
        raise FollowUpError(
            f"the freeze {row.request_id} expired on {row.frozen_until}; the partner "
            "must submit a new one"
        )
    if row.state == EXPIRED:
        raise FollowUpError(
            f"request {row.request_id} expired on {row.deadline} unanswered; the partner "
            "must submit a new one"
        )
    if row.state != PENDING:
        raise FollowUpError(
            f"request {row.request_id} is already {row.state.replace('-', ' ')} "
            f"({row.decided_at}); a decision is final"
        )


def approve(
    database: NodeDatabase,
    dataset: DatasetConfig,
    request_id: str,
    allowed: Sequence[str],
    fields: Sequence[str] | None,
    reason: str,
    now: dt.datetime,
) -> FollowUpRow:
    """The officer approves `fields` (default: every field asked) of a pending request.

    `allowed` is what the policy in force and node.toml still permit for this partner
    and dataset; approving fewer fields than asked is `partly-approved`.
    """
    row = find(database, request_id)
    _pending(row)
    chosen = list(row.fields_asked) if fields is None else list(dict.fromkeys(fields))
    if row.kind != KIND_DISCLOSE and fields:
        raise FollowUpError(
            f"request {request_id} is a {row.kind} request; it discloses no fields, "
            "so --fields does not apply"
        )
    if row.kind == KIND_DISCLOSE:
        not_asked = [f for f in chosen if f not in row.fields_asked]
        if not_asked:
            raise FollowUpError(
                f"request {request_id} did not ask for {', '.join(not_asked)}; it asked for "
                f"{', '.join(row.fields_asked)}"
            )
        forbidden = [f for f in chosen if f not in allowed]
        if forbidden:
            raise FollowUpError(
                f"the policy in force no longer lets {row.partner} receive "
                f"{', '.join(forbidden)} of {row.dataset!r} (allowed: "
                f"{', '.join(allowed) or 'none'}); approve fewer fields or refuse"
            )
        if not chosen:
            raise FollowUpError("--fields names no field; to disclose nothing, refuse the request")
    with WRITES, database.session() as con:
        held = lookup(con, dataset, row.item, chosen if row.kind == KIND_DISCLOSE else ())
        decided = _decided(row, held, chosen, "officer", reason or "approved by the officer", now)
        if not held:
            decided = replace(
                decided,
                state=NO_RECORD,
                fields_disclosed=[],
                disclosed=[],
                fields_withheld=[],
                preserved_until="",
                frozen_until="",
                decision_reason="the node no longer holds a record of this item",
            )
        if not update_row(con, decided, PENDING):
            raise FollowUpError(f"request {request_id} was decided meanwhile; list it again")
    return decided


def refuse(database: NodeDatabase, request_id: str, reason: str, now: dt.datetime) -> FollowUpRow:
    if not reason.strip():
        raise FollowUpError("a refusal needs its reason: pass --reason TEXT")
    row = find(database, request_id)
    _pending(row)
    decided = replace(
        row,
        state=REFUSED,
        decided_at=iso(now),
        decided_by="officer",
        decision_reason=reason.strip(),
    )
    with WRITES, database.session() as con:
        if not update_row(con, decided, PENDING):
            raise FollowUpError(f"request {request_id} was decided meanwhile; list it again")
    return decided


def record_of(row: FollowUpRow, jurisdiction: str, now: dt.datetime) -> FollowUpRecord:
    """The record the node signs for `row` (everything except its own bookkeeping)."""
    return FollowUpRecord(
        request_id=row.request_id,
        jurisdiction=jurisdiction,
        investigator=row.partner,
        kind=row.kind,
        state=row.state,
        case_ref=row.case_ref,
        legal_basis=row.legal_basis,
        reason=row.reason,
        dataset=row.dataset,
        item=row.item,
        fields_asked=list(row.fields_asked),
        preservation_days=row.preservation_days,
        submitted_at=row.submitted_at,
        deadline=row.deadline,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        decision_reason=row.decision_reason,
        fields_disclosed=list(row.fields_disclosed),
        fields_withheld=list(row.fields_withheld),
        disclosed=[dict(r) for r in row.disclosed],
        preserved_until=row.preserved_until,
        policy_version=row.policy_version,
        nonce=row.nonce,
        signed_at=iso(now),
        amount_eur=row.amount_eur,
        frozen_until=row.frozen_until,
        released_at=row.released_at,
        released_by=row.released_by,
        release_reason=row.release_reason,
        policy_sha256=row.policy_sha256,
    )


def audit_fields(row: FollowUpRow, **extra: Any) -> dict[str, Any]:
    """An audit entry about a request: references and field names, never the item."""
    fields: dict[str, Any] = {
        "request": row.request_id,
        "kind": row.kind,
        "partner": row.partner,
        "case_ref": row.case_ref,
        "legal_basis": row.legal_basis,
        "dataset": row.dataset,
        "state": row.state,
        "outcome": row.state,
    }
    if row.kind == KIND_DISCLOSE:
        fields["fields_disclosed"] = list(row.fields_disclosed)
        fields["fields_withheld"] = list(row.fields_withheld)
    elif row.kind == KIND_FREEZE:
        fields["freeze_days"] = row.preservation_days
        fields["amount_eur"] = row.amount_eur
        fields["frozen_until"] = row.frozen_until
        if row.released_at:
            fields["released_at"] = row.released_at
            fields["release_reason"] = row.release_reason
    else:
        fields["preservation_days"] = row.preservation_days
        fields["preserved_until"] = row.preserved_until
    if row.decision_reason:
        fields["reason"] = row.decision_reason
    fields.update(extra)
    return fields


def rows_json(rows: Sequence[FollowUpRow], now: dt.datetime) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        document: dict[str, Any] = {c: getattr(row, c) for c in _COLUMNS if c != "policy_sha256"}
        document["overdue"] = row.overdue(now)
        out.append(document)
    return out

"""The privacy officer's follow-up commands: `fedtrace node requests|approve|refuse|release`.

They run in their own process while the node serves: the database is shared by
taking turns (`NodeDatabase.session`), the audit trail by `flock`. Every
decision, and every request found past its deadline, is appended to the trail,
signed with the node's key.
"""

from __future__ import annotations

import datetime as dt
import getpass
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedtrace.followup import FROZEN, KIND_FREEZE, KIND_PRESERVE, state_label
from fedtrace.pki import read_key_pem
from node import followup, followup_freeze
from node.audit import AUDIT_DIR, AuditLog
from node.config import NodeConfig, load_node_config
from node.policy import QueryKind, load_policy, utc_now
from node.store import NodeDatabase


@dataclass(frozen=True)
class OfficerDesk:
    """A node directory opened for the officer: configuration, database, audit trail."""

    config: NodeConfig
    database: NodeDatabase
    audit: AuditLog

    @classmethod
    def open(cls, node_dir: Path) -> OfficerDesk:
        config = load_node_config(node_dir)
        audit = AuditLog(
            node_dir / AUDIT_DIR, read_key_pem(config.tls.key), config.tls.cert.read_bytes()
        )
        return cls(config, NodeDatabase(config.database), audit)

    def expire(self, now: dt.datetime) -> list[followup.FollowUpRow]:
        expired = followup.expire_overdue(self.database, now)
        for row in expired:
            self.audit.append("request-expired", followup.audit_fields(row))
        return expired


def _officer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def list_requests(
    node_dir: Path, *, pending_only: bool, fmt: str, now: dt.datetime | None = None
) -> str:
    moment = now or utc_now()
    desk = OfficerDesk.open(node_dir)
    expired = {row.request_id for row in desk.expire(moment)}
    with desk.database.session() as con:
        rows = followup.select_rows(con, pending_only=pending_only)
    if fmt == "json":
        documents = followup.rows_json(rows, moment)
        for document in documents:
            document["expired_now"] = document["request_id"] in expired
        return (
            json.dumps(
                {"node": desk.config.jurisdiction, "requests": documents},
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
    return _table(desk.config.jurisdiction, rows, expired, pending_only)


def _asked(row: followup.FollowUpRow) -> str:
    if row.kind == KIND_PRESERVE:
        return f"preserve {row.preservation_days} days"
    if row.kind == KIND_FREEZE:
        until = f", frozen until {row.frozen_until}" if row.frozen_until else ""
        return f"freeze EUR {row.amount_eur:,} for {row.preservation_days} days{until}"
    return ", ".join(row.fields_asked)


def _table(
    jurisdiction: str, rows: Sequence[followup.FollowUpRow], expired: set[str], pending: bool
) -> str:
    console = Console(file=io.StringIO(), width=160, force_terminal=False, color_system=None)
    title = Text(f"follow-up requests at {jurisdiction}" + (" · pending only" if pending else ""))
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
    for column in (
        "id",
        "state",
        "partner",
        "case",
        "legal basis",
        "dataset",
        "item",
        "asks",
        "submitted",
        "deadline",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:
        state = state_label(row.state)
        if row.request_id in expired:
            state = (
                "EXPIRED (the freeze ended)"
                if row.frozen_until
                else "EXPIRED (deadline passed unanswered)"
            )
        cells = (
            row.request_id,
            state,
            row.partner,
            row.case_ref,
            row.legal_basis,
            row.dataset,
            row.item,
            _asked(row),
            row.submitted_at,
            row.deadline or "-",
        )
        table.add_row(*(Text(str(cell)) for cell in cells))  # data is never markup
    console.print(table)
    if not rows:
        console.print("no follow-up requests" + (" pending" if pending else ""))
    ended = {row.request_id for row in rows if row.frozen_until} & expired
    unanswered = expired - ended
    if unanswered:
        console.print(
            f"{len(unanswered)} request(s) expired unanswered: "
            f"{', '.join(sorted(unanswered))} (the partner sees them as expired)",
            markup=False,
        )
    if ended:
        console.print(
            f"{len(ended)} freeze(s) ended: {', '.join(sorted(ended))} (now expired)",
            markup=False,
        )
    for row in rows:
        if row.reason:
            console.print(f"{row.request_id} reason: {row.reason}", highlight=False, markup=False)
    return str(console.file.getvalue())  # type: ignore[attr-defined]


def approve_request(
    node_dir: Path,
    request_id: str,
    fields: Sequence[str] | None,
    reason: str,
    now: dt.datetime | None = None,
    *,
    officer: str | None = None,
) -> followup.FollowUpRow:
    """Approve a pending request under the policy in force; audited.

    ``officer`` names who decided in the audit entry only (default: the login name); it
    never reaches the decision's reason, which the partner sees in the signed record.
    """
    moment = now or utc_now()
    desk = OfficerDesk.open(node_dir)
    desk.expire(moment)
    row = followup.find(desk.database, request_id)
    dataset = desk.config.dataset(row.dataset)
    kind = QueryKind(row.kind)
    grant = load_policy(desk.config.policy).grant_for(row.partner, row.dataset, kind, moment)
    if dataset is None or grant is None:
        raise followup.FollowUpError(
            f"the policy in force no longer grants {row.partner} {row.kind} requests on "
            f"{row.dataset!r}; refuse request {request_id} with --reason"
        )
    limit = grant.freeze_days_max
    if row.kind == KIND_FREEZE and limit is not None and row.preservation_days > limit:
        raise followup.FollowUpError(
            f"the policy in force now allows freezes of at most {limit} days for "
            f"{row.partner}; request {request_id} asks {row.preservation_days}: refuse it"
        )
    allowed = followup.allowed_fields(dataset, grant.disclosable_fields)
    decided = followup.approve(desk.database, dataset, request_id, allowed, fields, reason, moment)
    event = "request-approved" if decided.state != "no-record" else "request-no-record"
    if decided.state == FROZEN:
        event = "request-frozen"
    desk.audit.append(event, followup.audit_fields(decided, officer=officer or _officer()))
    return decided


def refuse_request(
    node_dir: Path,
    request_id: str,
    reason: str,
    now: dt.datetime | None = None,
    *,
    officer: str | None = None,
) -> followup.FollowUpRow:
    """Refuse a pending request; audited (``officer`` as in `approve_request`)."""
    moment = now or utc_now()
    desk = OfficerDesk.open(node_dir)
    desk.expire(moment)
    decided = followup.refuse(desk.database, request_id, reason, moment)
    desk.audit.append(
        "request-refused", followup.audit_fields(decided, officer=officer or _officer())
    )
    return decided


def release_request(
    node_dir: Path,
    request_id: str,
    reason: str,
    now: dt.datetime | None = None,
    *,
    officer: str | None = None,
) -> followup.FollowUpRow:
    """Lift a freeze in force (`fedtrace node release`); audited (``officer`` as in
    `approve_request`; the record names the login name only)."""
    moment = now or utc_now()
    desk = OfficerDesk.open(node_dir)
    desk.expire(moment)
    login = _officer()
    released = followup_freeze.release(desk.database, request_id, reason, login, moment)
    desk.audit.append("request-released", followup.audit_fields(released, officer=officer or login))
    return released


def console_officer(session_id: str) -> str:
    """Who decided, for the audit entry of a console decision: login name and console session."""
    return f"{_officer()} (console session {session_id})"


def decision_line(row: followup.FollowUpRow) -> str:
    if row.kind == KIND_FREEZE:
        return followup_freeze.freeze_line(row)
    if row.kind == KIND_PRESERVE and row.state == "approved":
        return f"{row.request_id}: approved; preserve until {row.preserved_until}"
    if row.state in ("approved", "partly-approved"):
        withheld = f"; withheld {', '.join(row.fields_withheld)}" if row.fields_withheld else ""
        return (
            f"{row.request_id}: {state_label(row.state)}; disclosed "
            f"{', '.join(row.fields_disclosed)}{withheld}"
        )
    return f"{row.request_id}: {state_label(row.state)} ({row.decision_reason})"

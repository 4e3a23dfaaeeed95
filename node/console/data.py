"""What the console reads from the node directory: follow-up requests and the audit trail.

Values are typed and read-only. Requests come from
`node.officer_requests.list_requests`, which (as `fedtrace node requests` does)
first marks requests past their deadline expired and audits that; the audit
trail and its verification from `node.audit`. The database is taken in turns
with a serving node (`NodeDatabase.session`). The policy, budgets, datasets and
epochs are read in `node.console.policy_data` and `node.console.datasets`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from fedtrace.followup import FROZEN, KIND_FREEZE, PENDING, STATES, state_label
from node.audit import AUDIT_DIR, Verification, entries, select, verify_trail
from node.config import NodeConfig, load_node_config
from node.followup import FollowUpRow
from node.officer_requests import list_requests
from node.shared import list_for_case
from node.store import NodeDatabase

STATE_FILTERS = ("all", "decided", *STATES)
DATABASE_WAIT_SECONDS = 15.0
AUDIT_PAGE_ENTRIES = 500


def iso(moment: dt.datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class ConsoleNode:
    """The node directory the console serves, with its configuration read once at start."""

    node_dir: Path
    config: NodeConfig

    @classmethod
    def open(cls, node_dir: Path) -> ConsoleNode:
        return cls(node_dir, load_node_config(node_dir))

    @property
    def audit_dir(self) -> Path:
        return self.node_dir / AUDIT_DIR

    @property
    def jurisdiction(self) -> str:
        return self.config.jurisdiction

    def database(self) -> NodeDatabase:
        return NodeDatabase(self.config.database, busy_seconds=DATABASE_WAIT_SECONDS)


# --- follow-up requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class RequestView:
    """One follow-up request as the officer sees it (the item, never the disclosed values)."""

    id: str
    state: str
    kind: str
    partner: str
    case: str
    legal_basis: str
    partner_reason: str
    dataset: str
    item: str
    fields_asked: tuple[str, ...]
    preservation_days: int
    submitted_at: str
    deadline: str
    decided_at: str
    decided_by: str
    decision_reason: str
    fields_disclosed: tuple[str, ...]
    fields_withheld: tuple[str, ...]
    preserved_until: str
    policy_version: str
    amount_eur: int = 0  # freeze orders only, as the four below
    frozen_until: str = ""
    released_at: str = ""
    released_by: str = ""
    release_reason: str = ""

    @property
    def pending(self) -> bool:
        return self.state == PENDING

    @property
    def frozen(self) -> bool:
        return self.state == FROZEN

    @property
    def state_label(self) -> str:
        return state_label(self.state)

    def overdue(self, now: dt.datetime) -> bool:
        deadline = parse_iso(self.deadline) if self.deadline else None
        return self.pending and deadline is not None and deadline <= now

    def deadline_note(self, now: dt.datetime) -> str:
        """ "in 3 days", "in 5 hours", "passed" or "" when the policy sets no deadline."""
        deadline = parse_iso(self.deadline) if self.deadline else None
        if deadline is None or not self.pending:
            return ""
        left = deadline - now
        if left.total_seconds() <= 0:
            return "passed"
        if left >= dt.timedelta(days=2):
            return f"in {left.days} days"
        return f"in {max(1, int(left.total_seconds() // 3600))} hours"

    def asks(self) -> str:
        if self.kind == KIND_FREEZE:
            return f"freeze EUR {self.amount_eur:,} for {self.preservation_days} days"
        if self.kind == "preserve":
            return f"preserve for {self.preservation_days} days"
        return ", ".join(self.fields_asked)

    def as_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "kind": self.kind,
            "partner": self.partner,
            "case": self.case,
            "legal_basis": self.legal_basis,
            "reason": self.partner_reason,
            "dataset": self.dataset,
            "item": self.item,
            "fields_asked": list(self.fields_asked),
            "preservation_days": self.preservation_days,
            "submitted": self.submitted_at,
            "deadline": self.deadline,
            "overdue": self.overdue(now),
            "decided_at": self.decided_at,
            "decided_by": self.decided_by,
            "decision_reason": self.decision_reason,
            "fields_disclosed": list(self.fields_disclosed),
            "fields_withheld": list(self.fields_withheld),
            "preserved_until": self.preserved_until,
            "policy_version": self.policy_version,
            "amount_eur": self.amount_eur,
            "frozen_until": self.frozen_until,
            "released_at": self.released_at,
            "released_by": self.released_by,
            "release_reason": self.release_reason,
        }

    @classmethod
    def from_row(cls, row: FollowUpRow) -> RequestView:
        return cls(
            id=row.request_id,
            state=row.state,
            kind=row.kind,
            partner=row.partner,
            case=row.case_ref,
            legal_basis=row.legal_basis,
            partner_reason=row.reason,
            dataset=row.dataset,
            item=row.item,
            fields_asked=tuple(row.fields_asked),
            preservation_days=row.preservation_days,
            submitted_at=row.submitted_at,
            deadline=row.deadline,
            decided_at=row.decided_at,
            decided_by=row.decided_by,
            decision_reason=row.decision_reason,
            fields_disclosed=tuple(row.fields_disclosed),
            fields_withheld=tuple(row.fields_withheld),
            preserved_until=row.preserved_until,
            policy_version=row.policy_version,
            amount_eur=row.amount_eur,
            frozen_until=row.frozen_until,
            released_at=row.released_at,
            released_by=row.released_by,
            release_reason=row.release_reason,
        )

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RequestView:
        """From one object of `fedtrace node requests --format json`."""
        return cls(
            id=str(document["request_id"]),
            state=str(document["state"]),
            kind=str(document["kind"]),
            partner=str(document["partner"]),
            case=str(document["case_ref"]),
            legal_basis=str(document["legal_basis"]),
            partner_reason=str(document["reason"]),
            dataset=str(document["dataset"]),
            item=str(document["item"]),
            fields_asked=tuple(str(f) for f in document["fields_asked"]),
            preservation_days=int(document["preservation_days"]),
            submitted_at=str(document["submitted_at"]),
            deadline=str(document["deadline"]),
            decided_at=str(document["decided_at"]),
            decided_by=str(document["decided_by"]),
            decision_reason=str(document["decision_reason"]),
            fields_disclosed=tuple(str(f) for f in document["fields_disclosed"]),
            fields_withheld=tuple(str(f) for f in document["fields_withheld"]),
            preserved_until=str(document["preserved_until"]),
            policy_version=str(document["policy_version"]),
            amount_eur=int(document.get("amount_eur", 0)),
            frozen_until=str(document.get("frozen_until", "")),
            released_at=str(document.get("released_at", "")),
            released_by=str(document.get("released_by", "")),
            release_reason=str(document.get("release_reason", "")),
        )


def requests(node: ConsoleNode, state: str = "all") -> list[RequestView]:
    """Requests in `state` ("pending", "decided", "all" or one state name), oldest first."""
    text = list_requests(node.node_dir, pending_only=state == PENDING, fmt="json")
    views = [RequestView.from_document(d) for d in json.loads(text)["requests"]]
    if state == "all":
        return views
    if state == "decided":
        return [v for v in views if not v.pending]
    return [v for v in views if v.state == state]


def find_request(node: ConsoleNode, request_id: str) -> RequestView | None:
    return next((v for v in requests(node) if v.id == request_id), None)


# --- audit trail ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    partner: str | None = None
    case: str | None = None
    since: dt.datetime | None = None

    @classmethod
    def parse(cls, partner: str, case: str, since: str) -> AuditFilter:
        """From form or query values; ValueError (a message for the officer) on a bad date."""
        moment = None
        if since.strip():
            moment = parse_iso(since.strip())
            if moment is None:
                raise ValueError(
                    f"since {since!r} is not a date such as 2026-11-25 or 2026-11-25T08:00Z"
                )
        return cls(partner.strip() or None, case.strip() or None, moment)

    def as_json(self) -> dict[str, str | None]:
        return {"partner": self.partner, "case": self.case, "since": iso(self.since) or None}


@dataclass(frozen=True)
class AuditRow:
    """One entry in the columns an officer reads."""

    seq: int
    time: str
    event: str
    partner: str
    case: str
    kind: str
    dataset: str
    items: str
    disclosure: str
    outcome: str
    reason: str
    request: str
    officer: str

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> AuditRow:
        peer = entry.get("peer")
        partner = peer.get("jurisdiction", "") if isinstance(peer, dict) else ""

        def text(key: str) -> str:
            value = entry.get(key)
            return "" if value is None else str(value)

        seq = entry.get("seq")
        return cls(
            seq=seq if isinstance(seq, int) else 0,
            time=text("time"),
            event=text("event"),
            partner=str(partner or text("partner")),
            case=text("case_ref"),
            kind=text("kind"),
            dataset=text("dataset"),
            items=text("item_count"),
            disclosure=text("disclosure"),
            outcome=text("outcome"),
            reason=text("reason"),
            request=text("request"),
            officer=text("officer"),
        )


@dataclass(frozen=True)
class AuditView:
    verification: Verification
    filter: AuditFilter
    entries: tuple[Mapping[str, Any], ...]  # selected, in trail order

    def rows(self, limit: int = AUDIT_PAGE_ENTRIES) -> list[AuditRow]:
        """The newest `limit` selected entries, newest first."""
        return [AuditRow.of(e) for e in reversed(self.entries[-limit:])]


def verification(node: ConsoleNode) -> Verification:
    ca = node.config.tls.ca
    return verify_trail(
        node.audit_dir,
        ca_pem=ca.read_bytes() if ca.exists() else None,
        jurisdiction=node.jurisdiction,
    )


def audit_view(node: ConsoleNode, chosen: AuditFilter) -> AuditView:
    selected = select(
        entries(node.audit_dir), partner=chosen.partner, case=chosen.case, since=chosen.since
    )
    return AuditView(verification(node), chosen, tuple(selected))


def shared_records(node: ConsoleNode, case: str) -> list[dict[str, Any]]:
    """This node's own records that a reveal overlap under `case` found shared."""
    document = json.loads(list_for_case(node.node_dir, case, "json"))
    return [dict(r) for r in document["shared"]]


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchall()
    return bool(found and found[0][0])

"""The investigator's follow-up requests: submit one, follow their state, report them.

`submit_request` sends one disclosure, preservation or freeze request to one node;
`request_status` asks nodes (through coordinator.fanout) for the investigator's
requests under a case. Every record a node returns is checked before it is shown:
its digest, the node's certificate (chains to the federation CA, names that node,
not revoked) and the node's signature (coordinator.case_record).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.case_record import SignedRecord, check_record, value_text
from coordinator.fanout import Deadline, NodeTrust, checked_info, fan_out
from coordinator.federation import Federation, NodeEntry
from coordinator.heads import HeadWitness
from coordinator.progress import Progress, silent
from coordinator.results import NodeFailure, head_json
from coordinator.transport import Connections, NodeConnection
from fedtrace.audit_head import SignedHead
from fedtrace.errors import FedtraceError
from fedtrace.followup import KIND_DISCLOSE, KIND_FREEZE, FollowUpRecord, record_digest, state_label
from fedtrace.identifiers import InvalidIdentifier, canonical_address, parse_person
from fedtrace.transcript import SIGNATURE_ALGORITHM
from fedtrace.v1 import node_pb2, requests_pb2
from fedtrace.wire import Level, NodeStatus

KINDS = {
    "disclose": requests_pb2.FOLLOW_UP_KIND_DISCLOSE,
    "preserve": requests_pb2.FOLLOW_UP_KIND_PRESERVE,
    "freeze": requests_pb2.FOLLOW_UP_KIND_FREEZE,
}


class ItemError(FedtraceError):
    """The item named on the command line is not a valid identifier for the dataset."""


def _verified(node: str, message: requests_pb2.FollowUpRecord, trust: NodeTrust) -> SignedRecord:
    body = bytes(message.record_json)
    digest = record_digest(body)
    if bytes(message.record_sha256) != digest:
        raise NodeFailure(
            NodeStatus.ERROR, f"{node}'s record arrived altered (its digest does not match)"
        )
    try:
        record = check_record(
            node,
            body,
            bytes(message.signature),
            bytes(message.certificate_pem),
            trust.ca_pem,
            trust.revoked,
        )
    except ValueError as exc:
        raise NodeFailure(NodeStatus.ERROR, f"{exc}; the answer was discarded") from None
    if record.request_id != message.request_id or record.state != message.state:
        raise NodeFailure(NodeStatus.ERROR, f"{node}'s answer disagrees with the record it signed")
    return SignedRecord(
        record,
        {
            "algorithm": SIGNATURE_ALGORITHM,
            "record_sha256": digest.hex(),
            "value": bytes(message.signature).hex(),
            "certificate_pem": bytes(message.certificate_pem).decode(),
        },
    )


@dataclass
class FollowUpResult:
    node: str
    status: NodeStatus
    reason: str = ""
    requests: list[SignedRecord] = field(default_factory=list)
    audit_head: SignedHead | None = None  # the node's signed audit head after its answer

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "status": self.status}
        if self.status != NodeStatus.OK:
            out["reason"] = self.reason
            return out
        out["disclosure"] = Level.DISCLOSURE_REQUEST.label
        out["requests"] = [r.as_json() for r in self.requests]
        if len(self.requests) == 1:
            only = self.requests[0]
            out["request_id"] = only.record.request_id
            out["state"] = only.record.state
            out["policy_version"] = only.record.policy_version
            out["signature"] = dict(only.signature)
        out.update(head_json(self.audit_head))
        return out


@dataclass(frozen=True)
class FollowUpAsk:
    kind: str  # disclose | preserve | freeze
    dataset: str
    item: str  # as typed; canonicalised for the dataset's kind
    case_ref: str
    legal_basis: str
    reason: str = ""
    fields: tuple[str, ...] = ()
    preservation_days: int = 0  # preserve: 0 asks the policy's longest; freeze: the days asked
    amount_eur: int = 0  # freeze: the amount to restrain
    identifier_kind: str | None = None  # wallet | person; None: as the node's dataset says


def canonical_request_item(kind: str, value: str) -> str:
    """The item as the node expects it: a canonical address, or canonical NAME|DOB[|DOC]."""
    try:
        if kind == "wallet":
            return canonical_address(value)
        keys = parse_person(value)
    except InvalidIdentifier as exc:
        raise ItemError(f"--item is not a valid {kind}: {exc.reason}") from None
    name_dob = next(k.value for k in keys if k.type == "name_dob")
    document = next((k.value for k in keys if k.type == "document"), None)
    return name_dob if document is None else f"{name_dob}|{document}"


def _outcome_result(outcome: Any) -> FollowUpResult:
    if outcome.failure is not None:
        return FollowUpResult(outcome.entry.name, outcome.failure.status, outcome.failure.reason)
    result: FollowUpResult = outcome.value
    return result


def submit_request(
    federation: Federation,
    entry: NodeEntry,
    ask: FollowUpAsk,
    connections: Connections,
    trust: NodeTrust,
    progress: Progress = silent,
) -> FollowUpResult:
    """Send one follow-up to one node; the node's refusal becomes the result, never an exception.

    An item that is not a valid identifier raises ItemError (nothing was sent).
    """
    if ask.identifier_kind is not None:  # a bad item stops here, before any network
        canonical_request_item(ask.identifier_kind, ask.item)
    deadline = Deadline.after(federation.deadline_seconds)

    def exchange(entry: NodeEntry, connection: NodeConnection) -> FollowUpResult:
        heads = HeadWitness()
        info, cert = checked_info(entry, connection, deadline, trust, progress)
        heads.check(entry.name, info, cert)
        dataset = next((d for d in info.datasets if d.name == ask.dataset), None)
        if dataset is None:
            names = ", ".join(d.name for d in info.datasets) or "none"
            raise NodeFailure(
                NodeStatus.ERROR, f"{entry.name} has no dataset {ask.dataset!r} (it has: {names})"
            )
        canonical = canonical_request_item(ask.identifier_kind or dataset.identifier_kind, ask.item)
        request = requests_pb2.SubmitFollowUpRequest(
            context=node_pb2.QueryContext(
                case_ref=ask.case_ref,
                legal_basis=ask.legal_basis,
                nonce=secrets.token_bytes(16),
                timestamp_unix_ms=int(time.time() * 1000),
            ),
            kind=KINDS[ask.kind],
            dataset=ask.dataset,
            item=canonical,
            reason=ask.reason,
            fields=list(ask.fields),
            preservation_days=ask.preservation_days,
            amount_eur=ask.amount_eur,
        )
        progress(entry.name, f"submitting the {ask.kind} request")
        answer = connection.submit(request, deadline.remaining())
        signed = _verified(entry.name, answer, trust)
        mismatch = (
            signed.record.item != canonical
            or signed.record.case_ref != ask.case_ref
            or signed.record.kind != ask.kind
            or signed.record.dataset != ask.dataset
        )
        if mismatch:
            raise NodeFailure(NodeStatus.ERROR, f"{entry.name} signed a record of another request")
        head = heads.check(entry.name, answer, bytes(answer.certificate_pem), answer=True)
        return FollowUpResult(entry.name, NodeStatus.OK, requests=[signed], audit_head=head)

    # Not retried: a second submission would be a second request.
    [outcome] = fan_out([entry], connections, deadline, exchange, progress, retry=False)
    return _outcome_result(outcome)


def request_status(
    federation: Federation,
    entries: Sequence[NodeEntry],
    case_ref: str,
    connections: Connections,
    trust: NodeTrust,
    request_id: str = "",
    progress: Progress = silent,
) -> list[FollowUpResult]:
    """Each node's records of our requests under `case_ref`, checked; in roster order."""
    deadline = Deadline.after(federation.deadline_seconds)

    def exchange(entry: NodeEntry, connection: NodeConnection) -> FollowUpResult:
        progress(entry.name, "asking for the state of our requests")
        messages = connection.status(
            requests_pb2.FollowUpStatusRequest(case_ref=case_ref, request_id=request_id),
            deadline.remaining(),
        )
        heads = HeadWitness()
        signed = []
        for message in messages:
            signed.append(_verified(entry.name, message, trust))
            heads.check(entry.name, message, bytes(message.certificate_pem))
        if any(s.record.case_ref != case_ref for s in signed):
            raise NodeFailure(NodeStatus.ERROR, f"{entry.name} answered records of another case")
        head = heads.latest(entry.name)
        return FollowUpResult(entry.name, NodeStatus.OK, requests=signed, audit_head=head)

    return [_outcome_result(o) for o in fan_out(entries, connections, deadline, exchange, progress)]


# --- reports ------------------------------------------------------------------------------------


def report_document(
    case: str, query: str, dataset: str, results: Sequence[FollowUpResult]
) -> dict[str, Any]:
    """The JSON report of follow-up results (`--format json`)."""
    return {
        "case": case,
        "query": query,
        "dataset": dataset,
        "results": [r.as_json() for r in results],
    }


def report_json(case: str, query: str, dataset: str, results: Sequence[FollowUpResult]) -> str:
    document = report_document(case, query, dataset, results)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def asked_text(r: FollowUpRecord) -> str:
    """What a request asked, in a few words."""
    if r.kind == KIND_DISCLOSE:
        return ", ".join(r.fields_asked)
    if r.kind == KIND_FREEZE:
        return f"freeze of EUR {r.amount_eur:,} for {r.preservation_days} days"
    return f"{r.preservation_days} days"


def report_table(case: str, query: str, results: Sequence[FollowUpResult]) -> str:
    lines = [f"{query} · case {case}"]
    for result in results:
        if result.status != NodeStatus.OK:
            lines.append(f"{result.node}: {result.status}: {result.reason}")
            continue
        if not result.requests:
            lines.append(f"{result.node}: no requests under this case")
        for signed in result.requests:
            r = signed.record
            asks = asked_text(r)
            lines.append(
                f"{r.jurisdiction} {r.request_id}: {r.kind} {r.dataset} {r.item} — "
                f"{state_label(r.state).upper()} (asked {asks}; submitted {r.submitted_at}"
                + (f"; deadline {r.deadline}" if r.deadline else "")
                + ")"
            )
            if r.decided_at:
                lines.append(f"    decided {r.decided_at} by {r.decided_by}: {r.decision_reason}")
            if r.fields_withheld:
                lines.append(f"    withheld: {', '.join(r.fields_withheld)}")
            if r.preserved_until:
                lines.append(f"    preserved until {r.preserved_until}")
            if r.kind == KIND_FREEZE and r.frozen_until:
                lines.append(f"    frozen until {r.frozen_until}")
            if r.released_at:
                lines.append(f"    released {r.released_at} by {r.released_by}: {r.release_reason}")
            for number, held in enumerate(r.disclosed, 1):
                prefix = f"    record {number}: " if len(r.disclosed) > 1 else "    "
                lines.append(prefix + "; ".join(f"{k} = {value_text(v)}" for k, v in held.items()))
            lines.append(
                f"    signed by {r.jurisdiction} (record sha256 "
                f"{signed.signature['record_sha256'][:16]}…), signature verified"
            )
    return "\n".join(lines) + "\n"

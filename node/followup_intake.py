"""A follow-up request as a partner submits it, and the status it asks for (no gRPC).

`record_follow_up` checks an admitted request for what only a follow-up needs
(a case and a legal basis, an earlier answered match under the case, the fields,
the preservation period or the freeze the grant allows, a canonical item) and records it
through `node.followup`. `follow_up_status` reports the caller's requests of a
case, marking overdue pending ones `expired` first (each with its audit entry).
Refusals are `QueryRefused`; the servicer is `node.services.requests`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import grpc

from fedtrace.followup import KIND_DISCLOSE, KIND_FREEZE, FollowUpRecord
from fedtrace.identifiers import InvalidIdentifier
from fedtrace.pki import Identity
from fedtrace.v1 import requests_pb2
from node import followup
from node.audit import AUDIT_DIR, AuditError
from node.gate import Admission, QueryRefused
from node.state import NodeState

log = logging.getLogger(__name__)


def peer_fields(identity: Identity) -> dict[str, Any]:
    return {
        "jurisdiction": identity.jurisdiction,
        "role": identity.role,
        "subject": identity.subject,
        "serial": identity.serial,
        "fingerprint_sha256": identity.fingerprint_sha256,
    }


def record_follow_up(
    state: NodeState,
    identity: Identity,
    request: requests_pb2.SubmitFollowUpRequest,
    kind: str,
    admission: Admission,
    now: dt.datetime,
) -> followup.FollowUpRow:
    """Check an admitted follow-up and record it; QueryRefused when it is not accepted."""
    submission = _check(state, identity, request, kind, admission)
    return followup.submit(state.database, submission, now)


def _check(
    state: NodeState,
    identity: Identity,
    request: requests_pb2.SubmitFollowUpRequest,
    kind: str,
    admission: Admission,
) -> followup.Submission:
    """The submission to record, or the QueryRefused that says why it is not accepted."""
    grant, context = admission.grant, admission.context
    j = state.config.jurisdiction
    dataset = state.config.dataset(request.dataset)
    assert dataset is not None  # the gate refused unknown datasets
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    denied = grpc.StatusCode.PERMISSION_DENIED
    if not context.case_ref:
        raise QueryRefused(invalid, "a follow-up request must name its case; pass --case")
    if not context.legal_basis:
        raise QueryRefused(invalid, "a follow-up request needs a legal basis; pass --legal-basis")
    if len(request.reason) > followup.REASON_MAX_CHARS:
        raise QueryRefused(
            invalid, f"the reason is longer than {followup.REASON_MAX_CHARS} characters"
        )
    what = "wallet address" if dataset.kind == "wallet" else "person (NAME|DATE OF BIRTH[|DOC])"
    try:
        item = followup.canonical_item(dataset, request.item)
    except InvalidIdentifier as exc:
        raise QueryRefused(invalid, f"the item is not a valid {what}: {exc.reason}") from None
    if item != request.item:
        raise QueryRefused(invalid, f"the item is not a {what} in canonical form")
    if not followup.earlier_match(
        state.config.node_dir / AUDIT_DIR, identity.jurisdiction, context.case_ref, dataset.name
    ):
        raise QueryRefused(
            denied,
            f"{j} has answered no match by {identity.jurisdiction} under case "
            f"{context.case_ref!r} on dataset {dataset.name!r}; a follow-up request must "
            "follow a match under the same case",
        )
    allowed = followup.allowed_fields(dataset, grant.disclosable_fields)
    fields: tuple[str, ...] = ()
    days = 0
    automatic = grant.approval == "automatic"
    if kind == KIND_FREEZE:
        days = _freeze_days(request, grant.freeze_days_max, j, identity.jurisdiction)
        automatic = grant.freeze_approval == "automatic"
    elif kind == KIND_DISCLOSE:
        if request.preservation_days:
            raise QueryRefused(invalid, "a disclosure request asks for no preservation period")
        asked = tuple(dict.fromkeys(request.fields)) or tuple(allowed)
        extra = [f for f in asked if f not in allowed]
        if extra or not asked:
            raise QueryRefused(
                denied,
                f"{j}'s policy does not let {identity.jurisdiction} receive "
                f"{', '.join(extra) or 'any field'} of {dataset.name!r}; disclosable: "
                f"{', '.join(allowed) or 'none'}",
            )
        fields = asked
    else:
        if request.fields:
            raise QueryRefused(invalid, "a preservation request discloses no fields")
        days = request.preservation_days or grant.preservation_days_max
        if days > grant.preservation_days_max:
            raise QueryRefused(
                denied,
                f"{j}'s policy preserves records for {identity.jurisdiction} for at most "
                f"{grant.preservation_days_max} days; {days} asked",
            )
    return followup.Submission(
        kind=kind,
        partner=identity.jurisdiction,
        partner_subject=identity.subject,
        case_ref=context.case_ref,
        legal_basis=context.legal_basis,
        reason=request.reason,
        dataset=dataset,
        item=item,
        fields_asked=fields,
        preservation_days=days,
        automatic=automatic,
        answer_within_days=grant.answer_within_days,
        policy_version=admission.policy.version,
        grant_index=grant.index,
        nonce=context.nonce,
        amount_eur=request.amount_eur if kind == KIND_FREEZE else 0,
        policy_sha256=admission.policy.sha256,
    )


def _freeze_days(
    request: requests_pb2.SubmitFollowUpRequest, days_max: int | None, node: str, partner: str
) -> int:
    """The period of a freeze order, after checking it against the grant's `freeze_days_max`."""
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    if request.fields:
        raise QueryRefused(invalid, "a freeze order discloses no fields")
    if request.amount_eur < 1:
        raise QueryRefused(invalid, "a freeze order names the amount to restrain (--amount-eur)")
    if request.preservation_days < 1:
        raise QueryRefused(invalid, "a freeze order names its period (--days, at least 1)")
    if days_max is None:  # the gate admits freezes only under grants that set a limit
        raise QueryRefused(
            grpc.StatusCode.PERMISSION_DENIED, f"{node}'s policy accepts no freeze orders"
        )
    if request.preservation_days > days_max:
        raise QueryRefused(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{node}'s policy freezes assets for {partner} for at most {days_max} days "
            f"(freeze_days_max); {request.preservation_days} asked",
        )
    return request.preservation_days


def expire_and_audit(state: NodeState, now: dt.datetime) -> None:
    """Pending requests past their deadline become `expired`, each with its audit entry."""
    for row in followup.expire_overdue(state.database, now):
        state.gate.audit.append("request-expired", followup.audit_fields(row))


def follow_up_status(
    state: NodeState,
    identity: Identity,
    request: requests_pb2.FollowUpStatusRequest,
    now: dt.datetime,
) -> list[FollowUpRecord]:
    """The caller's requests under a case, as records to sign (overdue ones expired first)."""
    if identity.role != "investigator":
        raise QueryRefused(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{state.config.jurisdiction} reports follow-up requests only to investigators",
        )
    if not request.case_ref:
        raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, "pass the case reference (--case)")
    try:
        expire_and_audit(state, now)
        with state.database.session() as con:
            rows = followup.select_rows(
                con,
                partner=identity.jurisdiction,
                case_ref=request.case_ref,
                request_id=request.request_id or None,
            )
        state.gate.audit.append(
            "request-status",
            {
                "peer": peer_fields(identity),
                "case_ref": request.case_ref,
                "requests": [r.request_id for r in rows],
                "outcome": "answered",
            },
        )
    except AuditError as exc:
        log.error("audit trail not writable, status refused: %s", exc)
        raise QueryRefused(
            grpc.StatusCode.INTERNAL,
            f"{state.config.jurisdiction} cannot write its audit trail and answers nothing "
            "until its operator repairs it",
        ) from None
    if request.request_id and not rows:
        raise QueryRefused(
            grpc.StatusCode.NOT_FOUND,
            f"{state.config.jurisdiction} holds no request {request.request_id!r} of "
            f"{identity.jurisdiction} under case {request.case_ref!r}",
        )
    return [followup.record_of(row, state.config.jurisdiction, now) for row in rows]

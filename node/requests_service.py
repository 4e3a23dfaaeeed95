"""The node's RequestService: disclosure and preservation requests after a hit.

Thin servicer over plain functions: `submit_follow_up` admits a request through
the node's one gate (policy, budgets, audit; `node.gate`), checks what only a
follow-up needs (an earlier answered match under the case, the fields or the
period the grant allows, a canonical item), then records it through
`node.followup`; `follow_up_status` reports the caller's requests of a case,
marking overdue pending ones `expired` first. Every record leaves signed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from fedtrace.followup import KIND_DISCLOSE, KIND_PRESERVE, FollowUpRecord
from fedtrace.identifiers import InvalidIdentifier
from fedtrace.pki import Identity, sign
from fedtrace.v1 import requests_pb2, requests_pb2_grpc
from node import followup
from node.audit import AUDIT_DIR, AuditError
from node.auth import peer_identity
from node.gate import Outcome, QueryContextInfo, QueryRefused
from node.policy import Level, QueryKind, utc_now
from node.service import NodeState

log = logging.getLogger(__name__)

KINDS = {
    requests_pb2.FOLLOW_UP_KIND_DISCLOSE: (KIND_DISCLOSE, QueryKind.DISCLOSE),
    requests_pb2.FOLLOW_UP_KIND_PRESERVE: (KIND_PRESERVE, QueryKind.PRESERVE),
}
Clock = Callable[[], dt.datetime]


def peer_fields(identity: Identity) -> dict[str, Any]:
    return {
        "jurisdiction": identity.jurisdiction,
        "role": identity.role,
        "subject": identity.subject,
        "serial": identity.serial,
        "fingerprint_sha256": identity.fingerprint_sha256,
    }


def signed_record(state: NodeState, record: FollowUpRecord) -> requests_pb2.FollowUpRecord:
    body = record.canonical_json()
    digest = record.digest()
    return requests_pb2.FollowUpRecord(
        request_id=record.request_id,
        state=record.state,
        record_json=body,
        record_sha256=digest,
        signature=sign(state.key_pem, digest),
        certificate_pem=state.certificate_pem,
    )


def submit_follow_up(
    state: NodeState,
    identity: Identity,
    request: requests_pb2.SubmitFollowUpRequest,
    now: dt.datetime,
) -> followup.FollowUpRow:
    """Admit, check and record one follow-up; QueryRefused (audited) when it is not accepted."""
    gate = state.gate
    context = QueryContextInfo.from_proto(request.context)
    kinds = KINDS.get(request.kind)
    if kinds is None:
        refusal = QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "a follow-up request must be a disclosure or a preservation request",
        )
        gate.refuse(
            identity,
            QueryKind.DISCLOSE,
            refusal,
            dataset=request.dataset,
            context=context,
            item_count=1,
            asked=Level.DISCLOSURE_REQUEST,
        )
        refusal.audited = True
        raise refusal
    kind, query_kind = kinds
    admission = gate.admit(
        identity, query_kind, request.dataset, context, 1, Level.DISCLOSURE_REQUEST
    )
    try:
        submission = _check(state, identity, request, kind, admission.grant, context)
        row = followup.submit(
            state.database,
            followup.Submission(
                **submission,
                automatic=admission.grant.approval == "automatic",
                answer_within_days=admission.grant.answer_within_days,
                policy_version=admission.policy.version,
                grant_index=admission.grant.index,
            ),
            now,
        )
    except QueryRefused as refusal:
        gate.settle(admission, Outcome.REFUSED, reason=str(refusal), code=refusal.code)
        refusal.audited = True
        raise
    except BaseException:
        gate.settle(
            admission, Outcome.FAILED, reason="internal error", code=grpc.StatusCode.INTERNAL
        )
        raise
    try:  # audited before the answer leaves; an unaudited request is not kept either
        gate.settle(admission, Outcome.ANSWERED, details=followup.audit_fields(row))
    except QueryRefused:
        followup.forget(state.database, row.request_id)
        raise
    return row


def _check(
    state: NodeState,
    identity: Identity,
    request: requests_pb2.SubmitFollowUpRequest,
    kind: str,
    grant: Any,
    context: QueryContextInfo,
) -> dict[str, Any]:
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
    if kind == KIND_DISCLOSE:
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
    return {
        "kind": kind,
        "partner": identity.jurisdiction,
        "partner_subject": identity.subject,
        "case_ref": context.case_ref,
        "legal_basis": context.legal_basis,
        "reason": request.reason,
        "dataset": dataset,
        "item": item,
        "fields_asked": fields,
        "preservation_days": days,
        "nonce": context.nonce,
    }


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


class RequestServicer(requests_pb2_grpc.RequestServiceServicer):
    """Decode, call the domain function, encode, map refusals to status codes."""

    def __init__(self, state: NodeState, clock: Clock = utc_now) -> None:
        self._state = state
        self._clock = clock

    def Submit(
        self, request: requests_pb2.SubmitFollowUpRequest, context: grpc.ServicerContext
    ) -> requests_pb2.FollowUpRecord:
        identity = peer_identity(context)
        assert identity is not None  # IdentityInterceptor guarantees it
        now = self._clock()
        try:
            row = submit_follow_up(self._state, identity, request, now)
        except QueryRefused as exc:
            log.info(
                "follow-up refused: partner=%s code=%s reason=%s",
                identity.jurisdiction,
                exc.code.name,
                exc,
            )
            context.abort(exc.code, str(exc))
            raise  # unreachable: abort raises
        log.info(
            "follow-up %s recorded: partner=%s kind=%s state=%s",
            row.request_id,
            identity.jurisdiction,
            row.kind,
            row.state,
        )
        record = followup.record_of(row, self._state.config.jurisdiction, now)
        return signed_record(self._state, record)

    def Status(
        self, request: requests_pb2.FollowUpStatusRequest, context: grpc.ServicerContext
    ) -> Iterable[requests_pb2.FollowUpRecord]:
        identity = peer_identity(context)
        assert identity is not None
        try:
            records = follow_up_status(self._state, identity, request, self._clock())
        except QueryRefused as exc:
            context.abort(exc.code, str(exc))
            return
        for record in records:
            yield signed_record(self._state, record)


SERVICE_NAME = requests_pb2.DESCRIPTOR.services_by_name["RequestService"].full_name


def add_request_service(state: NodeState, server: grpc.Server) -> None:
    """Register the RequestService on the node's server (called by node.server.build_server)."""
    requests_pb2_grpc.add_RequestServiceServicer_to_server(RequestServicer(state), server)

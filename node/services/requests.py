"""RequestService: disclosure, preservation and freeze requests after a hit.

Thin servicer over plain functions: a request is admitted through the node's
one gate inside `node.session.query_session` (policy, budgets, audit); then
`record_follow_up` checks what only a follow-up needs (an earlier answered match
under the case, the fields or the period the grant allows, a canonical item)
and records it through `node.followup`; `follow_up_status` reports the caller's
requests of a case, marking overdue pending ones `expired` first. Every record
leaves signed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator

import grpc

from fedtrace.followup import KIND_DISCLOSE, KIND_FREEZE, KIND_PRESERVE, FollowUpRecord
from fedtrace.pki import sign
from fedtrace.v1 import requests_pb2, requests_pb2_grpc
from fedtrace.wire import Level
from node import followup
from node.followup_intake import follow_up_status, record_follow_up
from node.gate import QueryContextInfo, QueryRefused
from node.policy import QueryKind, utc_now
from node.session import abort, caller, query_session
from node.state import NodeState

log = logging.getLogger(__name__)

SERVICE_NAME = requests_pb2.DESCRIPTOR.services_by_name["RequestService"].full_name

KINDS = {
    requests_pb2.FOLLOW_UP_KIND_DISCLOSE: (KIND_DISCLOSE, QueryKind.DISCLOSE),
    requests_pb2.FOLLOW_UP_KIND_PRESERVE: (KIND_PRESERVE, QueryKind.PRESERVE),
    requests_pb2.FOLLOW_UP_KIND_FREEZE: (KIND_FREEZE, QueryKind.FREEZE),
}
Clock = Callable[[], dt.datetime]


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
        audit_head=state.gate.audit.signed_head(state.config.jurisdiction).to_proto(),
    )


class RequestServicer(requests_pb2_grpc.RequestServiceServicer):
    """Decode, call the domain function, encode, map refusals to status codes."""

    def __init__(self, state: NodeState, clock: Clock = utc_now) -> None:
        self._state = state
        self._clock = clock

    def Submit(
        self, request: requests_pb2.SubmitFollowUpRequest, context: grpc.ServicerContext
    ) -> requests_pb2.FollowUpRecord:
        state = self._state
        now = self._clock()
        kinds = KINDS.get(request.kind)
        query_kind = kinds[1] if kinds is not None else QueryKind.DISCLOSE
        info = QueryContextInfo.from_proto(request.context)
        with query_session(
            state,
            context,
            query_kind,
            asked=Level.DISCLOSURE_REQUEST,
            slot=False,
            label="follow-up",
        ) as session:
            identity = session.identity
            session.describe(request.dataset, info, 1)
            if kinds is None:
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a follow-up request must be a disclosure, preservation or freeze request",
                )
            admission = session.admit(request.dataset, info, 1, Level.DISCLOSURE_REQUEST)
            row = record_follow_up(state, identity, request, kinds[0], admission, now)
            try:  # audited before the answer leaves; an unaudited request is not kept either
                session.answered(details=followup.audit_fields(row))
            except QueryRefused:
                followup.forget(state.database, row.request_id)
                raise
        log.info(
            "follow-up %s recorded: partner=%s kind=%s state=%s",
            row.request_id,
            identity.jurisdiction,
            row.kind,
            row.state,
        )
        record = followup.record_of(row, state.config.jurisdiction, now)
        return signed_record(state, record)

    def Status(
        self, request: requests_pb2.FollowUpStatusRequest, context: grpc.ServicerContext
    ) -> Iterator[requests_pb2.FollowUpRecord]:
        try:
            records = follow_up_status(self._state, caller(context), request, self._clock())
        except QueryRefused as refusal:
            abort(context, refusal)
        for record in records:
            yield signed_record(self._state, record)

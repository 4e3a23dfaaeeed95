"""AggregateService: position tags and both rounds of an encrypted aggregate, over gRPC.

Round 1 (`Evaluate`) is admitted, charged and audited through the gate like a
match (`node.session`): it discloses the (shuffled) evaluation, so it is settled
as answered before the first point leaves. Round 2 (`Aggregate`) answers the
admitted query it names, once, and is audited as its own entry that carries the
signed transcript's digest and the round-1 request id. Nothing logged or audited
names a point, a tag or an identifier. The work is `node.aggregate_rounds`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from fedtrace import group
from fedtrace.opening import KIND_AGGREGATE_POINTS
from fedtrace.pki import sign
from fedtrace.v1 import aggregate_pb2, aggregate_pb2_grpc, node_pb2
from fedtrace.wire import CHUNK_BYTES, Level, batched
from node.aggregate import TAG_KIND, PendingAggregate
from node.aggregate_rounds import AggregateRounds
from node.audit import AuditError
from node.gate import QueryContextInfo, QueryRefused
from node.lookups import POSITION_TAGS, admit_lookup
from node.openings import QueryOpening, check_indicator, keep_details
from node.policy import QueryKind
from node.session import abort, caller, query_session
from node.state import NodeState

log = logging.getLogger(__name__)

SERVICE_NAME = aggregate_pb2.DESCRIPTOR.services_by_name["AggregateService"].full_name


class AggregateServicer(aggregate_pb2_grpc.AggregateServiceServicer):
    """Decode, call `AggregateRounds`, encode; refusals become status codes."""

    def __init__(self, state: NodeState) -> None:
        self._state = state
        self.rounds = AggregateRounds(state)

    def GetPositionTags(
        self, request: aggregate_pb2.GetPositionTagsRequest, context: grpc.ServicerContext
    ) -> Iterator[aggregate_pb2.PositionTagsChunk]:
        try:
            admit_lookup(self._state, caller(context), POSITION_TAGS, request.dataset)
            table = self.rounds.position_table(request.dataset, request.epoch_id)
        except QueryRefused as refusal:
            abort(context, refusal)
        yield aggregate_pb2.PositionTagsChunk(
            header=aggregate_pb2.PositionTagsHeader(
                dataset=table.dataset,
                epoch_id=table.epoch_id,
                tag_kind=TAG_KIND,
                row_count=table.row_count,
                total_bytes=len(table.tags),
                sha256=table.tags_sha256,
            )
        )
        for chunk in batched(table.tags, 1, CHUNK_BYTES):
            yield aggregate_pb2.PositionTagsChunk(data=chunk)

    def Evaluate(
        self,
        requests: Iterator[aggregate_pb2.AggregateEvaluateRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[aggregate_pb2.AggregateEvaluateResponse]:
        rounds = self.rounds
        with query_session(
            self._state, context, QueryKind.AGGREGATE, asked=Level.AGGREGATE, label="aggregate"
        ) as session:
            identity = session.identity
            requests = session.stream(requests)
            first = next(requests, None)
            if first is None or first.WhichOneof("part") != "header":
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "an aggregate Evaluate stream must start with its header",
                )
            header = first.header
            info = QueryContextInfo.from_proto(header.context)
            session.describe(header.dataset, info, header.item_count)
            rounds.check_header(header)
            admission = session.admit(
                header.dataset,
                info,
                header.item_count,
                Level.AGGREGATE,
                epsilon=rounds.epsilon_to_admit(identity, header),
                columns=list(header.columns),
            )
            sealing = QueryOpening(
                self._state, context, identity, KIND_AGGREGATE_POINTS, header, admission
            )
            round_one = rounds.round_one(
                identity, header, admission, requests, sealing.check_points
            )
            session.answered(
                details={
                    "round": "evaluate",
                    "query_id": round_one.summary.query_id.hex(),
                    "total_only": header.total_only,
                    "min_cohort": round_one.summary.min_cohort,
                    "noise_scales": {n.figure: n.scale for n in round_one.summary.noise},
                    **sealing.keep(
                        answer_points=round_one.response,
                        query_id=round_one.summary.query_id,
                        table=rounds.position_table(header.dataset, header.epoch_id)
                        if sealing.sealed
                        else None,
                    ),
                },
            )
            log.info(
                "aggregate round 1 answered: partner=%s dataset=%s items=%d columns=%s policy=%s",
                identity.jurisdiction,
                header.dataset,
                header.item_count,
                ",".join(header.columns),
                admission.policy.version,
            )
            yield aggregate_pb2.AggregateEvaluateResponse(summary=round_one.summary)
            for batch in batched(round_one.response, group.POINT_BYTES):
                yield aggregate_pb2.AggregateEvaluateResponse(
                    points=node_pb2.PointBatch(points=batch)
                )

    def Aggregate(
        self, requests: Iterator[aggregate_pb2.AggregateRequest], context: grpc.ServicerContext
    ) -> Iterator[aggregate_pb2.AggregateResponse]:
        state, rounds = self._state, self.rounds
        with query_session(
            state, context, QueryKind.AGGREGATE, label="aggregate round 2"
        ) as session:
            identity = session.identity
            pending: PendingAggregate | None = None
            try:
                round_two = rounds.read_round_two(identity, session.stream(requests))
                pending = round_two.pending
                try:  # authorised: the pending query is this partner's
                    session.hold_slot()
                except QueryRefused:
                    rounds.pending.restore(pending)  # busy: round 2 may be retried
                    raise
                kept = check_indicator(state, context, identity, round_two)
                ordered, transcript = rounds.answer_round_two(round_two)
                signed = transcript.digest()
                try:  # audited before the first ciphertext leaves the node
                    rounds.audit_round_two(
                        identity,
                        pending,
                        "answered",
                        transcript_sha256=signed.hex(),
                        details=keep_details(state.database, kept),
                    )
                except AuditError as exc:
                    log.error("audit trail not writable, aggregate refused: %s", exc)
                    raise QueryRefused(
                        grpc.StatusCode.INTERNAL,
                        f"{state.config.jurisdiction} cannot write its audit trail",
                    ) from None
            except QueryRefused as refusal:
                if refusal.code != grpc.StatusCode.INTERNAL:
                    try:
                        rounds.audit_round_two(
                            identity,
                            pending,
                            "refused",
                            code=refusal.code.name,
                            reason=str(refusal),
                        )
                    except AuditError:
                        log.error("aggregate refusal not audited: %s", refusal)
                refusal.audited = True  # in the round's own entry, not as a gate refusal
                raise
            log.info(
                "aggregate answered: partner=%s figures=%d total_only=%s",
                identity.jurisdiction,
                len(ordered),
                round_two.pending.total_only,
            )
            for figure, blob in ordered:
                yield aggregate_pb2.AggregateResponse(
                    answer=aggregate_pb2.ColumnAnswer(figure=figure, ciphertext=blob)
                )
            yield aggregate_pb2.AggregateResponse(
                trailer=aggregate_pb2.AggregateTrailer(
                    transcript_sha256=signed,
                    signature=sign(state.key_pem, signed),
                    audit_head=state.gate.audit.signed_head(state.config.jurisdiction).to_proto(),
                )
            )

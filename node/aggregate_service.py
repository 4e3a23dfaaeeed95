"""gRPC servicer for encrypted aggregates: decode, call `node.aggregate`, encode, map refusals.

Round 1 (`Evaluate`) is admitted, charged and audited through the gate like a
match: it discloses the (shuffled) evaluation, so the gate settles it as
answered before the first point leaves. Round 2 (`Aggregate`) answers the
admitted query it names, once, and is audited as its own entry that carries
the signed transcript's digest and the round-1 request id. Nothing logged or
audited names a point, a tag or an identifier.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from fedtrace import group, psi
from fedtrace.aggregate_transcript import (
    AggregateTranscript,
    FigureTerms,
    answers_sha256,
    sequence_sha256,
)
from fedtrace.he import HeError, PublicHeContext
from fedtrace.pki import Identity, sign
from fedtrace.v1 import aggregate_pb2, aggregate_pb2_grpc, node_pb2
from node.aggregate import (
    TAG_KIND,
    AggregateTables,
    AggregateUnavailable,
    PeerError,
    PendingAggregate,
    PendingQueries,
    PublicContexts,
    answer_figures,
    peer_masks,
    plan_figures,
)
from node.audit import AuditError
from node.auth import peer_identity
from node.gate import Admission, Outcome, QueryContextInfo, QueryRefused
from node.policy import Level, QueryKind
from node.service import (
    POINTS_PER_BATCH,
    NodeState,
    _abort,
    _epoch,
    read_match_points,
    take_query_slot,
)

log = logging.getLogger(__name__)

SERVICE_NAME = aggregate_pb2.DESCRIPTOR.services_by_name["AggregateService"].full_name
TAG_CHUNK_BYTES = 1 << 20


def _refused(code: grpc.StatusCode, message: str) -> QueryRefused:
    return QueryRefused(code, message)


@dataclass(frozen=True)
class RoundOne:
    summary: aggregate_pb2.AggregateSummary
    response: bytes


class AggregateServicer(aggregate_pb2_grpc.AggregateServiceServicer):
    """The node's AggregateService; holds tables, pending queries and cached HE contexts."""

    def __init__(self, state: NodeState) -> None:
        self._state = state
        self.tables = AggregateTables()
        self.pending = PendingQueries()
        self.contexts = PublicContexts()
        self._ca_pem = state.config.tls.ca.read_bytes()

    # --- position tags ------------------------------------------------------------------

    def GetPositionTags(
        self, request: aggregate_pb2.GetPositionTagsRequest, context: grpc.ServicerContext
    ) -> Iterable[aggregate_pb2.PositionTagsChunk]:
        try:
            epoch = _epoch(self._state, request.dataset, request.epoch_id)
            dataset = self._state.config.dataset(request.dataset)
            assert dataset is not None
            try:
                table = self.tables.get(self._state.database, dataset, epoch)
            except AggregateUnavailable as exc:
                raise _refused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        except QueryRefused as exc:
            context.abort(exc.code, str(exc))
            return
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
        for start in range(0, len(table.tags), TAG_CHUNK_BYTES):
            yield aggregate_pb2.PositionTagsChunk(data=table.tags[start : start + TAG_CHUNK_BYTES])

    # --- round 1 ------------------------------------------------------------------------

    def _header(self, identity: Identity, first: Any) -> aggregate_pb2.AggregateHeader:
        if first is None or first.WhichOneof("part") != "header":
            raise _refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "an aggregate Evaluate stream must start with its header",
            )
        header: aggregate_pb2.AggregateHeader = first.header
        dataset = self._state.config.dataset(header.dataset)
        _epoch(self._state, header.dataset, header.epoch_id)
        assert dataset is not None
        columns = list(header.columns)
        if not columns:
            raise _refused(grpc.StatusCode.INVALID_ARGUMENT, "name at least one column to sum")
        if len(set(columns)) != len(columns):
            raise _refused(grpc.StatusCode.INVALID_ARGUMENT, "a column is named twice")
        unknown = [c for c in columns if c not in dataset.aggregate_columns]
        if unknown:
            raise _refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{self._state.config.jurisdiction}'s dataset {header.dataset!r} cannot sum "
                f"{', '.join(unknown)}; its aggregate columns: "
                f"{', '.join(dataset.aggregate_columns) or 'none'}",
            )
        if header.epsilon < 0 or header.epsilon != header.epsilon:
            raise _refused(grpc.StatusCode.INVALID_ARGUMENT, "epsilon must be positive")
        return header

    def _epsilon(self, identity: Identity, header: aggregate_pb2.AggregateHeader) -> float:
        """The privacy loss to admit: as asked, or the grant's epsilon_per_query (0: noise off)."""
        grant = self._state.policies.current().grant_for(
            identity.jurisdiction, header.dataset, QueryKind.AGGREGATE
        )
        if grant is None or not grant.noise:
            return 0.0
        return float(header.epsilon) if header.epsilon > 0 else grant.epsilon_per_query

    def _round_one(
        self,
        identity: Identity,
        header: aggregate_pb2.AggregateHeader,
        admission: Admission,
        requests: Iterator[Any],
    ) -> RoundOne:
        grant = admission.grant
        j = self._state.config.jurisdiction
        if grant.total_only and not header.total_only:
            raise _refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{j}'s policy {admission.policy.version} answers {identity.jurisdiction}'s "
                f"aggregates on {header.dataset!r} only as federation totals; pass --total-only",
            )
        if grant.noise and admission.cost.epsilon <= 0:
            raise _refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{j}'s policy changed during the request; retry",
            )
        if not self.pending.has_room():
            raise _refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{j} holds its maximum of open aggregate queries; retry shortly",
            )
        epoch = _epoch(self._state, header.dataset, header.epoch_id)
        dataset = self._state.config.dataset(header.dataset)
        assert dataset is not None
        try:
            table = self.tables.get(self._state.database, dataset, epoch)
            plans = plan_figures(grant, table, list(header.columns), admission.cost.epsilon)
        except AggregateUnavailable as exc:
            raise _refused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        request = read_match_points(header, requests)
        try:
            answer = psi.shuffled(psi.evaluate(request.points, epoch.secret_key))
        except group.InvalidPoint as exc:
            raise _refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid point: {exc}") from None
        response = b"".join(answer)
        query_id = secrets.token_bytes(16)
        self.pending.put(
            PendingAggregate(
                query_id=query_id,
                peer_fingerprint=identity.fingerprint_sha256,
                table=table,
                plans=plans,
                epsilon=admission.cost.epsilon,
                total_only=header.total_only,
                min_cohort=grant.min_cohort,
                item_count=len(answer),
                request_sha256=request.request_sha256,
                response_sha256=hashlib.sha256(response).hexdigest(),
                request_id=admission.request_id,
                investigator=identity.jurisdiction,
                case_ref=header.context.case_ref,
                legal_basis=header.context.legal_basis,
                nonce=bytes(header.context.nonce).hex(),
                timestamp_unix_ms=int(header.context.timestamp_unix_ms),
                policy_version=admission.policy.version,
            )
        )
        summary = aggregate_pb2.AggregateSummary(
            query_id=query_id,
            dataset=table.dataset,
            epoch_id=table.epoch_id,
            item_count=len(answer),
            row_count=table.row_count,
            policy_version=admission.policy.version,
            jurisdiction=j,
            min_cohort=grant.min_cohort,
            epsilon=admission.cost.epsilon,
            noise=[
                aggregate_pb2.FigureNoise(
                    figure=p.figure,
                    scale=p.noise.scale,
                    half_width_95=p.noise.half_width_95,
                    decimals=p.decimals,
                )
                for p in plans
            ],
            total_only=header.total_only,
            expires_in_seconds=int(self.pending.seconds),
        )
        return RoundOne(summary, response)

    def Evaluate(
        self,
        requests: Iterator[aggregate_pb2.AggregateEvaluateRequest],
        context: grpc.ServicerContext,
    ) -> Iterable[aggregate_pb2.AggregateEvaluateResponse]:
        identity = peer_identity(context)
        assert identity is not None  # IdentityInterceptor guarantees it
        state, gate = self._state, self._state.gate
        busy = take_query_slot(state, identity, QueryKind.AGGREGATE)
        if busy is not None:
            _abort(context, busy)
            return
        admission: Admission | None = None
        header: aggregate_pb2.AggregateHeader | None = None
        try:
            first = next(requests, None)
            if first is not None and first.WhichOneof("part") == "header":
                header = first.header
            header = self._header(identity, first)
            admission = gate.admit(
                identity,
                QueryKind.AGGREGATE,
                header.dataset,
                QueryContextInfo.from_proto(header.context),
                header.item_count,
                Level.AGGREGATE,
                epsilon=self._epsilon(identity, header),
                columns=list(header.columns),
            )
            round_one = self._round_one(identity, header, admission, requests)
            gate.settle(
                admission,
                Outcome.ANSWERED,
                details={
                    "round": "evaluate",
                    "query_id": round_one.summary.query_id.hex(),
                    "total_only": header.total_only,
                    "min_cohort": round_one.summary.min_cohort,
                    "noise_scales": {n.figure: n.scale for n in round_one.summary.noise},
                },
            )
            log.info(
                "aggregate round 1 answered: partner=%s case=%s dataset=%s items=%d "
                "columns=%s policy=%s",
                identity.jurisdiction,
                header.context.case_ref,
                header.dataset,
                header.item_count,
                ",".join(header.columns),
                admission.policy.version,
            )
            yield aggregate_pb2.AggregateEvaluateResponse(summary=round_one.summary)
            step = POINTS_PER_BATCH * group.POINT_BYTES
            for start in range(0, len(round_one.response), step):
                yield aggregate_pb2.AggregateEvaluateResponse(
                    points=node_pb2.PointBatch(points=round_one.response[start : start + step])
                )
        except QueryRefused as exc:
            log.info(
                "aggregate refused: partner=%s code=%s reason=%s",
                identity.jurisdiction,
                exc.code.name,
                exc,
            )
            if admission is not None:
                gate.settle(admission, Outcome.REFUSED, reason=str(exc), code=exc.code)
            elif not exc.audited:
                gate.refuse(
                    identity,
                    QueryKind.AGGREGATE,
                    exc,
                    dataset=header.dataset if header is not None else "",
                    context=QueryContextInfo.from_proto(header.context)
                    if header is not None
                    else None,
                    item_count=header.item_count if header is not None else 0,
                    asked=Level.AGGREGATE,
                )
            _abort(context, exc)
        except BaseException:
            if admission is not None:
                gate.settle(
                    admission,
                    Outcome.FAILED,
                    reason="internal error",
                    code=grpc.StatusCode.INTERNAL,
                )
            raise
        finally:
            state.concurrency.release()

    # --- round 2 ------------------------------------------------------------------------

    def _read_round_two(
        self, identity: Identity, requests: Iterator[aggregate_pb2.AggregateRequest]
    ) -> tuple[
        aggregate_pb2.IndicatorHeader, PendingAggregate, bytes, PublicHeContext, list[bytes]
    ]:
        first = next(requests, None)
        if first is None or first.WhichOneof("part") != "header":
            raise _refused(
                grpc.StatusCode.INVALID_ARGUMENT, "an Aggregate stream must start with its header"
            )
        header = first.header
        pending = self.pending.take(bytes(header.query_id))
        if pending is None or pending.peer_fingerprint != identity.fingerprint_sha256:
            raise _refused(
                grpc.StatusCode.NOT_FOUND,
                "unknown or expired aggregate query id; run the query again",
            )
        if header.public_context_follows:
            message = next(requests, None)
            if message is None or message.WhichOneof("part") != "public_context":
                raise _refused(
                    grpc.StatusCode.INVALID_ARGUMENT, "the public HE context must follow the header"
                )
            try:
                digest, public = self.contexts.load(bytes(message.public_context))
            except HeError as exc:
                raise _refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            if digest != bytes(header.public_context_sha256):
                raise _refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the public HE context does not match its SHA-256",
                )
        else:
            cached = self.contexts.get(bytes(header.public_context_sha256))
            if cached is None:
                self.pending.restore(pending)
                raise _refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "this node does not hold that public HE context; send it",
                )
            digest, public = bytes(header.public_context_sha256), cached
        indicators: list[bytes] = []
        for message in requests:
            if (
                message.WhichOneof("part") != "indicator"
                or len(indicators) >= header.indicator_count
            ):
                raise _refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"expected {header.indicator_count} indicator ciphertexts",
                )
            indicators.append(bytes(message.indicator))
        if len(indicators) != header.indicator_count:
            raise _refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(indicators)} indicator ciphertexts received, "
                f"{header.indicator_count} announced",
            )
        return header, pending, digest, public, indicators

    def _answer(
        self,
        header: aggregate_pb2.IndicatorHeader,
        pending: PendingAggregate,
        digest: bytes,
        public: PublicHeContext,
        indicators: list[bytes],
    ) -> tuple[list[tuple[str, bytes]], AggregateTranscript]:
        state = self._state
        peers = {p.jurisdiction: bytes(p.certificate_pem) for p in header.peers}
        if pending.total_only != bool(peers):
            raise _refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a total-only query names its answering nodes in round 2, and only it does",
            )
        figures = [p.figure for p in pending.plans]
        masks = None
        if pending.total_only:
            try:
                masks = peer_masks(
                    state.key_pem,
                    state.config.jurisdiction,
                    peers,
                    self._ca_pem,
                    bytes(header.total_nonce),
                    figures,
                )
            except (PeerError, ValueError) as exc:
                raise _refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:
            answers = answer_figures(public, indicators, pending.table, pending.plans, masks)
        except (HeError, ValueError) as exc:
            raise _refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        ordered = [(figure, answers[figure]) for figure in figures]
        transcript = AggregateTranscript(
            jurisdiction=state.config.jurisdiction,
            investigator=pending.investigator,
            dataset=pending.table.dataset,
            epoch_id=pending.table.epoch_id,
            tags_sha256=pending.table.tags_sha256.hex(),
            disclosure=Level.AGGREGATE.label,
            policy_version=pending.policy_version,
            case_ref=pending.case_ref,
            legal_basis=pending.legal_basis,
            nonce=pending.nonce,
            timestamp_unix_ms=pending.timestamp_unix_ms,
            query_id=pending.query_id.hex(),
            item_count=pending.item_count,
            row_count=pending.table.row_count,
            total_only=pending.total_only,
            min_cohort=pending.min_cohort,
            epsilon=pending.epsilon,
            figures=tuple(
                FigureTerms(p.figure, p.decimals, p.noise.scale, p.noise.half_width_95)
                for p in pending.plans
            ),
            request_sha256=pending.request_sha256,
            response_sha256=pending.response_sha256,
            public_context_sha256=digest.hex(),
            indicator_sha256=sequence_sha256(indicators),
            answers_sha256=answers_sha256(ordered),
            peers=tuple(sorted(peers)),
            total_nonce=bytes(header.total_nonce).hex(),
        )
        return ordered, transcript

    def _audit_round_two(
        self,
        identity: Identity,
        pending: PendingAggregate | None,
        outcome: str,
        *,
        code: str = "OK",
        reason: str = "",
        transcript_sha256: str = "",
    ) -> None:
        fields: dict[str, Any] = {
            "peer": {
                "jurisdiction": identity.jurisdiction,
                "role": identity.role,
                "fingerprint_sha256": identity.fingerprint_sha256,
            },
            "kind": QueryKind.AGGREGATE.value,
            "outcome": outcome,
            "code": code,
            "reason": reason,
        }
        if pending is not None:
            fields.update(
                request_id=pending.request_id,
                case_ref=pending.case_ref,
                nonce=pending.nonce,
                dataset=pending.table.dataset,
                figures=[p.figure for p in pending.plans],
                total_only=pending.total_only,
                policy_version=pending.policy_version,
            )
        if transcript_sha256:
            fields["transcript_sha256"] = transcript_sha256
        self._state.gate.audit.append("aggregate-answer", fields)

    def Aggregate(
        self, requests: Iterator[aggregate_pb2.AggregateRequest], context: grpc.ServicerContext
    ) -> Iterable[aggregate_pb2.AggregateResponse]:
        identity = peer_identity(context)
        assert identity is not None
        state = self._state
        busy = take_query_slot(state, identity, QueryKind.AGGREGATE)
        if busy is not None:
            _abort(context, busy)
            return
        pending: PendingAggregate | None = None
        try:
            try:
                header, pending, digest, public, indicators = self._read_round_two(
                    identity, requests
                )
                ordered, transcript = self._answer(header, pending, digest, public, indicators)
                signed = transcript.digest()
                try:  # audited before the first ciphertext leaves the node
                    self._audit_round_two(
                        identity, pending, "answered", transcript_sha256=signed.hex()
                    )
                except AuditError as exc:
                    log.error("audit trail not writable, aggregate refused: %s", exc)
                    raise _refused(
                        grpc.StatusCode.INTERNAL,
                        f"{state.config.jurisdiction} cannot write its audit trail",
                    ) from None
            except QueryRefused as exc:
                log.info(
                    "aggregate round 2 refused: partner=%s code=%s reason=%s",
                    identity.jurisdiction,
                    exc.code.name,
                    exc,
                )
                if exc.code != grpc.StatusCode.INTERNAL:
                    try:
                        self._audit_round_two(
                            identity, pending, "refused", code=exc.code.name, reason=str(exc)
                        )
                    except AuditError:
                        log.error("aggregate refusal not audited: %s", exc)
                _abort(context, exc)
                return
            log.info(
                "aggregate answered: partner=%s case=%s figures=%d total_only=%s",
                identity.jurisdiction,
                pending.case_ref,
                len(ordered),
                pending.total_only,
            )
            for figure, blob in ordered:
                yield aggregate_pb2.AggregateResponse(
                    answer=aggregate_pb2.ColumnAnswer(figure=figure, ciphertext=blob)
                )
            yield aggregate_pb2.AggregateResponse(
                trailer=aggregate_pb2.AggregateTrailer(
                    transcript_sha256=signed, signature=sign(state.key_pem, signed)
                )
            )
        finally:
            state.concurrency.release()

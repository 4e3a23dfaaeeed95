"""The node's two rounds of an encrypted aggregate, as plain methods a unit test calls.

Round 1 checks the header, plans the figures from the admitting grant, evaluates
the blinded points (shuffled) and keeps the query, in memory, for round 2. Round 2
takes that query back (once), loads or reuses the investigator's public HE
context, and answers one masked ciphertext per figure with the transcript to
sign. Admission, settlement and audit of round 1 happen in `node.session`; round 2
is audited as its own `aggregate-answer` entry. The building blocks (tables,
figure plans, masks) are in `node.aggregate`; the gRPC side is
`node.services.aggregate`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
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
from fedtrace.pki import Identity
from fedtrace.v1 import aggregate_pb2
from fedtrace.wire import Level
from node.aggregate import (
    AggregateTable,
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
from node.gate import Admission, QueryRefused
from node.match import read_points
from node.policy import QueryKind
from node.state import NodeState, serving_epoch


@dataclass(frozen=True)
class RoundOne:
    summary: aggregate_pb2.AggregateSummary
    response: bytes


@dataclass(frozen=True)
class RoundTwo:
    """A decoded round-2 request."""

    header: aggregate_pb2.IndicatorHeader
    pending: PendingAggregate
    context_sha256: bytes
    public_context: PublicHeContext
    indicators: list[bytes]


class AggregateRounds:
    """Tables, pending queries and cached public HE contexts of one node, and both rounds."""

    def __init__(self, state: NodeState) -> None:
        self._state = state
        self.tables = AggregateTables()
        self.pending = PendingQueries()
        self.contexts = PublicContexts()
        self._ca_pem = state.config.tls.ca.read_bytes()

    def position_table(self, dataset_name: str, epoch_id: str) -> AggregateTable:
        """The table whose position tags an investigator fetches before round 1."""
        epoch = serving_epoch(self._state, dataset_name, epoch_id)
        dataset = self._state.config.dataset(dataset_name)
        assert dataset is not None
        try:
            return self.tables.get(self._state.database, dataset, epoch)
        except AggregateUnavailable as exc:
            raise QueryRefused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None

    def check_header(self, header: aggregate_pb2.AggregateHeader) -> None:
        """Refuse a round-1 header naming no, repeated or unknown columns, or a bad epsilon."""
        dataset = self._state.config.dataset(header.dataset)
        serving_epoch(self._state, header.dataset, header.epoch_id)
        assert dataset is not None
        columns = list(header.columns)
        if not columns:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, "name at least one column to sum")
        if len(set(columns)) != len(columns):
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, "a column is named twice")
        unknown = [c for c in columns if c not in dataset.aggregate_columns]
        if unknown:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{self._state.config.jurisdiction}'s dataset {header.dataset!r} cannot sum "
                f"{', '.join(unknown)}; its aggregate columns: "
                f"{', '.join(dataset.aggregate_columns) or 'none'}",
            )
        if header.epsilon < 0 or header.epsilon != header.epsilon:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, "epsilon must be positive")

    def epsilon_to_admit(self, identity: Identity, header: aggregate_pb2.AggregateHeader) -> float:
        """The privacy loss to admit: as asked, or the grant's epsilon_per_query (0: noise off)."""
        grant = self._state.policies.current().grant_for(
            identity.jurisdiction, header.dataset, QueryKind.AGGREGATE
        )
        if grant is None or not grant.noise:
            return 0.0
        return float(header.epsilon) if header.epsilon > 0 else grant.epsilon_per_query

    def round_one(
        self,
        identity: Identity,
        header: aggregate_pb2.AggregateHeader,
        admission: Admission,
        requests: Iterator[aggregate_pb2.AggregateEvaluateRequest],
    ) -> RoundOne:
        """Plan the figures, evaluate the points (shuffled) and keep the query for round 2."""
        grant = admission.grant
        j = self._state.config.jurisdiction
        if grant.total_only and not header.total_only:
            raise QueryRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{j}'s policy {admission.policy.version} answers {identity.jurisdiction}'s "
                f"aggregates on {header.dataset!r} only as federation totals; pass --total-only",
            )
        if grant.noise and admission.cost.epsilon <= 0:
            raise QueryRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{j}'s policy changed during the request; retry",
            )
        if not self.pending.has_room():
            raise QueryRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{j} holds its maximum of open aggregate queries; retry shortly",
            )
        per_partner = self._state.config.limits.max_pending_aggregates_per_partner
        if not self.pending.has_room(identity.jurisdiction, per_partner):
            raise QueryRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{identity.jurisdiction} holds its maximum of {per_partner} open aggregate "
                f"queries at {j}; finish or let one expire ({int(self.pending.seconds)} s) first",
            )
        epoch = serving_epoch(self._state, header.dataset, header.epoch_id)
        dataset = self._state.config.dataset(header.dataset)
        assert dataset is not None
        try:
            table = self.tables.get(self._state.database, dataset, epoch)
            plans = plan_figures(grant, table, list(header.columns), admission.cost.epsilon)
        except AggregateUnavailable as exc:
            raise QueryRefused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        request = read_points(header.item_count, requests)
        try:
            answer = psi.shuffled(psi.evaluate(request.points, epoch.secret_key))
        except group.InvalidPoint as exc:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid point: {exc}") from None
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

    def read_round_two(
        self, identity: Identity, requests: Iterator[aggregate_pb2.AggregateRequest]
    ) -> RoundTwo:
        """The round-2 stream: the pending query it names, the public context, the indicators."""
        first = next(requests, None)
        if first is None or first.WhichOneof("part") != "header":
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT, "an Aggregate stream must start with its header"
            )
        header = first.header
        pending = self.pending.take(bytes(header.query_id))
        if pending is None or pending.peer_fingerprint != identity.fingerprint_sha256:
            raise QueryRefused(
                grpc.StatusCode.NOT_FOUND,
                "unknown or expired aggregate query id; run the query again",
            )
        if header.public_context_follows:
            message = next(requests, None)
            if message is None or message.WhichOneof("part") != "public_context":
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT, "the public HE context must follow the header"
                )
            try:
                digest, public = self.contexts.load(bytes(message.public_context))
            except HeError as exc:
                raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            if digest != bytes(header.public_context_sha256):
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the public HE context does not match its SHA-256",
                )
        else:
            cached = self.contexts.get(bytes(header.public_context_sha256))
            if cached is None:
                self.pending.restore(pending)
                raise QueryRefused(
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
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"expected {header.indicator_count} indicator ciphertexts",
                )
            indicators.append(bytes(message.indicator))
        if len(indicators) != header.indicator_count:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(indicators)} indicator ciphertexts received, "
                f"{header.indicator_count} announced",
            )
        return RoundTwo(header, pending, digest, public, indicators)

    def answer_round_two(
        self, round_two: RoundTwo
    ) -> tuple[list[tuple[str, bytes]], AggregateTranscript]:
        """One ciphertext per figure, in plan order, and the transcript to sign."""
        state = self._state
        header, pending, digest = round_two.header, round_two.pending, round_two.context_sha256
        public, indicators = round_two.public_context, round_two.indicators
        peers = {p.jurisdiction: bytes(p.certificate_pem) for p in header.peers}
        if pending.total_only != bool(peers):
            raise QueryRefused(
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
                raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:
            answers = answer_figures(public, indicators, pending.table, pending.plans, masks)
        except (HeError, ValueError) as exc:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
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

    def audit_round_two(
        self,
        identity: Identity,
        pending: PendingAggregate | None,
        outcome: str,
        *,
        code: str = "OK",
        reason: str = "",
        transcript_sha256: str = "",
    ) -> None:
        """The round-2 `aggregate-answer` entry; raises AuditError when it cannot be written."""
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

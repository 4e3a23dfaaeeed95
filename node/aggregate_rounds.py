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

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from fedtrace import group, psi
from fedtrace.aggregate import MaskMember
from fedtrace.aggregate_transcript import (
    AggregateTranscript,
    FigureTerms,
    answers_sha256,
    sequence_sha256,
)
from fedtrace.he import MAX_PUBLIC_CONTEXT_BYTES, PARAMETER_SET, HeError, PublicHeContext
from fedtrace.pki import Identity
from fedtrace.revocation import RevocationWatch
from fedtrace.transcript import TRANSCRIPT_VERSION
from fedtrace.v1 import aggregate_pb2
from fedtrace.wire import Level
from node.aggregate import (
    AggregateTable,
    AggregateTables,
    AggregateUnavailable,
    PeerError,
    PeerStatement,
    PendingAggregate,
    PendingQueries,
    PublicContexts,
    answer_figures,
    peer_masks,
    plan_figures,
    start_total_only,
)
from node.budget import ensure_schema
from node.gate import Admission, QueryRefused
from node.match import ReceivedPoints, read_points
from node.openings import required_monitors
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
        self._revocations = RevocationWatch(state.config.tls.revoked, ca_pem=self._ca_pem)

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
        """The privacy loss to admit, which the node's policy decides (0: noise off).

        Checked before admission, so nothing is charged for a refusal: the coordinator's
        epsilon is 0 or exactly the grant's ``epsilon_per_query`` (a smaller epsilon
        means more noise per answer but lets a partner split its budget into more
        queries, so the node does not let it choose); the query names at least the
        grant's ``min_cohort`` items (a zero-item or tiny round 1 would aim the
        aggregate at a handful of records); and the grant's ``epsilon_lifetime``
        still has room for one more query.
        """
        grant = self._state.policies.current().grant_for(
            identity.jurisdiction, header.dataset, QueryKind.AGGREGATE
        )
        if grant is None:
            return 0.0  # the gate refuses it with its own reason
        j = self._state.config.jurisdiction
        if header.item_count < grant.min_cohort:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{j} answers aggregates over at least {grant.min_cohort} watchlist items "
                f"(min_cohort); this query names {header.item_count}",
            )
        if not grant.noise:
            return 0.0
        epsilon = grant.epsilon_per_query
        if header.epsilon > 0 and abs(header.epsilon - epsilon) > 1e-12:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{j} answers {identity.jurisdiction}'s aggregates on {header.dataset!r} at "
                f"epsilon {epsilon:g} per query, as its policy says; ask for that or leave "
                "epsilon out",
            )
        if grant.epsilon_lifetime is None:
            raise QueryRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{j}'s grant for {identity.jurisdiction} sets no epsilon_lifetime; "
                "aggregates with noise are not answered without one",
            )
        spent = self._lifetime_spent(identity.jurisdiction, header.dataset, grant.valid_from)
        if spent + epsilon > grant.epsilon_lifetime + 1e-9:
            raise QueryRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{identity.jurisdiction} has spent epsilon {spent:g} of the "
                f"{grant.epsilon_lifetime:g} its grant at {j} allows over its lifetime",
            )
        return epsilon

    def _lifetime_spent(self, partner: str, dataset: str, since: dt.datetime | None) -> float:
        """Epsilon charged to ``partner`` on ``dataset`` since the grant became valid."""
        since_ms = int(since.timestamp() * 1000) if since is not None else 0
        with self._state.database.session() as con:
            ensure_schema(con)
            row = con.execute(
                "SELECT COALESCE(SUM(epsilon), 0) FROM policy_usage WHERE partner = ? AND "
                "dataset = ? AND kind = ? AND charged_at_ms >= ?",
                [partner, dataset, QueryKind.AGGREGATE.value, since_ms],
            ).fetchone()
        return float(row[0]) if row is not None else 0.0

    def round_one(
        self,
        identity: Identity,
        header: aggregate_pb2.AggregateHeader,
        admission: Admission,
        requests: Iterator[aggregate_pb2.AggregateEvaluateRequest],
        check: Callable[[ReceivedPoints], None] | None = None,
    ) -> RoundOne:
        """Plan the figures, evaluate the points (shuffled) and keep the query for round 2.

        `check` sees the received points before anything is evaluated (a sealed opening)."""
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
        if check is not None:
            check(request)
        try:
            answer = psi.shuffled(psi.evaluate(request.points, epoch.secret_key))
        except group.InvalidPoint as exc:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid point: {exc}") from None
        response = b"".join(answer)
        query_id = secrets.token_bytes(16)
        total = (
            start_total_only(self._state.key_pem, j, identity.jurisdiction, query_id)
            if header.total_only
            else None
        )
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
                policy_sha256=admission.policy.sha256,
                total=total,
                monitors=required_monitors(admission),
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
                    non_negative=p.non_negative,
                    clipped=p.bounds is not None,  # the count and unclipped columns: 0, 0
                    clip_lo=p.bounds[0] if p.bounds is not None else 0,
                    clip_hi=p.bounds[1] if p.bounds is not None else 0,
                )
                for p in plans
            ],
            total_only=header.total_only,
            expires_in_seconds=int(self.pending.seconds),
            he_parameter_set=PARAMETER_SET,
            total_salt=total.member.salt if total else b"",
            agreement_key=total.member.agreement_key if total else b"",
            agreement_signature=total.signature if total else b"",
            policy_sha256=bytes.fromhex(admission.policy.sha256),
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
        if header.he_parameter_set != PARAMETER_SET:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"HE parameter set {header.he_parameter_set!r}; this node answers under "
                f"{PARAMETER_SET}",
            )
        first_indicator: bytes | None = None
        if header.public_context_follows:
            size = header.public_context_bytes
            if not 0 < size <= MAX_PUBLIC_CONTEXT_BYTES:
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a public HE context of {size} bytes announced; at most "
                    f"{MAX_PUBLIC_CONTEXT_BYTES} are accepted",
                )
            parts: list[bytes] = []
            received = 0
            for message in requests:
                if message.WhichOneof("part") != "public_context":
                    if message.WhichOneof("part") == "indicator":
                        first_indicator = bytes(message.indicator)
                    break
                received += len(message.public_context)
                if received > size:
                    raise QueryRefused(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "more public HE context bytes than announced",
                    )
                parts.append(bytes(message.public_context))
            if received != size:
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{received} of {size} public HE context bytes received before the indicator",
                )
            try:
                digest, public = self.contexts.load(b"".join(parts))
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
        indicators: list[bytes] = [] if first_indicator is None else [first_indicator]
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
        peers = [
            PeerStatement(
                MaskMember(
                    p.jurisdiction,
                    bytes(p.query_id),
                    bytes(p.total_salt),
                    bytes(p.agreement_key),
                ),
                bytes(p.certificate_pem),
                bytes(p.agreement_signature),
            )
            for p in header.peers
        ]
        if pending.total_only != bool(peers):
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a total-only query names its answering nodes in round 2, and only it does",
            )
        figures = [p.figure for p in pending.plans]
        masks = None
        set_digest = b""
        if pending.total_only:
            assert pending.total is not None
            try:
                masks, set_digest = peer_masks(
                    pending.total,
                    pending.investigator,
                    peers,
                    self._ca_pem,
                    self._revocations.current(),
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
                FigureTerms(p.figure, p.decimals, p.noise.scale, p.noise.half_width_95, p.bounds)
                for p in pending.plans
            ),
            request_sha256=pending.request_sha256,
            response_sha256=pending.response_sha256,
            public_context_sha256=digest.hex(),
            indicator_sha256=sequence_sha256(indicators),
            answers_sha256=answers_sha256(ordered),
            peers=tuple(sorted(p.member.code for p in peers)),
            total_nonce=bytes(header.total_nonce).hex(),
            he_parameter_set=PARAMETER_SET,
            answering_set_sha256=set_digest.hex(),
            policy_sha256=pending.policy_sha256,
            v=TRANSCRIPT_VERSION,
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
        details: dict[str, Any] | None = None,
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
        if details:
            fields["details"] = details
        self._state.gate.audit.append("aggregate-answer", fields)

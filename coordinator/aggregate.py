"""The aggregate query: how much the watchlisted wallets moved at each node, never which ones.

Per node, through coordinator.fanout (own thread, shared deadline, retries, node
certificate and revocation check): node info, the epoch's position tags (cached
per epoch like filters, coordinator.epoch_cache), round 1 (blinded watchlist in,
shuffled evaluation out) and the matched rows of the node's table. Then round 2:
one HE key pair for the whole query, an encrypted indicator per node, masked
ciphertexts back, decrypted to noisy sums (coordinator.figures). With
``total_only`` the answering set (at least two nodes, never the investigator's
own) is fixed after round 1 and sent to every node with each member's signed salt
and per-query agreement key; their pairwise masks cancel only in the federation
total. If a node drops out after that, the total is abandoned (docs/aggregates.md).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from coordinator.epoch_cache import TagCache, checked_epoch_id
from coordinator.fanout import Deadline, NodeTrust, checked_info, dataset_info, fan_out
from coordinator.federation import Federation, NodeEntry
from coordinator.figures import (
    AggregateOutcome,
    AggregateResult,
    FederationTotal,
    node_figures,
    sum_figures,
)
from coordinator.heads import HeadWitness
from coordinator.progress import Progress, silent
from coordinator.results import NodeFailure, NodeResult, policy_digest
from coordinator.sealing import IndicatorSealing, Sealer
from coordinator.transport import Connections, NodeConnection
from fedtrace import group, psi
from fedtrace.aggregate import (
    COUNT_COLUMN,
    MIN_ANSWERING_SET,
    TAG_BYTES,
    MaskMember,
    answering_set_digest,
    indicator,
    match_positions,
)
from fedtrace.aggregate_transcript import (
    AggregateTranscript,
    FigureTerms,
    answers_sha256,
    sequence_sha256,
)
from fedtrace.he import PARAMETER_SET, HeError, SecretHeContext
from fedtrace.items import item_bytes
from fedtrace.pki import verify_signature
from fedtrace.revocation import RevocationList
from fedtrace.transcript import SIGNATURE_ALGORITHM, TRANSCRIPT_VERSION
from fedtrace.v1 import aggregate_pb2, node_pb2
from fedtrace.wire import CHUNK_BYTES, Level, NodeStatus, batched

TAG_KIND = "blake2b64-aggtag1"


@dataclass(frozen=True)
class AggregateQuery:
    dataset: str
    case_ref: str
    legal_basis: str
    items: tuple[str, ...]  # canonical wallet identifiers, deduplicated
    investigator: str
    columns: tuple[str, ...]
    total_only: bool = False
    epsilon: float = 0.0  # 0: each node's grant decides


@dataclass
class _RoundOne:
    """What the coordinator holds for a node between the two rounds."""

    entry: NodeEntry
    connection: NodeConnection
    node_cert: bytes
    context: node_pb2.QueryContext
    summary: aggregate_pb2.AggregateSummary
    tags_sha256: str
    positions: list[int]
    request_sha256: str
    response_sha256: str
    sealing: IndicatorSealing | None = None  # round 2's sealed openings, if a grant names monitors


def _tags(
    entry: NodeEntry,
    connection: NodeConnection,
    dataset: str,
    epoch_id: str,
    cache: TagCache,
    deadline: Deadline,
    report: Progress,
) -> bytes:
    key = (entry.name, dataset, epoch_id)
    cached = cache.get(key)
    if cached is not None:
        return cached
    report(entry.name, "fetching the epoch's position tags")
    chunks = connection.position_tags(
        aggregate_pb2.GetPositionTagsRequest(dataset=dataset, epoch_id=epoch_id),
        deadline.remaining(),
    )
    first = next(chunks, None)
    if first is None or first.WhichOneof("part") != "header":
        raise NodeFailure(NodeStatus.ERROR, f"{entry.name} sent position tags without their header")
    header = first.header
    if header.tag_kind != TAG_KIND or header.epoch_id != epoch_id:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{entry.name} sent tags of kind {header.tag_kind!r} for "
            f"epoch {header.epoch_id!r}; expected {TAG_KIND}, {epoch_id}",
        )
    parts: list[bytes] = []
    received = 0
    for chunk in chunks:
        received += len(chunk.data)
        if received > header.total_bytes:
            raise NodeFailure(NodeStatus.ERROR, f"{entry.name} sent more tag bytes than announced")
        parts.append(chunk.data)
    tags = b"".join(parts)
    if (
        len(tags) != header.total_bytes
        or len(tags) != header.row_count * TAG_BYTES
        or hashlib.sha256(tags).digest() != header.sha256
    ):
        raise NodeFailure(NodeStatus.ERROR, f"{entry.name}'s position tags arrived damaged")
    cache.put(key, tags)
    return tags


def _evaluate_requests(
    header: aggregate_pb2.AggregateHeader, blob: bytes
) -> Iterator[aggregate_pb2.AggregateEvaluateRequest]:
    yield aggregate_pb2.AggregateEvaluateRequest(header=header)
    for batch in batched(blob, group.POINT_BYTES):
        yield aggregate_pb2.AggregateEvaluateRequest(points=node_pb2.PointBatch(points=batch))


def _round_one(
    entry: NodeEntry,
    connection: NodeConnection,
    query: AggregateQuery,
    blinded: psi.BlindedQuery,
    trust: NodeTrust,
    cache: TagCache,
    deadline: Deadline,
    report: Progress,
    heads: HeadWitness,
    sealer: Sealer | None = None,
) -> _RoundOne:
    for attempt in range(2):
        info, node_cert = checked_info(entry, connection, deadline, trust, report)
        heads.check(entry.name, info, node_cert)
        dataset = dataset_info(entry, info, query.dataset)
        epoch_id = checked_epoch_id(entry.name, dataset.epoch_id)
        missing = [c for c in query.columns if c not in dataset.aggregate_columns]
        if missing:
            raise NodeFailure(
                NodeStatus.ERROR,
                f"dataset {query.dataset!r} at {entry.name} cannot sum "
                f"{', '.join(missing)}; its aggregate columns: "
                f"{', '.join(dataset.aggregate_columns) or 'none'}",
            )
        try:
            tags = _tags(entry, connection, query.dataset, epoch_id, cache, deadline, report)
            context = node_pb2.QueryContext(
                case_ref=query.case_ref,
                legal_basis=query.legal_basis,
                nonce=secrets.token_bytes(16),
                timestamp_unix_ms=int(time.time() * 1000),
            )
            header = aggregate_pb2.AggregateHeader(
                context=context,
                dataset=query.dataset,
                epoch_id=epoch_id,
                item_count=len(blinded.blinded),
                columns=list(query.columns),
                total_only=query.total_only,
                epsilon=query.epsilon,
            )
            sealing = None
            if sealer is not None and dataset.monitors:
                opened, sealing = sealer.aggregate_round_one(
                    entry.name,
                    dataset,
                    epoch_id,
                    context,
                    query.investigator,
                    blinded.blinded,
                    [item_bytes("wallet", item) for item in query.items],
                    blinded.scalar,
                )
                header.openings.extend(opened)
            sent = b"".join(blinded.blinded)
            report(entry.name, f"evaluating {len(blinded.blinded):,} blinded items")
            summary: aggregate_pb2.AggregateSummary | None = None
            points: list[bytes] = []
            digest = hashlib.sha256()
            for message in connection.aggregate_evaluate(
                _evaluate_requests(header, sent), deadline.remaining()
            ):
                part = message.WhichOneof("part")
                if part == "summary" and summary is None:
                    summary = message.summary
                elif part == "points" and summary is not None:
                    digest.update(message.points.points)
                    points.extend(group.split_points(message.points.points))
                else:
                    raise NodeFailure(
                        NodeStatus.ERROR, f"{entry.name} answered out of protocol order"
                    )
        except grpc.RpcError as exc:
            if (
                exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                and attempt == 0
                and "epoch" in (exc.details() or "")
            ):
                continue  # a new epoch started meanwhile: refetch its tags once
            raise
        except group.InvalidPoint as exc:
            raise NodeFailure(
                NodeStatus.ERROR, f"{entry.name} answered malformed points: {exc}"
            ) from None
        if summary is not None and summary.he_parameter_set != PARAMETER_SET:
            raise NodeFailure(
                NodeStatus.ERROR,
                f"{entry.name} answers under HE parameters {summary.he_parameter_set!r}; "
                f"this coordinator uses {PARAMETER_SET}",
            )
        if summary is None or len(points) != len(blinded.blinded):
            raise NodeFailure(
                NodeStatus.ERROR,
                f"{entry.name} answered {len(points)} of "
                f"{len(blinded.blinded)} items or an incomplete stream",
            )
        expected = [COUNT_COLUMN, *query.columns]
        if (
            [n.figure for n in summary.noise] != expected
            or summary.row_count * TAG_BYTES != len(tags)
            or summary.epoch_id != epoch_id
        ):
            raise NodeFailure(
                NodeStatus.ERROR, f"{entry.name}'s round-1 summary does not fit the query"
            )
        try:
            unblinded = blinded.unblind(points)
        except (group.InvalidPoint, ValueError) as exc:
            raise NodeFailure(
                NodeStatus.ERROR, f"{entry.name} answered an invalid point: {exc}"
            ) from None
        return _RoundOne(
            entry=entry,
            connection=connection,
            node_cert=node_cert,
            context=context,
            summary=summary,
            tags_sha256=hashlib.sha256(tags).hexdigest(),
            positions=match_positions(tags, unblinded),
            request_sha256=hashlib.sha256(sent).hexdigest(),
            response_sha256=digest.hexdigest(),
            sealing=sealing,
        )
    raise NodeFailure(NodeStatus.ERROR, "the node's epoch changed twice during the query")


def _aggregate_requests(
    header: aggregate_pb2.IndicatorHeader, public_blob: bytes, indicators: Sequence[bytes]
) -> Iterator[aggregate_pb2.AggregateRequest]:
    yield aggregate_pb2.AggregateRequest(header=header)
    # About 9.4 MB with the relinearisation keys: more than one message may carry.
    for part in batched(public_blob, 1, CHUNK_BYTES):
        yield aggregate_pb2.AggregateRequest(public_context=part)
    for blob in indicators:
        yield aggregate_pb2.AggregateRequest(indicator=blob)


def _round_two(
    one: _RoundOne,
    query: AggregateQuery,
    secret: SecretHeContext,
    public_blob: bytes,
    peers: Sequence[aggregate_pb2.PeerCertificate],
    total_nonce: bytes,
    deadline: Deadline,
    report: Progress,
    heads: HeadWitness,
) -> tuple[dict[str, int], dict[str, Any]]:
    """Send the encrypted indicator, check the signed transcript, decrypt (masked if total-only)."""
    entry, summary = one.entry, one.summary
    report(entry.name, f"encrypting the indicator over {summary.row_count:,} rows")
    indicators = secret.encrypt_indicator(indicator(summary.row_count, one.positions))
    public_sha = hashlib.sha256(public_blob).digest()
    header = aggregate_pb2.IndicatorHeader(
        query_id=summary.query_id,
        public_context_sha256=public_sha,
        public_context_follows=True,
        indicator_count=len(indicators),
        peers=list(peers),
        total_nonce=total_nonce,
        he_parameter_set=PARAMETER_SET,
        public_context_bytes=len(public_blob),
    )
    if one.sealing is not None:
        header.openings.extend(
            one.sealing.openings(
                indicators, summary.query_id, secret, summary.row_count, one.positions
            )
        )
    report(entry.name, "waiting for the encrypted sums")
    answers: list[tuple[str, bytes]] = []
    trailer: aggregate_pb2.AggregateTrailer | None = None
    for message in one.connection.aggregate(
        _aggregate_requests(header, public_blob, indicators), deadline.remaining()
    ):
        part = message.WhichOneof("part")
        if part == "answer" and trailer is None:
            answers.append((message.answer.figure, bytes(message.answer.ciphertext)))
        elif part == "trailer" and trailer is None:
            trailer = message.trailer
        else:
            raise NodeFailure(NodeStatus.ERROR, f"{entry.name} answered out of protocol order")
    figures = [n.figure for n in summary.noise]
    if trailer is None or [name for name, _ in answers] != figures:
        raise NodeFailure(NodeStatus.ERROR, f"{entry.name} sent an incomplete aggregate answer")
    transcript = AggregateTranscript(
        jurisdiction=entry.name,
        investigator=query.investigator,
        dataset=query.dataset,
        epoch_id=summary.epoch_id,
        tags_sha256=one.tags_sha256,
        disclosure=Level.AGGREGATE.label,
        policy_version=summary.policy_version,
        case_ref=query.case_ref,
        legal_basis=query.legal_basis,
        nonce=one.context.nonce.hex(),
        timestamp_unix_ms=one.context.timestamp_unix_ms,
        query_id=summary.query_id.hex(),
        item_count=summary.item_count,
        row_count=summary.row_count,
        total_only=summary.total_only,
        min_cohort=summary.min_cohort,
        epsilon=summary.epsilon,
        figures=tuple(FigureTerms.from_noise(n) for n in summary.noise),
        request_sha256=one.request_sha256,
        response_sha256=one.response_sha256,
        public_context_sha256=public_sha.hex(),
        indicator_sha256=sequence_sha256(indicators),
        answers_sha256=answers_sha256(answers),
        peers=tuple(sorted(p.jurisdiction for p in peers)),
        total_nonce=total_nonce.hex(),
        he_parameter_set=PARAMETER_SET,
        answering_set_sha256=_set_digest(peers, total_nonce),
        policy_sha256=policy_digest(entry.name, summary.policy_sha256),
        v=TRANSCRIPT_VERSION,
    )
    digest = transcript.digest()
    if trailer.transcript_sha256 != digest or not verify_signature(
        one.node_cert, digest, trailer.signature
    ):
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{entry.name}'s signature does not match the exchange; the answer was discarded",
        )
    heads.check(entry.name, trailer, one.node_cert, answer=True)
    try:
        values = {name: secret.decrypt_sum(blob) for name, blob in answers}
    except HeError as exc:
        raise NodeFailure(
            NodeStatus.ERROR, f"{entry.name}'s encrypted answer is unusable: {exc}"
        ) from None
    signature = {
        "algorithm": SIGNATURE_ALGORITHM,
        "transcript": transcript.as_json(),
        "transcript_sha256": digest.hex(),
        "value": trailer.signature.hex(),
        "certificate_pem": one.node_cert.decode(),
    }
    return values, signature


def run_aggregate(
    federation: Federation,
    query: AggregateQuery,
    connections: Connections,
    ca_pem: bytes,
    *,
    nodes: Sequence[NodeEntry] | None = None,
    cache: TagCache | None = None,
    progress: Progress | None = None,
    revoked: RevocationList | None = None,
) -> AggregateOutcome:
    """Run one aggregate query against the selected nodes; results in roster order."""
    entries = list(nodes or federation.nodes)
    tags = cache or TagCache(None)
    report = progress or silent
    trust = NodeTrust(ca_pem, revoked)
    deadline = Deadline.after(federation.deadline_seconds)
    report("*", f"blinding {len(query.items):,} watchlist items")
    blinded = psi.BlindedQuery([item_bytes("wallet", item) for item in query.items])
    failures: dict[str, NodeResult] = {}
    rounds: dict[str, _RoundOne] = {}
    seconds: dict[str, float] = {}
    heads = HeadWitness()
    sealer = Sealer(federation)

    def first(entry: NodeEntry, connection: NodeConnection) -> _RoundOne:
        return _round_one(
            entry, connection, query, blinded, trust, tags, deadline, report, heads, sealer
        )

    for outcome in fan_out(entries, connections, deadline, first, report, report_status=False):
        seconds[outcome.entry.name] = outcome.seconds
        if outcome.failure is not None:
            failures[outcome.entry.name] = outcome.failure
        elif outcome.value is not None:
            rounds[outcome.entry.name] = outcome.value
    if query.total_only and query.investigator in rounds:
        # Its masks would unmask the others; every node refuses a set that holds it.
        failures[query.investigator] = NodeResult(
            query.investigator,
            NodeStatus.ERROR,
            "the investigator's own node takes no part in a federation total",
        )
        del rounds[query.investigator]
    if query.total_only and len(rounds) < MIN_ANSWERING_SET:
        for name in rounds:
            failures[name] = NodeResult(
                name,
                NodeStatus.ERROR,
                f"a federation total needs at least {MIN_ANSWERING_SET} answering nodes; "
                f"only {len(rounds)} answered round 1, so no total was asked for",
            )
        rounds.clear()
    secret = SecretHeContext.generate()
    public_blob = secret.public_bytes()
    total_nonce = secrets.token_bytes(16) if query.total_only else b""
    peers = (
        [
            aggregate_pb2.PeerCertificate(
                jurisdiction=name,
                certificate_pem=one.node_cert,
                query_id=one.summary.query_id,
                total_salt=one.summary.total_salt,
                agreement_key=one.summary.agreement_key,
                agreement_signature=one.summary.agreement_signature,
            )
            for name, one in sorted(rounds.items())
        ]
        if query.total_only
        else []
    )
    answered: dict[str, tuple[dict[str, int], dict[str, Any]]] = {}

    def second(
        entry: NodeEntry, connection: NodeConnection
    ) -> tuple[dict[str, int], dict[str, Any]]:
        one = rounds[entry.name]
        return _round_two(
            one, query, secret, public_blob, peers, total_nonce, deadline, report, heads
        )

    answering = [entry for entry in entries if entry.name in rounds]
    # Round 2 is not retried: the node settled round 1's query id when it first answered.
    for answer in fan_out(
        answering,
        lambda entry: rounds[entry.name].connection,
        deadline,
        second,
        report,
        retry=False,
        report_status=False,
    ):
        name = answer.entry.name
        seconds[name] = round(seconds[name] + answer.seconds, 3)
        if answer.failure is not None:
            failures[name] = answer.failure
        elif answer.value is not None:
            answered[name] = answer.value
    results = []
    for entry in entries:
        if entry.name in failures:
            result = AggregateResult(failures[entry.name])
        else:
            one = rounds[entry.name]
            values, signature = answered[entry.name]
            node = NodeResult(
                entry.name,
                NodeStatus.OK,
                disclosure=Level.AGGREGATE.label,
                policy_version=one.summary.policy_version,
                policy_sha256=one.summary.policy_sha256.hex(),
                epoch_id=one.summary.epoch_id,
                signature=signature,
                audit_head=heads.latest(entry.name),
            )
            result = AggregateResult(
                node,
                one.summary.min_cohort,
                None if query.total_only else node_figures(one.summary, values),
            )
            node.seconds = seconds[entry.name]
        report(entry.name, result.result.status)
        results.append(result)
    total = None
    if query.total_only:
        total = _total(rounds, answered, failures)
    return AggregateOutcome(results, total)


def _set_digest(peers: Sequence[aggregate_pb2.PeerCertificate], total_nonce: bytes) -> str:
    """The answering set's digest the nodes key their masks by (empty unless total-only)."""
    if not peers:
        return ""
    members = [MaskMember(p.jurisdiction, p.query_id, p.total_salt, p.agreement_key) for p in peers]
    return answering_set_digest(total_nonce, members).hex()


def _total(
    rounds: dict[str, _RoundOne],
    answered: dict[str, tuple[dict[str, int], Any]],
    failures: dict[str, NodeResult],
) -> FederationTotal:
    names = sorted(rounds)
    lost = [name for name in names if name not in answered]
    if not names:
        return FederationTotal(NodeStatus.ERROR, reason="no node answered; there is no total")
    if lost:
        return FederationTotal(
            NodeStatus.ERROR,
            names,
            f"{', '.join(lost)} dropped out after the answering set was fixed, so the pairwise "
            "masks do not cancel; run the query again (the others' answers stay masked)",
        )
    figures = sum_figures([(rounds[n].summary, answered[n][0]) for n in names])
    return FederationTotal(
        NodeStatus.OK,
        names,
        min_cohort=max(rounds[n].summary.min_cohort for n in names),
        figures=figures,
    )

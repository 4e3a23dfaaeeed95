"""The aggregate query: how much the watchlisted wallets moved at each node, never which ones.

Per node, on its own thread against the shared deadline: node info and
certificate, the epoch's position tags (cached per epoch like filters), round 1
(blinded watchlist in, shuffled evaluation out) and the matched rows of the
node's table. Then round 2: one HE key pair for the whole query, an encrypted
indicator per node, masked ciphertexts back, decrypted to noisy sums. With
``total_only`` the answering set is fixed after round 1 and sent to every
node, whose pairwise masks cancel only in the federation total; if a node drops
out after that, the total is abandoned (docs/aggregates.md).
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import grpc

from coordinator.federation import Federation, NodeEntry
from coordinator.match import (
    NodeFailure,
    NodeResult,
    Progress,
    _check_node_certificate,
    _remaining,
    rpc_failure,
)
from coordinator.transport import GrpcTransport, GrpcTransports
from fedtrace import group, psi
from fedtrace.aggregate import COUNT_COLUMN, TAG_BYTES, indicator, match_positions
from fedtrace.aggregate_transcript import (
    AggregateTranscript,
    FigureTerms,
    answers_sha256,
    sequence_sha256,
)
from fedtrace.he import PLAIN_MODULUS, HeError, SecretHeContext, signed
from fedtrace.items import item_bytes
from fedtrace.pki import verify_signature
from fedtrace.transcript import SIGNATURE_ALGORITHM
from fedtrace.v1 import aggregate_pb2, aggregate_pb2_grpc, node_pb2

POINTS_PER_BATCH = 65_536
TAG_KIND = "blake2b64-aggtag1"


class AggregateTransport(Protocol):
    def info(self, timeout: float) -> node_pb2.NodeInfo: ...

    def tags(
        self, request: aggregate_pb2.GetPositionTagsRequest, timeout: float
    ) -> Iterator[aggregate_pb2.PositionTagsChunk]: ...

    def evaluate(
        self, requests: Iterator[aggregate_pb2.AggregateEvaluateRequest], timeout: float
    ) -> Iterator[aggregate_pb2.AggregateEvaluateResponse]: ...

    def aggregate(
        self, requests: Iterator[aggregate_pb2.AggregateRequest], timeout: float
    ) -> Iterator[aggregate_pb2.AggregateResponse]: ...

    def close(self) -> None: ...


class GrpcAggregateTransport(GrpcTransport):
    """The node's mTLS channel (as for matches) with the AggregateService stub."""

    def __init__(self, entry: NodeEntry, root: bytes, key: bytes, cert: bytes) -> None:
        super().__init__(entry, root, key, cert)
        self._aggregate = aggregate_pb2_grpc.AggregateServiceStub(self._channel)

    def tags(
        self, request: aggregate_pb2.GetPositionTagsRequest, timeout: float
    ) -> Iterator[aggregate_pb2.PositionTagsChunk]:
        return iter(self._aggregate.GetPositionTags(request, timeout=timeout))

    def evaluate(self, requests: Iterator[Any], timeout: float) -> Iterator[Any]:
        return iter(self._aggregate.Evaluate(requests, timeout=timeout))

    def aggregate(
        self, requests: Iterator[aggregate_pb2.AggregateRequest], timeout: float
    ) -> Iterator[aggregate_pb2.AggregateResponse]:
        return iter(self._aggregate.Aggregate(requests, timeout=timeout))


class GrpcAggregateTransports(GrpcTransports):
    def __call__(self, entry: NodeEntry) -> AggregateTransport:  # type: ignore[override]
        return GrpcAggregateTransport(entry, self._root, self._key, self._cert)


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


@dataclass(frozen=True)
class Figure:
    """One decrypted figure: its noisy value in the smallest unit and how it was noised."""

    value: int
    decimals: int
    scale: float
    half_width_95: int

    def amount(self) -> int | float:
        """The value in the column's unit: an integer, or euros with their cents."""
        if self.decimals == 0:
            return self.value
        return float(Decimal(self.value).scaleb(-self.decimals))

    def interval_95(self) -> list[int | float]:
        low, high = self.value - self.half_width_95, self.value + self.half_width_95
        if self.decimals == 0:
            return [low, high]
        return [
            float(Decimal(low).scaleb(-self.decimals)),
            float(Decimal(high).scaleb(-self.decimals)),
        ]


@dataclass
class AggregateResult:
    """A node's result: the match result fields plus its figures (none for total-only)."""

    result: NodeResult
    min_cohort: int = 0
    figures: dict[str, Figure] | None = None

    @property
    def withheld(self) -> bool:
        count = (self.figures or {}).get(COUNT_COLUMN)
        return count is not None and count.value < self.min_cohort


@dataclass
class FederationTotal:
    status: str  # ok | error
    nodes: list[str] = field(default_factory=list)
    reason: str = ""
    min_cohort: int = 0
    figures: dict[str, Figure] | None = None

    @property
    def withheld(self) -> bool:
        count = (self.figures or {}).get(COUNT_COLUMN)
        return count is not None and count.value < self.min_cohort


@dataclass
class AggregateOutcome:
    results: list[AggregateResult]
    total: FederationTotal | None = None


@dataclass
class TagCache:
    """Position tags by (node, dataset, epoch): in memory, and on disk between runs."""

    directory: Path | None
    _memory: dict[tuple[str, str, str], bytes] = field(default_factory=dict)

    @staticmethod
    def default() -> TagCache:
        base = os.environ.get("FEDTRACE_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fedtrace"
        )
        return TagCache(Path(base) / "tags")

    def _path(self, key: tuple[str, str, str]) -> Path | None:
        return self.directory / ("-".join(key) + ".tags") if self.directory else None

    def get(self, key: tuple[str, str, str], sha256: bytes | None = None) -> bytes | None:
        tags = self._memory.get(key)
        path = self._path(key)
        if tags is None and path is not None and path.exists():
            tags = path.read_bytes()
        if tags is None or len(tags) % TAG_BYTES:
            return None
        self._memory[key] = tags
        return tags

    def put(self, key: tuple[str, str, str], tags: bytes) -> None:
        self._memory[key] = tags
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(tags)
        tmp.replace(path)


@dataclass
class _RoundOne:
    """What the coordinator holds for a node between the two rounds."""

    entry: NodeEntry
    transport: AggregateTransport
    node_cert: bytes
    context: node_pb2.QueryContext
    summary: aggregate_pb2.AggregateSummary
    tags_sha256: str
    positions: list[int]
    request_sha256: str
    response_sha256: str
    started: float


def _tags(
    entry: NodeEntry,
    transport: AggregateTransport,
    dataset: str,
    epoch_id: str,
    cache: TagCache,
    deadline: float,
    report: Progress,
) -> bytes:
    key = (entry.name, dataset, epoch_id)
    cached = cache.get(key)
    if cached is not None:
        return cached
    report(entry.name, "fetching the epoch's position tags")
    chunks = transport.tags(
        aggregate_pb2.GetPositionTagsRequest(dataset=dataset, epoch_id=epoch_id),
        _remaining(deadline),
    )
    first = next(chunks, None)
    if first is None or first.WhichOneof("part") != "header":
        raise NodeFailure("error", f"{entry.name} sent position tags without their header")
    header = first.header
    if header.tag_kind != TAG_KIND or header.epoch_id != epoch_id:
        raise NodeFailure(
            "error",
            f"{entry.name} sent tags of kind {header.tag_kind!r} for "
            f"epoch {header.epoch_id!r}; expected {TAG_KIND}, {epoch_id}",
        )
    parts: list[bytes] = []
    received = 0
    for chunk in chunks:
        received += len(chunk.data)
        if received > header.total_bytes:
            raise NodeFailure("error", f"{entry.name} sent more tag bytes than announced")
        parts.append(chunk.data)
    tags = b"".join(parts)
    if (
        len(tags) != header.total_bytes
        or len(tags) != header.row_count * TAG_BYTES
        or hashlib.sha256(tags).digest() != header.sha256
    ):
        raise NodeFailure("error", f"{entry.name}'s position tags arrived damaged")
    cache.put(key, tags)
    return tags


def _evaluate_requests(
    header: aggregate_pb2.AggregateHeader, blob: bytes
) -> Iterator[aggregate_pb2.AggregateEvaluateRequest]:
    yield aggregate_pb2.AggregateEvaluateRequest(header=header)
    step = POINTS_PER_BATCH * group.POINT_BYTES
    for start in range(0, len(blob), step):
        yield aggregate_pb2.AggregateEvaluateRequest(
            points=node_pb2.PointBatch(points=blob[start : start + step])
        )


def _round_one(
    entry: NodeEntry,
    transport: AggregateTransport,
    query: AggregateQuery,
    blinded: psi.BlindedQuery,
    ca_pem: bytes,
    cache: TagCache,
    deadline: float,
    report: Progress,
    started: float,
) -> _RoundOne:
    for attempt in range(2):
        report(entry.name, "asking for node info")
        info = transport.info(_remaining(deadline))
        node_cert = _check_node_certificate(entry, info, ca_pem)
        dataset = next((d for d in info.datasets if d.name == query.dataset), None)
        if dataset is None:
            names = ", ".join(d.name for d in info.datasets) or "none"
            raise NodeFailure(
                "error",
                f"{entry.name} has no dataset {query.dataset!r} "
                f"(it has: {names}); pick one with --dataset",
            )
        missing = [c for c in query.columns if c not in dataset.aggregate_columns]
        if missing:
            raise NodeFailure(
                "error",
                f"dataset {query.dataset!r} at {entry.name} cannot sum "
                f"{', '.join(missing)}; its aggregate columns: "
                f"{', '.join(dataset.aggregate_columns) or 'none'}",
            )
        try:
            tags = _tags(entry, transport, query.dataset, dataset.epoch_id, cache, deadline, report)
            context = node_pb2.QueryContext(
                case_ref=query.case_ref,
                legal_basis=query.legal_basis,
                nonce=secrets.token_bytes(16),
                timestamp_unix_ms=int(time.time() * 1000),
            )
            header = aggregate_pb2.AggregateHeader(
                context=context,
                dataset=query.dataset,
                epoch_id=dataset.epoch_id,
                item_count=len(blinded.blinded),
                columns=list(query.columns),
                total_only=query.total_only,
                epsilon=query.epsilon,
            )
            sent = b"".join(blinded.blinded)
            report(entry.name, f"evaluating {len(blinded.blinded):,} blinded items")
            summary: aggregate_pb2.AggregateSummary | None = None
            points: list[bytes] = []
            digest = hashlib.sha256()
            for message in transport.evaluate(
                _evaluate_requests(header, sent), _remaining(deadline)
            ):
                part = message.WhichOneof("part")
                if part == "summary" and summary is None:
                    summary = message.summary
                elif part == "points" and summary is not None:
                    digest.update(message.points.points)
                    points.extend(group.split_points(message.points.points))
                else:
                    raise NodeFailure("error", f"{entry.name} answered out of protocol order")
        except grpc.RpcError as exc:
            if (
                exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                and attempt == 0
                and "epoch" in (exc.details() or "")
            ):
                continue  # a new epoch started meanwhile: refetch its tags once
            raise
        except group.InvalidPoint as exc:
            raise NodeFailure("error", f"{entry.name} answered malformed points: {exc}") from None
        if summary is None or len(points) != len(blinded.blinded):
            raise NodeFailure(
                "error",
                f"{entry.name} answered {len(points)} of "
                f"{len(blinded.blinded)} items or an incomplete stream",
            )
        expected = [COUNT_COLUMN, *query.columns]
        if (
            [n.figure for n in summary.noise] != expected
            or summary.row_count * TAG_BYTES != len(tags)
            or summary.epoch_id != dataset.epoch_id
        ):
            raise NodeFailure("error", f"{entry.name}'s round-1 summary does not fit the query")
        try:
            unblinded = blinded.unblind(points)
        except (group.InvalidPoint, ValueError) as exc:
            raise NodeFailure("error", f"{entry.name} answered an invalid point: {exc}") from None
        return _RoundOne(
            entry=entry,
            transport=transport,
            node_cert=node_cert,
            context=context,
            summary=summary,
            tags_sha256=hashlib.sha256(tags).hexdigest(),
            positions=match_positions(tags, unblinded),
            request_sha256=hashlib.sha256(sent).hexdigest(),
            response_sha256=digest.hexdigest(),
            started=started,
        )
    raise NodeFailure("error", "the node's epoch changed twice during the query")


def _aggregate_requests(
    header: aggregate_pb2.IndicatorHeader, public_blob: bytes, indicators: Sequence[bytes]
) -> Iterator[aggregate_pb2.AggregateRequest]:
    yield aggregate_pb2.AggregateRequest(header=header)
    yield aggregate_pb2.AggregateRequest(public_context=public_blob)
    for blob in indicators:
        yield aggregate_pb2.AggregateRequest(indicator=blob)


def _round_two(
    one: _RoundOne,
    query: AggregateQuery,
    secret: SecretHeContext,
    public_blob: bytes,
    peers: Sequence[aggregate_pb2.PeerCertificate],
    total_nonce: bytes,
    deadline: float,
    report: Progress,
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
    )
    report(entry.name, "waiting for the encrypted sums")
    answers: list[tuple[str, bytes]] = []
    trailer: aggregate_pb2.AggregateTrailer | None = None
    for message in one.transport.aggregate(
        _aggregate_requests(header, public_blob, indicators), _remaining(deadline)
    ):
        part = message.WhichOneof("part")
        if part == "answer" and trailer is None:
            answers.append((message.answer.figure, bytes(message.answer.ciphertext)))
        elif part == "trailer" and trailer is None:
            trailer = message.trailer
        else:
            raise NodeFailure("error", f"{entry.name} answered out of protocol order")
    figures = [n.figure for n in summary.noise]
    if trailer is None or [name for name, _ in answers] != figures:
        raise NodeFailure("error", f"{entry.name} sent an incomplete aggregate answer")
    transcript = AggregateTranscript(
        jurisdiction=entry.name,
        investigator=query.investigator,
        dataset=query.dataset,
        epoch_id=summary.epoch_id,
        tags_sha256=one.tags_sha256,
        disclosure="aggregate",
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
        figures=tuple(
            FigureTerms(n.figure, n.decimals, n.scale, n.half_width_95) for n in summary.noise
        ),
        request_sha256=one.request_sha256,
        response_sha256=one.response_sha256,
        public_context_sha256=public_sha.hex(),
        indicator_sha256=sequence_sha256(indicators),
        answers_sha256=answers_sha256(answers),
        peers=tuple(sorted(p.jurisdiction for p in peers)),
        total_nonce=total_nonce.hex(),
    )
    digest = transcript.digest()
    if trailer.transcript_sha256 != digest or not verify_signature(
        one.node_cert, digest, trailer.signature
    ):
        raise NodeFailure(
            "error",
            f"{entry.name}'s signature does not match the exchange; the answer was discarded",
        )
    try:
        values = {name: secret.decrypt_sum(blob) for name, blob in answers}
    except HeError as exc:
        raise NodeFailure("error", f"{entry.name}'s encrypted answer is unusable: {exc}") from None
    signature = {
        "algorithm": SIGNATURE_ALGORITHM,
        "transcript": transcript.as_json(),
        "transcript_sha256": digest.hex(),
        "value": trailer.signature.hex(),
        "certificate_pem": one.node_cert.decode(),
    }
    return values, signature


def _figures(summary: aggregate_pb2.AggregateSummary, values: dict[str, int]) -> dict[str, Figure]:
    return {
        n.figure: Figure(values[n.figure], n.decimals, n.scale, n.half_width_95)
        for n in summary.noise
    }


def _variance(scale: float) -> float:
    """Variance of the discrete Laplace distribution of this scale (0 for no noise)."""
    if scale <= 0:
        return 0.0
    rho = math.exp(-1.0 / scale)
    return 2 * rho / (1 - rho) ** 2


def sum_figures(
    per_node: Sequence[tuple[aggregate_pb2.AggregateSummary, dict[str, int]]],
) -> dict[str, Figure]:
    """The federation total of masked per-node figures: the masks cancel mod t.

    The noise of the total is the sum of every node's independent noise; its 95%
    half-width is the normal approximation 1.96·sqrt(Σ variances), exact when
    one node is noisy (its own half-width) and 0 when none is.
    """
    first = per_node[0][0]
    out: dict[str, Figure] = {}
    for n in first.noise:
        total = signed(sum(values[n.figure] for _, values in per_node) % PLAIN_MODULUS)
        scales = [next(x.scale for x in s.noise if x.figure == n.figure) for s, _ in per_node]
        widths = [
            next(x.half_width_95 for x in s.noise if x.figure == n.figure) for s, _ in per_node
        ]
        noisy = [w for s, w in zip(scales, widths, strict=True) if s > 0]
        if len(noisy) <= 1:
            width = noisy[0] if noisy else 0
        else:
            width = math.ceil(1.96 * math.sqrt(sum(_variance(s) for s in scales)))
        scale = math.sqrt(sum(_variance(s) for s in scales) / 2)  # the equivalent single scale
        out[n.figure] = Figure(total, n.decimals, round(scale, 6), width)
    return out


def run_aggregate(
    federation: Federation,
    query: AggregateQuery,
    transports: Callable[[NodeEntry], AggregateTransport],
    ca_pem: bytes,
    *,
    nodes: Sequence[NodeEntry] | None = None,
    cache: TagCache | None = None,
    progress: Progress | None = None,
) -> AggregateOutcome:
    """Run one aggregate query against the selected nodes; results in roster order."""
    entries = list(nodes or federation.nodes)
    cache = cache or TagCache(None)
    report = progress or (lambda node, what: None)
    deadline = time.monotonic() + federation.deadline_seconds
    report("*", f"blinding {len(query.items):,} watchlist items")
    blinded = psi.BlindedQuery([item_bytes("wallet", item) for item in query.items])
    failures: dict[str, NodeResult] = {}
    rounds: dict[str, _RoundOne] = {}
    opened: list[AggregateTransport] = []

    def first(entry: NodeEntry) -> None:
        started = time.monotonic()
        transport = transports(entry)
        opened.append(transport)
        try:
            rounds[entry.name] = _round_one(
                entry, transport, query, blinded, ca_pem, cache, deadline, report, started
            )
        except NodeFailure as exc:
            failures[entry.name] = NodeResult(entry.name, exc.status, str(exc))
        except grpc.RpcError as exc:
            failures[entry.name] = rpc_failure(entry, exc)

    try:
        with ThreadPoolExecutor(max_workers=max(1, len(entries))) as pool:
            list(pool.map(first, entries))
        secret = SecretHeContext.generate()
        public_blob = secret.public_bytes()
        total_nonce = secrets.token_bytes(16) if query.total_only else b""
        peers = (
            [
                aggregate_pb2.PeerCertificate(jurisdiction=name, certificate_pem=one.node_cert)
                for name, one in sorted(rounds.items())
            ]
            if query.total_only
            else []
        )
        answered: dict[str, tuple[dict[str, int], dict[str, Any]]] = {}

        def second(one: _RoundOne) -> None:
            name = one.entry.name
            try:
                answered[name] = _round_two(
                    one, query, secret, public_blob, peers, total_nonce, deadline, report
                )
            except NodeFailure as exc:
                failures[name] = NodeResult(name, exc.status, str(exc))
            except grpc.RpcError as exc:
                failures[name] = rpc_failure(one.entry, exc)

        if query.total_only and len(rounds) < 2:
            for name in rounds:
                failures[name] = NodeResult(
                    name,
                    "error",
                    "a federation total needs at least two answering nodes; "
                    f"only {len(rounds)} answered round 1, so no total was asked for",
                )
            rounds.clear()
        with ThreadPoolExecutor(max_workers=max(1, len(rounds))) as pool:
            list(pool.map(second, rounds.values()))
    finally:
        for transport in opened:
            transport.close()
    results = []
    for entry in entries:
        if entry.name in failures:
            result = AggregateResult(failures[entry.name])
        else:
            one = rounds[entry.name]
            values, signature = answered[entry.name]
            node = NodeResult(
                entry.name,
                "ok",
                disclosure="aggregate",
                policy_version=one.summary.policy_version,
                epoch_id=one.summary.epoch_id,
                signature=signature,
            )
            result = AggregateResult(
                node,
                one.summary.min_cohort,
                None if query.total_only else _figures(one.summary, values),
            )
            node.seconds = round(time.monotonic() - one.started, 3)
        report(entry.name, result.result.status)
        results.append(result)
    total = None
    if query.total_only:
        total = _total(rounds, answered, failures)
    return AggregateOutcome(results, total)


def _total(
    rounds: dict[str, _RoundOne],
    answered: dict[str, tuple[dict[str, int], Any]],
    failures: dict[str, NodeResult],
) -> FederationTotal:
    names = sorted(rounds)
    lost = [name for name in names if name not in answered]
    if not names:
        return FederationTotal("error", reason="no node answered; there is no total")
    if lost:
        return FederationTotal(
            "error",
            names,
            f"{', '.join(lost)} dropped out after the answering set was fixed, so the pairwise "
            "masks do not cancel; run the query again (the others' answers stay masked)",
        )
    figures = sum_figures([(rounds[n].summary, answered[n][0]) for n in names])
    return FederationTotal(
        "ok", names, min_cohort=max(rounds[n].summary.min_cohort for n in names), figures=figures
    )

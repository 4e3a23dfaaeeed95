"""The match query: blind the watchlist once, ask every node concurrently, unblind, test filters.

Each node is handled on its own thread against a shared deadline; one node
failing or refusing becomes that node's result and never fails the others.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc

from coordinator.federation import Federation, NodeEntry
from coordinator.retry import with_retries
from coordinator.transport import NodeTransport
from fedtrace import gcs, group, psi
from fedtrace.errors import FedtraceError
from fedtrace.items import item_bytes
from fedtrace.pki import ROLE_NODE, InvalidCertificate, verify_issued_by, verify_signature
from fedtrace.revocation import RevocationList
from fedtrace.transcript import SIGNATURE_ALGORITHM, Transcript
from fedtrace.v1 import node_pb2

POINTS_PER_BATCH = 65_536
LEVEL_LABELS = {
    1: "cardinality",
    2: "aggregate",
    3: "membership",
    4: "disclosure-request",
    5: "overlap",
}
Progress = Callable[[str, str], None]  # (node, what is happening)


@dataclass
class NodeResult:
    node: str
    status: str  # ok | denied | unavailable | error
    reason: str = ""
    disclosure: str = ""
    match_count: int | None = None
    matched: list[str] | None = None
    policy_version: str = ""
    epoch_id: str = ""
    signature: dict[str, Any] | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class MatchQuery:
    dataset: str
    case_ref: str
    legal_basis: str
    kind: str  # dataset kind the watchlist was canonicalised for: "wallet" | "person"
    items: tuple[str, ...]  # canonical identifiers, deduplicated
    investigator: str  # our jurisdiction, as our certificate names it
    disclosure: int = 3  # asked level: membership


class NodeFailure(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class FilterCache:
    """Node filters by (node, dataset, epoch, digest): in memory, and on disk between runs."""

    directory: Path | None
    _memory: dict[tuple[str, str, str], gcs.GolombFilter] = field(default_factory=dict)

    @staticmethod
    def default() -> FilterCache:
        base = os.environ.get("FEDTRACE_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fedtrace"
        )
        return FilterCache(Path(base) / "filters")

    def _path(self, key: tuple[str, str, str]) -> Path | None:
        return self.directory / ("-".join(key) + ".gcs") if self.directory else None

    def get(
        self, key: tuple[str, str, str], header: node_pb2.FilterHeader | None = None
    ) -> gcs.GolombFilter | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is None or not path.exists():
            return None
        blob = path.read_bytes()
        count, bits = int.from_bytes(blob[:8], "big"), int.from_bytes(blob[8:12], "big")
        try:
            filter_ = gcs.GolombFilter.from_bytes(count, bits, blob[12:])
        except ValueError:
            return None  # a damaged cache entry is refetched, not trusted
        self._memory[key] = filter_
        return filter_

    def put(self, key: tuple[str, str, str], filter_: gcs.GolombFilter) -> None:
        self._memory[key] = filter_
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(
            filter_.item_count.to_bytes(8, "big")
            + filter_.remainder_bits.to_bytes(4, "big")
            + filter_.data
        )
        tmp.replace(path)


def run_match(
    federation: Federation,
    query: MatchQuery,
    transports: Callable[[NodeEntry], NodeTransport],
    ca_pem: bytes,
    *,
    nodes: Sequence[NodeEntry] | None = None,
    cache: FilterCache | None = None,
    progress: Progress | None = None,
    revoked: RevocationList | None = None,
) -> list[NodeResult]:
    """Run one match query against the selected nodes; results in roster order."""
    entries = list(nodes or federation.nodes)
    cache = cache or FilterCache(None)
    report = progress or (lambda node, what: None)
    deadline = time.monotonic() + federation.deadline_seconds
    report("*", f"blinding {len(query.items):,} watchlist items")
    blinded = psi.BlindedQuery([item_bytes(query.kind, item) for item in query.items])

    def one(entry: NodeEntry) -> NodeResult:
        started = time.monotonic()
        transport = transports(entry)
        try:
            result = with_retries(  # transient UNAVAILABLE / busy: back off, retry in deadline
                lambda: _query_node(
                    entry, transport, query, blinded, ca_pem, cache, deadline, report, revoked
                ),
                deadline,
            )
        except NodeFailure as exc:
            result = NodeResult(entry.name, exc.status, str(exc))
        except grpc.RpcError as exc:
            result = rpc_failure(entry, exc)
        finally:
            transport.close()
        result.seconds = round(time.monotonic() - started, 3)
        report(entry.name, result.status)
        return result

    with ThreadPoolExecutor(max_workers=max(1, len(entries))) as pool:
        return list(pool.map(one, entries))


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise NodeFailure("unavailable", "no answer within the query deadline")
    return left


def _query_node(
    entry: NodeEntry,
    transport: NodeTransport,
    query: MatchQuery,
    blinded: psi.BlindedQuery,
    ca_pem: bytes,
    cache: FilterCache,
    deadline: float,
    report: Progress,
    revoked: RevocationList | None = None,
) -> NodeResult:
    for attempt in range(2):
        report(entry.name, "asking for node info")
        info = transport.info(_remaining(deadline))
        node_cert = _check_node_certificate(entry, info, ca_pem, revoked)
        dataset = next((d for d in info.datasets if d.name == query.dataset), None)
        if dataset is None:
            names = ", ".join(d.name for d in info.datasets) or "none"
            raise NodeFailure(
                "error",
                f"{entry.name} has no dataset {query.dataset!r} "
                f"(it has: {names}); pick one with --dataset",
            )
        if dataset.identifier_kind != query.kind:
            raise NodeFailure(
                "error",
                f"dataset {query.dataset!r} at {entry.name} holds "
                f"{dataset.identifier_kind} identifiers, not {query.kind}",
            )
        filter_, filter_sha = _filter(
            entry, transport, query.dataset, dataset.epoch_id, cache, deadline, report
        )
        report(entry.name, f"evaluating {len(query.items):,} blinded items")
        try:
            return _evaluate(
                entry,
                transport,
                query,
                blinded,
                filter_,
                filter_sha,
                dataset.epoch_id,
                node_cert,
                deadline,
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and attempt == 0:
                continue  # the node started a new epoch meanwhile: refetch its filter once
            raise
    raise NodeFailure("error", "the node's epoch changed twice during the query")


def _check_node_certificate(
    entry: NodeEntry,
    info: node_pb2.NodeInfo,
    ca_pem: bytes,
    revoked: RevocationList | None = None,
) -> bytes:
    try:
        identity = verify_issued_by(info.certificate_pem, ca_pem)
    except InvalidCertificate as exc:
        raise NodeFailure(
            "error", f"{entry.name} presents an invalid signing certificate: {exc}"
        ) from None
    if identity.jurisdiction != entry.name or identity.role != ROLE_NODE:
        raise NodeFailure(
            "error", f"{entry.address} signs as {identity.describe()}, not as node {entry.name}"
        )
    if revoked is not None and revoked.find(identity) is not None:
        raise NodeFailure(
            "error",
            f"UNAUTHENTICATED: {entry.name}'s certificate ({identity.describe()}) is revoked in "
            "the federation's revocation list; its answer is not trusted",
        )
    return bytes(info.certificate_pem)


def _filter(
    entry: NodeEntry,
    transport: NodeTransport,
    dataset: str,
    epoch_id: str,
    cache: FilterCache,
    deadline: float,
    report: Progress,
) -> tuple[gcs.GolombFilter, str]:
    key = (entry.name, dataset, epoch_id)
    cached = cache.get(key)
    if cached is not None:
        return cached, hashlib.sha256(cached.data).hexdigest()
    report(entry.name, "fetching the epoch filter")
    chunks = transport.filter(
        node_pb2.GetFilterRequest(dataset=dataset, epoch_id=epoch_id), _remaining(deadline)
    )
    first = next(chunks, None)
    if first is None or first.WhichOneof("part") != "header":
        raise NodeFailure("error", f"{entry.name} sent a filter without its header")
    header = first.header
    if header.filter_kind != "gcs-v1" or header.epoch_id != epoch_id:
        raise NodeFailure(
            "error",
            f"{entry.name} sent a filter of kind {header.filter_kind!r} "
            f"for epoch {header.epoch_id!r}; expected gcs-v1, {epoch_id}",
        )
    parts: list[bytes] = []
    received = 0
    for chunk in chunks:
        received += len(chunk.data)
        if received > header.total_bytes:
            raise NodeFailure("error", f"{entry.name} sent more filter bytes than announced")
        parts.append(chunk.data)
    data = b"".join(parts)
    if len(data) != header.total_bytes or hashlib.sha256(data).digest() != header.sha256:
        raise NodeFailure("error", f"{entry.name}'s filter arrived damaged (size or digest)")
    try:
        filter_ = gcs.GolombFilter.from_bytes(header.item_count, header.remainder_bits, data)
    except ValueError as exc:
        raise NodeFailure("error", f"{entry.name}'s filter is malformed: {exc}") from None
    cache.put(key, filter_)
    return filter_, header.sha256.hex()


def _requests(header: node_pb2.EvaluateHeader, blob: bytes) -> Iterator[node_pb2.EvaluateRequest]:
    yield node_pb2.EvaluateRequest(header=header)
    step = POINTS_PER_BATCH * group.POINT_BYTES
    for start in range(0, len(blob), step):
        yield node_pb2.EvaluateRequest(
            points=node_pb2.PointBatch(points=blob[start : start + step])
        )


def _evaluate(
    entry: NodeEntry,
    transport: NodeTransport,
    query: MatchQuery,
    blinded: psi.BlindedQuery,
    filter_: gcs.GolombFilter,
    filter_sha: str,
    epoch_id: str,
    node_cert: bytes,
    deadline: float,
) -> NodeResult:
    context = node_pb2.QueryContext(
        case_ref=query.case_ref,
        legal_basis=query.legal_basis,
        nonce=secrets.token_bytes(16),
        timestamp_unix_ms=int(time.time() * 1000),
    )
    header = node_pb2.EvaluateHeader(
        context=context,
        dataset=query.dataset,
        epoch_id=epoch_id,
        disclosure=cast("node_pb2.Disclosure", query.disclosure),
        item_count=len(blinded.blinded),
    )
    sent = b"".join(blinded.blinded)
    responses = transport.evaluate(_requests(header, sent), _remaining(deadline))
    summary: node_pb2.EvaluateSummary | None = None
    trailer: node_pb2.EvaluateTrailer | None = None
    points: list[bytes] = []
    digest = hashlib.sha256()
    for message in responses:
        part = message.WhichOneof("part")
        if part == "summary" and summary is None:
            summary = message.summary
        elif part == "points" and summary is not None and trailer is None:
            digest.update(message.points.points)
            try:
                points.extend(group.split_points(message.points.points))
            except group.InvalidPoint as exc:
                raise NodeFailure(
                    "error", f"{entry.name} answered malformed points: {exc}"
                ) from None
        elif part == "trailer" and summary is not None and trailer is None:
            trailer = message.trailer
        else:
            raise NodeFailure("error", f"{entry.name} answered out of protocol order")
    if summary is None or trailer is None or len(points) != len(blinded.blinded):
        raise NodeFailure(
            "error",
            f"{entry.name} answered {len(points)} of "
            f"{len(blinded.blinded)} items or an incomplete stream",
        )
    level = LEVEL_LABELS.get(summary.disclosure, "")
    transcript = Transcript(
        jurisdiction=entry.name,
        investigator=query.investigator,
        dataset=query.dataset,
        epoch_id=epoch_id,
        filter_sha256=filter_sha,
        disclosure=level,
        shuffled=summary.shuffled,
        policy_version=summary.policy_version,
        case_ref=query.case_ref,
        legal_basis=query.legal_basis,
        nonce=context.nonce.hex(),
        timestamp_unix_ms=context.timestamp_unix_ms,
        item_count=len(points),
        request_sha256=hashlib.sha256(sent).hexdigest(),
        response_sha256=digest.hexdigest(),
    )
    return _result(
        entry, query, blinded, points, filter_, summary, level, transcript, trailer, node_cert
    )


def _result(
    entry: NodeEntry,
    query: MatchQuery,
    blinded: psi.BlindedQuery,
    points: list[bytes],
    filter_: gcs.GolombFilter,
    summary: node_pb2.EvaluateSummary,
    level: str,
    transcript: Transcript,
    trailer: node_pb2.EvaluateTrailer,
    node_cert: bytes,
) -> NodeResult:
    digest = transcript.digest()
    if trailer.transcript_sha256 != digest or not verify_signature(
        node_cert, digest, trailer.signature
    ):
        raise NodeFailure(
            "error",
            f"{entry.name}'s signature does not match the exchange; the answer was discarded",
        )
    try:
        unblinded = blinded.unblind(points)
    except group.InvalidPoint as exc:
        raise NodeFailure("error", f"{entry.name} answered an invalid point: {exc}") from None
    hits = psi.membership(unblinded, filter_)
    result = NodeResult(
        node=entry.name,
        status="ok",
        disclosure=level,
        match_count=sum(hits),
        policy_version=summary.policy_version,
        epoch_id=summary.epoch_id,
        signature={
            "algorithm": SIGNATURE_ALGORITHM,
            "transcript": transcript.__dict__,
            "transcript_sha256": digest.hex(),
            "value": trailer.signature.hex(),
            "certificate_pem": node_cert.decode(),
        },
    )
    if not summary.shuffled and level in ("membership", "disclosure-request"):
        result.matched = [item for item, hit in zip(query.items, hits, strict=True) if hit]
    return result


def rpc_failure(entry: NodeEntry, exc: grpc.RpcError) -> NodeResult:
    """One node's failed call as a result the investigator can act on (every query kind)."""
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return NodeResult(entry.name, "denied", details)
    if code == grpc.StatusCode.UNAVAILABLE and "Socket closed" in details:
        return NodeResult(
            entry.name,
            "error",
            f"UNAUTHENTICATED: {entry.name} at {entry.address} closed the TLS connection; it did "
            "not accept our certificate (is it issued by the federation CA and still valid?)",
        )
    if code == grpc.StatusCode.UNAVAILABLE and "Hostname Verification" in details:
        return NodeResult(
            entry.name,
            "error",
            f"UNAUTHENTICATED: the server at {entry.address} is not node "
            f"{entry.name} (its certificate names another jurisdiction)",
        )
    if code == grpc.StatusCode.UNAVAILABLE and "CERTIFICATE_VERIFY_FAILED" in details:
        return NodeResult(
            entry.name,
            "error",
            f"UNAUTHENTICATED: the server at {entry.address} presents a certificate "
            "not issued by the federation CA",
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return NodeResult(
            entry.name,
            "unavailable",
            f"{entry.name} at {entry.address} did not answer ({code.name})",
        )
    return NodeResult(entry.name, "error", f"{code.name}: {details}")


def ensure_investigator_certificate(cert_pem: bytes, ca_pem: bytes, where: Path) -> str:
    """The investigator's own jurisdiction, after checking its certificate before any call."""
    try:
        identity = verify_issued_by(cert_pem, ca_pem)
    except InvalidCertificate as exc:
        raise FedtraceError(f"{where}: {exc}") from None
    return identity.jurisdiction

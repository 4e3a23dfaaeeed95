"""The match query: blind the watchlist once, ask every node concurrently, unblind, test filters.

Per node (coordinator.fanout: own thread, shared deadline, retries): node info and
certificate, the epoch's filter (coordinator.epoch_cache), the blinded watchlist
in and the node's evaluation out, its signed transcript checked, then membership
tested against the filter, whose false-positive rate (2^-remainder_bits per tested
item) the result carries. One node failing or refusing becomes that node's
result and never fails the others.

With a `coordinator.pools.PoolStore`, the watchlist is hashed once and each node
whose stored pool (prepared for the epoch and blinding point it announces now)
holds enough entries gets additive blinding: `H(x) + r·C` out, `b·P − r·G` back,
a fresh pool per node. Otherwise, and for cardinality (answered shuffled), the
node gets today's multiplicative blinding, shared by all such nodes; a node that
refuses an additive request because its grant answers shuffled is asked again
multiplicatively.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from coordinator import sealing
from coordinator.epoch_cache import FilterCache, checked_epoch_id, fetch_partitions
from coordinator.fanout import Deadline, NodeTrust, checked_info, dataset_info, fan_out
from coordinator.federation import Federation, NodeEntry
from coordinator.hash_cache import HashCache
from coordinator.heads import HeadWitness, head_of
from coordinator.pools import PoolStore
from coordinator.progress import Progress, silent
from coordinator.results import NodeFailure, NodeResult, policy_digest
from coordinator.transport import Connections, NodeConnection
from fedtrace import blinding, gcs, group, psi
from fedtrace.items import item_bytes
from fedtrace.opening import Blinding
from fedtrace.partitions import PartitionedFilter
from fedtrace.pki import verify_signature
from fedtrace.revocation import RevocationList
from fedtrace.transcript import SIGNATURE_ALGORITHM, TRANSCRIPT_VERSION, Transcript
from fedtrace.v1 import node_pb2
from fedtrace.wire import POINTS_PER_BATCH, Level, NodeStatus, batched

__all__ = ["POINTS_PER_BATCH", "MatchQuery", "run_match"]


@dataclass(frozen=True)
class MatchQuery:
    dataset: str
    case_ref: str
    legal_basis: str
    kind: str  # dataset kind the watchlist was canonicalised for: "wallet" | "person"
    items: tuple[str, ...]  # canonical identifiers, deduplicated
    investigator: str  # our jurisdiction, as our certificate names it
    disclosure: Level = Level.MEMBERSHIP  # the level asked for


class Blinded:
    """The points one node is sent and how to unblind its answer (either blinding)."""

    def __init__(
        self,
        points: list[bytes],
        unblind: Callable[[Sequence[bytes]], list[bytes]],
        blinding_point: bytes = b"",
        secret: Blinding | None = None,  # what a sealed opening reveals to a monitor
    ) -> None:
        self.points = points
        self.unblind = unblind
        self.secret = secret
        self.additive = bool(blinding_point)
        self.mode = blinding.ADDITIVE if self.additive else blinding.MULTIPLICATIVE
        self.blinding_point_sha256 = (
            hashlib.sha256(blinding_point).hexdigest() if self.additive else ""
        )


class WatchlistBlinding:
    """The watchlist's blindings for one query: multiplicative (shared, made on first use)
    and additive (hashed once, then one pool per node)."""

    def __init__(
        self,
        query: MatchQuery,
        pools: PoolStore | None,
        report: Progress,
        sealer: sealing.Sealer | None = None,
        hashes: HashCache | None = None,  # H(x) remembered across queries (one client's)
    ) -> None:
        self._items = [item_bytes(query.kind, item) for item in query.items]
        self._hashes = hashes
        self._investigator = query.investigator
        self._sealer = sealer
        self._pools = pools if query.disclosure != Level.CARDINALITY else None
        self._report = report
        self._lock = threading.Lock()
        self._multiplicative: Blinded | None = None
        self._hashed: list[bytes] | None = None

    def multiplicative(self) -> Blinded:
        with self._lock:
            if self._multiplicative is None:
                self._report("*", f"blinding {len(self._items):,} watchlist items")
                hashed = self._hashes.points(self._items) if self._hashes is not None else None
                query = psi.BlindedQuery(self._items, hashed=hashed)
                self._multiplicative = Blinded(
                    query.blinded, query.unblind, secret=sealing.multiplicative(query.scalar)
                )
            return self._multiplicative

    def additive(self, node: str, dataset: node_pb2.DatasetInfo) -> Blinded | None:
        """Points blinded with `node`'s stored pool, or None (no usable pool: multiplicative)."""
        if self._pools is None or dataset.group != group.GROUP_NAME:
            return None
        try:
            binding = blinding.PoolBinding(
                node, dataset.name, dataset.epoch_id, dataset.blinding_point
            )
        except ValueError:
            return None
        count = len(self._items)
        pool = self._pools.take(binding, count)  # remaining entries rewritten before sending
        if pool is None:
            have = self._pools.remaining(binding)
            self._report(
                node, f"multiplicative blinding: {have:,} pool entries for {count:,} items"
            )
            return None
        with self._lock:
            if self._hashed is None:
                hashes = self._hashes if self._hashes is not None else HashCache(0)
                self._hashed = hashes.points(self._items)
            hashed = self._hashed
        self._report(node, f"additive blinding of {count:,} items from the pool")
        points, entries = blinding.blind_hashed(hashed, pool, binding)
        return Blinded(
            points,
            lambda answers: blinding.unblind(answers, entries),
            binding.blinding_point,
            sealing.additive(binding.blinding_point, [entry.scalar for entry in entries]),
        )

    def sealed(
        self, node: str, dataset: node_pb2.DatasetInfo, blinded: Blinded
    ) -> Callable[[node_pb2.QueryContext, str], list[node_pb2.SealedOpening]] | None:
        """The sealed openings of `blinded` for the monitors `node` demands, per query context."""
        sealer, secret = self._sealer, blinded.secret
        if sealer is None or secret is None or not dataset.monitors:
            return None
        return lambda context, epoch_id: sealer.points_openings(
            node,
            dataset,
            "match",
            epoch_id,
            context,
            self._investigator,
            blinded.points,
            self._items,
            secret,
        )


def run_match(
    federation: Federation,
    query: MatchQuery,
    connections: Connections,
    ca_pem: bytes,
    *,
    nodes: Sequence[NodeEntry] | None = None,
    cache: FilterCache | None = None,
    progress: Progress | None = None,
    revoked: RevocationList | None = None,
    pools: PoolStore | None = None,
    hashes: HashCache | None = None,
) -> list[NodeResult]:
    """Run one match query against the selected nodes; results in roster order.

    With `pools`, nodes with enough prepared entries get additive blinding; with
    `hashes`, watchlist items hashed by an earlier query are not hashed again.
    """
    entries = list(nodes or federation.nodes)
    filters = cache or FilterCache(None)
    report = progress or silent
    trust = NodeTrust(ca_pem, revoked)
    deadline = Deadline.after(federation.deadline_seconds)
    blindings = WatchlistBlinding(query, pools, report, sealing.Sealer(federation), hashes)
    heads = HeadWitness()
    if pools is None:
        blindings.multiplicative()  # today's order: blind once, before any node is asked

    def exchange(entry: NodeEntry, connection: NodeConnection) -> NodeResult:
        return _query_node(
            entry, connection, query, blindings, trust, filters, deadline, report, heads
        )

    results = []
    for outcome in fan_out(entries, connections, deadline, exchange, report):
        result = outcome.failure or outcome.value
        assert result is not None
        result.seconds = outcome.seconds
        results.append(result)
    return results


def _query_node(
    entry: NodeEntry,
    connection: NodeConnection,
    query: MatchQuery,
    blindings: WatchlistBlinding,
    trust: NodeTrust,
    cache: FilterCache,
    deadline: Deadline,
    report: Progress,
    heads: HeadWitness,
) -> NodeResult:
    additive_refused = False
    attempt = 0
    while attempt < 2:
        info, node_cert = checked_info(entry, connection, deadline, trust, report)
        heads.check(entry.name, info, node_cert)
        dataset = dataset_info(entry, info, query.dataset)
        if dataset.identifier_kind != query.kind:
            raise NodeFailure(
                NodeStatus.ERROR,
                f"dataset {query.dataset!r} at {entry.name} holds "
                f"{dataset.identifier_kind} identifiers, not {query.kind}",
            )
        epoch_id = checked_epoch_id(entry.name, dataset.epoch_id)
        filter_, filter_sha = _filter(
            entry,
            connection,
            query.dataset,
            epoch_id,
            cache,
            deadline,
            report,
            dataset.filter_partition_bits,
        )
        blinded = None if additive_refused else blindings.additive(entry.name, dataset)
        blinded = blinded or blindings.multiplicative()
        seal = blindings.sealed(entry.name, dataset, blinded)
        report(entry.name, f"evaluating {len(query.items):,} blinded items")
        try:
            result = _evaluate(
                entry,
                connection,
                query,
                blinded,
                filter_,
                filter_sha,
                epoch_id,
                node_cert,
                deadline,
                seal,
            )
            result.audit_head = heads.admit(entry.name, result.audit_head, node_cert, answer=True)
            return result
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            if blinded.additive and blinding.NEEDS_UNSHUFFLED in (exc.details() or ""):
                report(entry.name, "the grant answers shuffled: multiplicative blinding")
                additive_refused = True  # the spent pool entries are discarded
                continue
            if attempt == 0:
                attempt += 1
                continue  # the node started a new epoch meanwhile: refetch its filter once
            raise
    raise NodeFailure(NodeStatus.ERROR, "the node's epoch changed twice during the query")


def _filter(
    entry: NodeEntry,
    connection: NodeConnection,
    dataset: str,
    epoch_id: str,
    cache: FilterCache,
    deadline: Deadline,
    report: Progress,
    partition_bits: int = 0,
) -> tuple[PartitionedFilter, str]:
    key = (entry.name, dataset, epoch_id)
    if partition_bits:  # a partitioned epoch: every partition on disk, tested one at a time
        return fetch_partitions(
            entry.name,
            connection,
            key,
            partition_bits,
            cache.partitions,
            deadline.remaining,
            report,
        )
    cached = cache.get(key)
    if cached is not None:
        return PartitionedFilter.of(0, [cached]), hashlib.sha256(cached.data).hexdigest()
    report(entry.name, "fetching the epoch filter")
    chunks = connection.filter(
        node_pb2.GetFilterRequest(dataset=dataset, epoch_id=epoch_id), deadline.remaining()
    )
    first = next(chunks, None)
    if first is None or first.WhichOneof("part") != "header":
        raise NodeFailure(NodeStatus.ERROR, f"{entry.name} sent a filter without its header")
    header = first.header
    if header.filter_kind != "gcs-v1" or header.epoch_id != epoch_id:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{entry.name} sent a filter of kind {header.filter_kind!r} "
            f"for epoch {header.epoch_id!r}; expected gcs-v1, {epoch_id}",
        )
    if header.partition_bits or header.offset:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{entry.name} sent one partition of a partitioned filter (or part of a filter) "
            "for an epoch it announced unpartitioned",
        )
    parts: list[bytes] = []
    received = 0
    for chunk in chunks:
        received += len(chunk.data)
        if received > header.total_bytes:
            raise NodeFailure(
                NodeStatus.ERROR, f"{entry.name} sent more filter bytes than announced"
            )
        parts.append(chunk.data)
    data = b"".join(parts)
    if len(data) != header.total_bytes or hashlib.sha256(data).digest() != header.sha256:
        raise NodeFailure(
            NodeStatus.ERROR, f"{entry.name}'s filter arrived damaged (size or digest)"
        )
    try:
        filter_ = gcs.GolombFilter.from_bytes(header.item_count, header.remainder_bits, data)
    except ValueError as exc:
        raise NodeFailure(NodeStatus.ERROR, f"{entry.name}'s filter is malformed: {exc}") from None
    cache.put(key, filter_)
    return PartitionedFilter.of(0, [filter_]), header.sha256.hex()


def _requests(header: node_pb2.EvaluateHeader, blob: bytes) -> Iterator[node_pb2.EvaluateRequest]:
    """The evaluate stream: the header, then the blinded points in batches under the size limit."""
    yield node_pb2.EvaluateRequest(header=header)
    for batch in batched(blob, group.POINT_BYTES):
        yield node_pb2.EvaluateRequest(points=node_pb2.PointBatch(points=batch))


def _evaluate(
    entry: NodeEntry,
    connection: NodeConnection,
    query: MatchQuery,
    blinded: Blinded,
    filter_: PartitionedFilter,
    filter_sha: str,
    epoch_id: str,
    node_cert: bytes,
    deadline: Deadline,
    seal: Callable[[node_pb2.QueryContext, str], list[node_pb2.SealedOpening]] | None = None,
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
        disclosure=Level(query.disclosure).wire,
        item_count=len(blinded.points),
        blinding=node_pb2.BLINDING_ADDITIVE
        if blinded.additive
        else node_pb2.BLINDING_MULTIPLICATIVE,
    )
    header.openings.extend(seal(context, epoch_id) if seal is not None else [])
    sent = b"".join(blinded.points)
    responses = connection.evaluate(_requests(header, sent), deadline.remaining())
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
                    NodeStatus.ERROR, f"{entry.name} answered malformed points: {exc}"
                ) from None
        elif part == "trailer" and summary is not None and trailer is None:
            trailer = message.trailer
        else:
            raise NodeFailure(NodeStatus.ERROR, f"{entry.name} answered out of protocol order")
    if summary is None or trailer is None or len(points) != len(blinded.points):
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{entry.name} answered {len(points)} of "
            f"{len(blinded.points)} items or an incomplete stream",
        )
    answered = Level.from_wire(summary.disclosure)
    level = answered.label if answered is not None else ""
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
        blinding=blinded.mode,
        blinding_point_sha256=blinded.blinding_point_sha256,
        policy_sha256=policy_digest(entry.name, summary.policy_sha256),
        v=TRANSCRIPT_VERSION,
    )
    return _result(
        entry, query, blinded, points, filter_, summary, answered, transcript, trailer, node_cert
    )


def _result(
    entry: NodeEntry,
    query: MatchQuery,
    blinded: Blinded,
    points: list[bytes],
    filter_: PartitionedFilter,
    summary: node_pb2.EvaluateSummary,
    level: Level | None,
    transcript: Transcript,
    trailer: node_pb2.EvaluateTrailer,
    node_cert: bytes,
) -> NodeResult:
    digest = transcript.digest()
    if trailer.transcript_sha256 != digest or not verify_signature(
        node_cert, digest, trailer.signature
    ):
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{entry.name}'s signature does not match the exchange; the answer was discarded",
        )
    try:
        unblinded = blinded.unblind(points)
    except group.InvalidPoint as exc:
        raise NodeFailure(
            NodeStatus.ERROR, f"{entry.name} answered an invalid point: {exc}"
        ) from None
    hits = filter_.contains(unblinded)
    result = NodeResult(
        node=entry.name,
        status=NodeStatus.OK,
        disclosure=transcript.disclosure,
        match_count=sum(hits),
        policy_version=summary.policy_version,
        policy_sha256=transcript.policy_sha256,
        epoch_id=summary.epoch_id,
        tested_items=len(hits),
        false_positive_bits=filter_.remainder_bits,
        signature={
            "algorithm": SIGNATURE_ALGORITHM,
            "transcript": dataclasses.asdict(transcript),
            "transcript_sha256": digest.hex(),
            "value": trailer.signature.hex(),
            "certificate_pem": node_cert.decode(),
        },
        audit_head=head_of(trailer),
    )
    if not summary.shuffled and level in (Level.MEMBERSHIP, Level.DISCLOSURE_REQUEST):
        result.matched = [item for item, hit in zip(query.items, hits, strict=True) if hit]
    return result

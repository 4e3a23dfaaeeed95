"""The node's answers: thin gRPC servicer over plain functions that tests call directly.

Flow of a match: read and bound the request stream → policy decision → blinded
evaluation → (shuffle for cardinality) → signed transcript.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from dataclasses import dataclass

import grpc

from fedtrace import __version__, group, psi
from fedtrace.pki import Identity, sign
from fedtrace.transcript import Transcript
from fedtrace.v1 import node_pb2, node_pb2_grpc
from node.auth import peer_identity
from node.config import NodeConfig
from node.epoch import Epoch
from node.policy import Level, Policy, decide_match, load_policy
from node.store import NodeDatabase

log = logging.getLogger(__name__)

POINTS_PER_BATCH = 65_536  # 2 MiB of points: well under the 4 MiB message limit
FILTER_CHUNK_BYTES = 1 << 20


class QueryRefused(Exception):
    """A request the node will not answer; `code` is the gRPC status to return."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class PolicyHolder:
    """The policy in force; a changed file is re-read, an invalid one is refused and logged."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._stamp = _stamp(policy)
        self._lock = threading.Lock()

    def current(self) -> Policy:
        with self._lock:
            stamp = _file_stamp(self._policy.path)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._policy = load_policy(self._policy.path)
                    log.info("policy reloaded: version %s", self._policy.version)
                except Exception as exc:  # noqa: BLE001 - any bad file keeps the old policy
                    log.error("policy file rejected, version %s stays in force: %s",
                              self._policy.version, exc)
            return self._policy


def _file_stamp(path: os.PathLike[str]) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)


def _stamp(policy: Policy) -> tuple[int, int]:
    return _file_stamp(policy.path)


@dataclass
class NodeState:
    config: NodeConfig
    database: NodeDatabase
    policies: PolicyHolder
    epochs: dict[str, Epoch]
    certificate_pem: bytes
    key_pem: bytes
    concurrency: threading.BoundedSemaphore


def node_info(state: NodeState) -> node_pb2.NodeInfo:
    datasets = []
    for dataset in state.config.datasets:
        epoch = state.epochs[dataset.name]
        datasets.append(
            node_pb2.DatasetInfo(
                name=dataset.name,
                identifier_kind=dataset.kind,
                epoch_id=epoch.epoch_id,
                size=epoch.item_count,
                aggregate_columns=dataset.aggregate_columns,
                disclosable_columns=dataset.disclosable_columns,
            )
        )
    return node_pb2.NodeInfo(
        jurisdiction=state.config.jurisdiction,
        policy_version=state.policies.current().version,
        datasets=datasets,
        software_version=__version__,
        certificate_pem=state.certificate_pem,
    )


def _epoch(state: NodeState, dataset: str, epoch_id: str) -> Epoch:
    epoch = state.epochs.get(dataset)
    if epoch is None:
        known = ", ".join(sorted(state.epochs)) or "none"
        raise QueryRefused(
            grpc.StatusCode.NOT_FOUND,
            f"{state.config.jurisdiction} has no dataset {dataset!r} (it has: {known})",
        )
    if epoch_id and epoch_id != epoch.epoch_id:
        raise QueryRefused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"epoch {epoch_id} of {dataset!r} has ended; fetch the filter of epoch "
            f"{epoch.epoch_id}",
        )
    return epoch


def filter_chunks(state: NodeState, request: node_pb2.GetFilterRequest) -> Iterator[
    node_pb2.FilterChunk
]:
    epoch = _epoch(state, request.dataset, request.epoch_id)
    data = epoch.filter.data
    yield node_pb2.FilterChunk(
        header=node_pb2.FilterHeader(
            dataset=epoch.dataset,
            epoch_id=epoch.epoch_id,
            filter_kind="gcs-v1",
            item_count=epoch.filter.item_count,
            remainder_bits=epoch.filter.remainder_bits,
            total_bytes=len(data),
            sha256=epoch.filter_sha256,
        )
    )
    for start in range(0, len(data), FILTER_CHUNK_BYTES):
        yield node_pb2.FilterChunk(data=data[start : start + FILTER_CHUNK_BYTES])


@dataclass(frozen=True)
class MatchRequest:
    header: node_pb2.EvaluateHeader
    points: list[bytes]
    request_sha256: str


def read_match_request(
    state: NodeState, identity: Identity, requests: Iterator[node_pb2.EvaluateRequest]
) -> tuple[MatchRequest, Level, Policy]:
    """Read the header, decide on it before reading points, then read exactly item_count points."""
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "header":
        raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                           "an Evaluate stream must start with its header")
    header = first.header
    if header.item_count > state.config.limits.max_items_per_request:
        raise QueryRefused(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{header.item_count} items exceed this node's ceiling of "
            f"{state.config.limits.max_items_per_request} per request",
        )
    _epoch(state, header.dataset, header.epoch_id)
    if not header.context.case_ref:
        raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                           "every query must carry a case reference (--case)")
    policy = state.policies.current()
    try:
        asked = Level(header.disclosure)
    except ValueError:
        raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown disclosure level {header.disclosure}") from None
    decision = decide_match(policy, identity.jurisdiction, identity.role, header.dataset, asked,
                            header.item_count)
    if not decision.allowed or decision.level is None:
        raise QueryRefused(grpc.StatusCode.PERMISSION_DENIED, decision.reason)

    points: list[bytes] = []
    digest = hashlib.sha256()
    for message in requests:
        if message.WhichOneof("part") != "points":
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                               "after its header an Evaluate stream carries only point batches")
        blob = message.points.points
        if len(points) * group.POINT_BYTES + len(blob) > header.item_count * group.POINT_BYTES:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                               f"more points than the {header.item_count} announced")
        try:
            batch = group.split_points(blob)
        except group.InvalidPoint as exc:
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, f"bad point batch: {exc}") from None
        digest.update(blob)
        points.extend(batch)
    if len(points) != header.item_count:
        raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{len(points)} points received, {header.item_count} announced")
    return MatchRequest(header, points, digest.hexdigest()), decision.level, policy


def answer_match(
    state: NodeState, identity: Identity, request: MatchRequest, level: Level, policy: Policy
) -> Iterator[node_pb2.EvaluateResponse]:
    header = request.header
    epoch = _epoch(state, header.dataset, header.epoch_id)
    try:
        answer = psi.evaluate(request.points, epoch.secret_key)
    except group.InvalidPoint as exc:
        raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid point: {exc}") from None
    shuffled = level == Level.CARDINALITY
    if shuffled:
        answer = psi.shuffled(answer)
    response = b"".join(answer)
    transcript = Transcript(
        jurisdiction=state.config.jurisdiction,
        investigator=identity.jurisdiction,
        dataset=epoch.dataset,
        epoch_id=epoch.epoch_id,
        filter_sha256=epoch.filter_sha256.hex(),
        disclosure=level.label,
        shuffled=shuffled,
        policy_version=policy.version,
        case_ref=header.context.case_ref,
        legal_basis=header.context.legal_basis,
        nonce=header.context.nonce.hex(),
        timestamp_unix_ms=header.context.timestamp_unix_ms,
        item_count=len(answer),
        request_sha256=request.request_sha256,
        response_sha256=hashlib.sha256(response).hexdigest(),
    )
    log.info(
        "match answered: partner=%s case=%s dataset=%s items=%d level=%s policy=%s",
        identity.jurisdiction, header.context.case_ref, epoch.dataset, len(answer), level.label,
        policy.version,
    )
    yield node_pb2.EvaluateResponse(
        summary=node_pb2.EvaluateSummary(
            dataset=epoch.dataset,
            epoch_id=epoch.epoch_id,
            disclosure=int(level),
            shuffled=shuffled,
            item_count=len(answer),
            policy_version=policy.version,
            jurisdiction=state.config.jurisdiction,
        )
    )
    step = POINTS_PER_BATCH * group.POINT_BYTES
    for start in range(0, len(response), step):
        yield node_pb2.EvaluateResponse(points=node_pb2.PointBatch(points=response[start : start + step]))
    digest = transcript.digest()
    yield node_pb2.EvaluateResponse(
        trailer=node_pb2.EvaluateTrailer(
            transcript_sha256=digest, signature=sign(state.key_pem, digest)
        )
    )


class NodeServicer(node_pb2_grpc.NodeServiceServicer):  # type: ignore[misc]
    """Decode, call the domain function, encode, map refusals to status codes."""

    def __init__(self, state: NodeState) -> None:
        self._state = state

    def GetInfo(self, request: node_pb2.GetInfoRequest, context: grpc.ServicerContext) -> Any:
        return node_info(self._state)

    def GetFilter(
        self, request: node_pb2.GetFilterRequest, context: grpc.ServicerContext
    ) -> Iterable[node_pb2.FilterChunk]:
        try:
            yield from filter_chunks(self._state, request)
        except QueryRefused as exc:
            context.abort(exc.code, str(exc))

    def Evaluate(
        self, requests: Iterator[node_pb2.EvaluateRequest], context: grpc.ServicerContext
    ) -> Iterable[node_pb2.EvaluateResponse]:
        identity = peer_identity(context)
        assert identity is not None  # IdentityInterceptor guarantees it
        if not self._state.concurrency.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._state.config.jurisdiction} is answering its maximum of "
                f"{self._state.config.limits.max_concurrent_queries} queries; retry shortly",
            )
        try:
            request, level, policy = read_match_request(self._state, identity, requests)
            yield from answer_match(self._state, identity, request, level, policy)
        except QueryRefused as exc:
            log.info("query refused: partner=%s code=%s reason=%s", identity.jurisdiction,
                     exc.code.name, exc)
            context.abort(exc.code, str(exc))
        finally:
            self._state.concurrency.release()

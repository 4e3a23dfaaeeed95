"""A match query on the node's side, as plain functions a unit test calls without gRPC.

Read the stream's header and its points (every point validated, the count
exactly as announced), evaluate the blinded points under the epoch key at the
admitted level (shuffled for cardinality), and sign the transcript. The
evaluation is the same multiplication by ``b`` whether the coordinator blinded
multiplicatively or additively (``fedtrace.blinding``); an additive request is
refused at a shuffled level, since its per-point masks cannot be removed from a
permuted answer, and the transcript records the blinding. Admission,
settlement and audit happen around these steps in `node.session`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from fedtrace import blinding, group, psi
from fedtrace.pki import Identity, sign
from fedtrace.transcript import TRANSCRIPT_VERSION, Transcript
from fedtrace.v1 import aggregate_pb2, node_pb2
from fedtrace.wire import Level
from node.gate import Admission, QueryRefused
from node.state import NodeState, serving_epoch

PointRequests = (
    Iterator[node_pb2.EvaluateRequest] | Iterator[aggregate_pb2.AggregateEvaluateRequest]
)


@dataclass(frozen=True)
class ReceivedPoints:
    """The blinded points of a request, in order, and the SHA-256 of their bytes (hex)."""

    points: list[bytes]
    request_sha256: str


@dataclass(frozen=True)
class MatchRequest:
    header: node_pb2.EvaluateHeader
    points: list[bytes]
    request_sha256: str


def read_match_header(
    state: NodeState, requests: Iterator[node_pb2.EvaluateRequest]
) -> tuple[node_pb2.EvaluateHeader, Level]:
    """The stream's header and the level asked; the epoch must be current."""
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "header":
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT, "an Evaluate stream must start with its header"
        )
    header = first.header
    asked = Level.from_wire(header.disclosure)
    if asked is None:
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT, f"unknown disclosure level {header.disclosure}"
        )
    serving_epoch(state, header.dataset, header.epoch_id)
    return header, asked


def read_points(item_count: int, requests: PointRequests) -> ReceivedPoints:
    """Read exactly `item_count` points after a stream's header, validating every one."""
    points: list[bytes] = []
    digest = hashlib.sha256()
    for message in requests:
        if message.WhichOneof("part") != "points":
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "after its header an Evaluate stream carries only point batches",
            )
        blob = message.points.points
        if len(points) * group.POINT_BYTES + len(blob) > item_count * group.POINT_BYTES:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"more points than the {item_count} announced",
            )
        try:
            batch = group.split_points(blob)
        except group.InvalidPoint as exc:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"bad point batch: {exc}"
            ) from None
        digest.update(blob)
        points.extend(batch)
    if len(points) != item_count:
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{len(points)} points received, {item_count} announced",
        )
    return ReceivedPoints(points, digest.hexdigest())


def read_match_points(
    header: node_pb2.EvaluateHeader, requests: Iterator[node_pb2.EvaluateRequest]
) -> MatchRequest:
    """Read exactly the header's item_count points, validating every one."""
    received = read_points(header.item_count, requests)
    return MatchRequest(header, received.points, received.request_sha256)


def is_additive(header: node_pb2.EvaluateHeader) -> bool:
    return header.blinding == node_pb2.BLINDING_ADDITIVE


def check_blinding(header: node_pb2.EvaluateHeader, admission: Admission) -> None:
    """Refuse an unknown blinding, and an additive one at a level answered shuffled."""
    if header.blinding not in (node_pb2.BLINDING_MULTIPLICATIVE, node_pb2.BLINDING_ADDITIVE):
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT, f"unknown blinding {int(header.blinding)}"
        )
    if is_additive(header) and admission.level == Level.CARDINALITY:
        raise QueryRefused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{blinding.NEEDS_UNSHUFFLED}: the grant answers {admission.level.label}, "
            "shuffled; send the points blinded multiplicatively",
        )


@dataclass(frozen=True)
class MatchAnswer:
    summary: node_pb2.EvaluateSummary
    response: bytes
    trailer: node_pb2.EvaluateTrailer
    transcript: Transcript


def compute_match_answer(
    state: NodeState, identity: Identity, request: MatchRequest, admission: Admission
) -> MatchAnswer:
    """Evaluate the blinded points at the admitted level and sign the transcript."""
    header = request.header
    level, policy = admission.level, admission.policy
    epoch = serving_epoch(state, header.dataset, header.epoch_id)
    try:
        answer = psi.evaluate(request.points, epoch.secret_key)
    except group.InvalidPoint as exc:
        raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid point: {exc}") from None
    shuffled = level == Level.CARDINALITY
    additive = is_additive(header)
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
        blinding=blinding.ADDITIVE if additive else blinding.MULTIPLICATIVE,
        blinding_point_sha256=(
            hashlib.sha256(epoch.blinding_point).hexdigest() if additive else ""
        ),
        policy_sha256=policy.sha256,
        v=TRANSCRIPT_VERSION,
    )
    digest = transcript.digest()
    summary = node_pb2.EvaluateSummary(
        dataset=epoch.dataset,
        epoch_id=epoch.epoch_id,
        disclosure=level.wire,
        shuffled=shuffled,
        item_count=len(answer),
        policy_version=policy.version,
        jurisdiction=state.config.jurisdiction,
        policy_sha256=bytes.fromhex(policy.sha256),
    )
    trailer = node_pb2.EvaluateTrailer(
        transcript_sha256=digest, signature=sign(state.key_pem, digest)
    )
    return MatchAnswer(summary, response, trailer, transcript)

"""The node's answers: thin gRPC servicer over plain functions that tests call directly.

Flow of a match: read the header → admission through the gate (policy, budgets,
audit; `node.gate`) → read and bound the points → blinded evaluation → (shuffle
for cardinality) → signed transcript → settle (charge kept, answer audited) →
stream the answer. Every future query RPC goes through the same gate.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc

from fedtrace import __version__, group, psi
from fedtrace.pki import Identity, sign
from fedtrace.transcript import Transcript
from fedtrace.v1 import node_pb2, node_pb2_grpc
from node.audit import AuditError, AuditLog
from node.auth import peer_identity
from node.config import NodeConfig
from node.epoch import Epoch
from node.gate import (
    RENEWS_AT_METADATA,
    Admission,
    Gate,
    Outcome,
    QueryContextInfo,
    QueryRefused,
)
from node.policy import Level, Policy, QueryKind, parse_policy
from node.store import NodeDatabase

log = logging.getLogger(__name__)

POINTS_PER_BATCH = 65_536  # 2 MiB of points: well under the 4 MiB message limit
FILTER_CHUNK_BYTES = 1 << 20


class PolicyHolder:
    """The policy in force, re-read when its file changes; an invalid file never replaces it.

    `current()` notices a changed file (size or mtime) on every request; `refresh()`
    compares the file's SHA-256 and is called every second by the node's policy
    watcher, so a change is picked up within seconds even with no traffic and even
    when an edit keeps size and mtime. Every reload and every rejection is logged
    and audited (once per distinct file content); a rejected file leaves the old
    policy in force.
    """

    def __init__(
        self, policy: Policy, *, jurisdiction: str | None = None, audit: AuditLog | None = None
    ) -> None:
        self._policy = policy
        self._jurisdiction = jurisdiction or policy.jurisdiction
        self._audit = audit
        self._stamp = _file_stamp(policy.path)
        self._seen_sha256 = policy.sha256
        self._lock = threading.Lock()

    def current(self) -> Policy:
        with self._lock:
            stamp = _file_stamp(self._policy.path)
            if stamp != self._stamp:
                self._stamp = stamp
                self._reload()
            return self._policy

    def refresh(self) -> Policy:
        with self._lock:
            self._stamp = _file_stamp(self._policy.path)
            self._reload()
            return self._policy

    def _reload(self) -> None:
        path = self._policy.path
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raw = b""
            outcome = None
            problem = f"{path}: cannot read the policy file: {exc.strerror}"
        else:
            outcome = parse_policy(raw, path)
            problem = ""
        sha256 = hashlib.sha256(raw).hexdigest() if raw or outcome else ""
        if sha256 == self._seen_sha256:
            return
        self._seen_sha256 = sha256
        old = self._policy
        errors: list[str] = []
        if outcome is None:
            errors = [problem]
        elif outcome.policy is None:
            errors = [d.format() for d in outcome.errors]
        elif outcome.policy.jurisdiction != self._jurisdiction:
            errors = [
                f"{path}: the policy is for {outcome.policy.jurisdiction!r}, but this node "
                f"is {self._jurisdiction!r}"
            ]
        if errors:
            log.error(
                "policy file rejected, version %s stays in force: %s%s",
                old.version,
                errors[0],
                f" (and {len(errors) - 1} more)" if len(errors) > 1 else "",
            )
            self._record(
                "policy-rejected",
                {
                    "policy_file": str(path),
                    "rejected_sha256": sha256,
                    "errors": errors[:20],
                    "policy_version": old.version,
                    "policy_sha256": old.sha256,
                    "outcome": "rejected",
                    "reason": errors[0],
                },
            )
            return
        assert outcome is not None and outcome.policy is not None
        self._policy = outcome.policy
        log.info(
            "policy reloaded: version %s (sha256 %s…)",
            self._policy.version,
            self._policy.sha256[:12],
        )
        self._record(
            "policy-loaded",
            {
                "policy_file": str(path),
                "policy_version": self._policy.version,
                "policy_sha256": self._policy.sha256,
                "previous_version": old.version,
                "previous_sha256": old.sha256,
                "outcome": "loaded",
                "warnings": [d.format() for d in outcome.warnings][:20],
            },
        )

    def _record(self, event: str, fields: dict[str, Any]) -> None:
        if self._audit is None:
            return
        try:
            self._audit.append(event, fields)
        except AuditError as exc:
            log.error("could not audit %s: %s", event, exc)


def watch_policy(state: NodeState, stop: threading.Event, every_seconds: float) -> None:
    """Re-read the policy file every `every_seconds` until `stop` is set."""
    while not stop.wait(every_seconds):
        try:
            state.policies.refresh()
        except Exception:  # noqa: BLE001 - the watcher must outlive any one bad read
            log.exception("policy watcher: could not check the policy file")


def _file_stamp(path: os.PathLike[str]) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)


@dataclass
class NodeState:
    config: NodeConfig
    database: NodeDatabase
    policies: PolicyHolder
    epochs: dict[str, Epoch]
    certificate_pem: bytes
    key_pem: bytes
    concurrency: threading.BoundedSemaphore
    gate: Gate


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


def filter_chunks(
    state: NodeState, request: node_pb2.GetFilterRequest
) -> Iterator[node_pb2.FilterChunk]:
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
    try:
        asked = Level(header.disclosure)
    except ValueError:
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT, f"unknown disclosure level {header.disclosure}"
        ) from None
    _epoch(state, header.dataset, header.epoch_id)
    return header, asked


def read_match_points(
    header: node_pb2.EvaluateHeader, requests: Iterator[node_pb2.EvaluateRequest]
) -> MatchRequest:
    """Read exactly the header's item_count points, validating every one."""
    points: list[bytes] = []
    digest = hashlib.sha256()
    for message in requests:
        if message.WhichOneof("part") != "points":
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "after its header an Evaluate stream carries only point batches",
            )
        blob = message.points.points
        if len(points) * group.POINT_BYTES + len(blob) > header.item_count * group.POINT_BYTES:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"more points than the {header.item_count} announced",
            )
        try:
            batch = group.split_points(blob)
        except group.InvalidPoint as exc:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"bad point batch: {exc}"
            ) from None
        digest.update(blob)
        points.extend(batch)
    if len(points) != header.item_count:
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{len(points)} points received, {header.item_count} announced",
        )
    return MatchRequest(header, points, digest.hexdigest())


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
    digest = transcript.digest()
    summary = node_pb2.EvaluateSummary(
        dataset=epoch.dataset,
        epoch_id=epoch.epoch_id,
        disclosure=cast("node_pb2.Disclosure", int(level)),
        shuffled=shuffled,
        item_count=len(answer),
        policy_version=policy.version,
        jurisdiction=state.config.jurisdiction,
    )
    trailer = node_pb2.EvaluateTrailer(
        transcript_sha256=digest, signature=sign(state.key_pem, digest)
    )
    return MatchAnswer(summary, response, trailer, transcript)


def match_messages(answer: MatchAnswer) -> Iterator[node_pb2.EvaluateResponse]:
    yield node_pb2.EvaluateResponse(summary=answer.summary)
    step = POINTS_PER_BATCH * group.POINT_BYTES
    response = answer.response
    for start in range(0, len(response), step):
        yield node_pb2.EvaluateResponse(
            points=node_pb2.PointBatch(points=response[start : start + step])
        )
    yield node_pb2.EvaluateResponse(trailer=answer.trailer)


def _abort(context: grpc.ServicerContext, refusal: QueryRefused) -> None:
    if refusal.renews_at is not None and hasattr(context, "set_trailing_metadata"):
        context.set_trailing_metadata(
            ((RENEWS_AT_METADATA, refusal.renews_at.strftime("%Y-%m-%dT%H:%M:%SZ")),)
        )
    context.abort(refusal.code, str(refusal))


def take_query_slot(state: NodeState, identity: Identity, kind: QueryKind) -> QueryRefused | None:
    """Take one of the node's bounded query slots; when all are busy, the audited refusal.

    The caller releases the slot (`state.concurrency.release()`) when its answer is done.
    """
    if state.concurrency.acquire(blocking=False):
        return None
    busy = QueryRefused(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{state.config.jurisdiction} is answering its maximum of "
        f"{state.config.limits.max_concurrent_queries} queries; retry shortly",
    )
    state.gate.refuse(identity, kind, busy)
    return busy


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
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
        gate = self._state.gate
        busy = take_query_slot(self._state, identity, QueryKind.MATCH)
        if busy is not None:
            _abort(context, busy)
            return
        admission: Admission | None = None
        header: node_pb2.EvaluateHeader | None = None
        try:
            header, asked = read_match_header(self._state, requests)
            admission = gate.admit(
                identity,
                QueryKind.MATCH,
                header.dataset,
                QueryContextInfo.from_proto(header.context),
                header.item_count,
                asked,
            )
            request = read_match_points(header, requests)
            answer = compute_match_answer(self._state, identity, request, admission)
            # Charged and audited before the first byte of the answer leaves the node.
            gate.settle(
                admission, Outcome.ANSWERED, transcript_sha256=answer.transcript.digest().hex()
            )
            log.info(
                "match answered: partner=%s case=%s dataset=%s items=%d level=%s policy=%s",
                identity.jurisdiction,
                header.context.case_ref,
                header.dataset,
                answer.summary.item_count,
                admission.level.label,
                admission.policy.version,
            )
            yield from match_messages(answer)
        except QueryRefused as exc:
            log.info(
                "query refused: partner=%s code=%s reason=%s",
                identity.jurisdiction,
                exc.code.name,
                exc,
            )
            if admission is not None:
                gate.settle(admission, Outcome.REFUSED, reason=str(exc), code=exc.code)
            elif not exc.audited:
                gate.refuse(
                    identity,
                    QueryKind.MATCH,
                    exc,
                    dataset=header.dataset if header is not None else "",
                    context=QueryContextInfo.from_proto(header.context)
                    if header is not None
                    else None,
                    item_count=header.item_count if header is not None else 0,
                )
            _abort(context, exc)
        except BaseException:
            if admission is not None:  # nothing was disclosed unless it was settled as answered
                gate.settle(
                    admission,
                    Outcome.FAILED,
                    reason="internal error",
                    code=grpc.StatusCode.INTERNAL,
                )
            raise
        finally:
            self._state.concurrency.release()

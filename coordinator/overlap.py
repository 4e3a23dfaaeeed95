"""The overlap query from the investigator's side: join, plan, relay over gRPC, tally, report.

Flow (docs/overlap.md): every selected node is asked to join (its policy decides;
a refusal is that node's `denied` result and the overlap runs among the rest, if
at least two joined) → the plan fixes the roster, whether owners learn their
shared items (only when every joined grant allows it) and each origin's size →
`fedtrace.overlap.run_overlap` streams every set around its ring, all origins at
once → the tally counts exact groups and pairs, with the largest minimum cohort
of the participants applied → each node signs its transcript at close, and the
coordinator checks it against what it relayed itself.

Set ``FEDTRACE_OVERLAP_RELAY_LOG=FILE`` to append every message the coordinator
relays (sender, receiver, origin, hop, payload hex) as JSON lines: the record the
tests check for raw identifiers. It holds blinded points only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from coordinator.fanout import Deadline, NodeTrust, fan_out
from coordinator.federation import Federation, NodeEntry
from coordinator.heads import HeadWitness
from coordinator.progress import Progress, silent
from coordinator.results import NodeFailure, policy_digest, rpc_failure
from coordinator.transport import Connections, NodeConnection
from fedtrace import group, overlap_ring
from fedtrace import overlap as overlap_protocol
from fedtrace.audit_head import SignedHead
from fedtrace.errors import FedtraceError
from fedtrace.overlap_transcript import OverlapHop, OverlapTranscript
from fedtrace.pki import verify_signature
from fedtrace.revocation import RevocationList
from fedtrace.transcript import SIGNATURE_ALGORITHM, TRANSCRIPT_VERSION
from fedtrace.v1 import node_pb2, overlap_pb2
from fedtrace.wire import Level, NodeStatus

RELAY_LOG_ENV = "FEDTRACE_OVERLAP_RELAY_LOG"
_ITERATING = "Exception iterating requests"


class OverlapFailed(FedtraceError):
    """The overlap could not run (fewer than two participants, or a node failed mid-way)."""


@dataclass(frozen=True)
class OverlapQuery:
    dataset: str
    case_ref: str
    legal_basis: str
    investigator: str  # our jurisdiction, as our certificate names it


@dataclass
class OverlapNodeResult:
    node: str
    status: NodeStatus
    reason: str = ""
    disclosure: str = ""
    set_size: int | None = None
    reveal_to_owner: bool | None = None
    min_cohort: int | None = None
    policy_version: str = ""
    policy_sha256: str = ""  # hex: the policy file the node joined under
    identifier_kind: str = ""
    shared_records: int | None = None  # own records the node stored (reveal overlap)
    signature: dict[str, Any] | None = None
    seconds: float = 0.0
    audit_head: SignedHead | None = None  # the node's signed audit head after its close entry
    certificate_pem: bytes = field(default=b"", repr=False)
    join_signature: bytes = field(default=b"", repr=False)  # forwarded to the others at open


@dataclass
class OverlapOutcome:
    overlap_id: str
    roster: tuple[str, ...]
    reveal: bool
    min_cohort: int
    results: list[OverlapNodeResult]
    groups: dict[frozenset[str], overlap_ring.GroupCount] | None
    pairwise: dict[tuple[str, str], overlap_ring.GroupCount] | None
    seconds: float = 0.0


@dataclass
class _Failure:
    node: str
    error: grpc.RpcError
    at: float


class ConnectionOverlapPeer:
    """`fedtrace.overlap.OverlapPeer` over the OverlapService calls of one node's connection."""

    def __init__(
        self,
        entry: NodeEntry,
        connection: NodeConnection,
        deadline: float,
        failures: list[_Failure],
    ) -> None:
        self.entry = entry
        self._connection = connection
        self._deadline = deadline
        self._failures = failures
        self._calls: list[Iterator[node_pb2.PointBatch]] = []
        self._lock = threading.Lock()
        self.plan: overlap_protocol.OverlapPlan | None = None
        self.sizes: dict[str, int] = {}
        self.joins: list[overlap_pb2.OverlapJoinProof] = []  # every member's, shown at open
        # Every origin's commitment to its initial set (shared by all peers of one overlap),
        # forwarded with each Relay header.
        self.commitments: dict[str, overlap_pb2.OverlapCommitment] = {}
        self.shared_records: int | None = None
        self.close_response: overlap_pb2.OverlapCloseResponse | None = None
        self.nonce = b""
        self.timestamp_ms = 0

    @property
    def jurisdiction(self) -> str:
        return self.entry.name

    def _timeout(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise OverlapFailed(
                "the overlap did not finish within the query deadline "
                "(deadline_seconds in FED.toml)"
            )
        return left

    def _record(self, error: grpc.RpcError) -> None:
        with self._lock:
            self._failures.append(_Failure(self.entry.name, error, time.monotonic()))

    def _stream(self, call: Iterator[node_pb2.PointBatch]) -> Iterator[bytes]:
        with self._lock:
            self._calls.append(call)
        try:
            for message in call:
                yield message.points
        except grpc.RpcError as exc:
            self._record(exc)
            raise

    def join(self, overlap_id: str, query: OverlapQuery) -> overlap_pb2.OverlapJoinResponse:
        self.nonce = secrets.token_bytes(16)
        self.timestamp_ms = int(time.time() * 1000)
        context = node_pb2.QueryContext(
            case_ref=query.case_ref,
            legal_basis=query.legal_basis,
            nonce=self.nonce,
            timestamp_unix_ms=self.timestamp_ms,
        )
        return self._connection.overlap_join(
            overlap_pb2.OverlapJoinRequest(
                context=context, dataset=query.dataset, overlap_id=overlap_id
            ),
            self._timeout(),
        )

    def open(self, plan: overlap_protocol.OverlapPlan) -> int:
        self.plan = plan
        request = overlap_pb2.OverlapOpenRequest(
            overlap_id=plan.overlap_id,
            roster=list(plan.roster),
            reveal=plan.reveal,
            sizes=[
                overlap_pb2.OverlapOrigin(origin=code, size=self.sizes[code])
                for code in plan.roster
            ],
            joins=self.joins,
        )
        try:
            response = self._connection.overlap_open(request, self._timeout())
        except grpc.RpcError as exc:
            self._record(exc)
            raise
        with self._lock:
            self.commitments[self.entry.name] = response.commitment
        return int(response.set_size)

    def initial(self, overlap_id: str) -> Iterator[bytes]:
        call = self._connection.overlap_initial(
            overlap_pb2.OverlapRef(overlap_id=overlap_id), self._timeout()
        )
        return self._stream(call)

    def relay(
        self, overlap_id: str, origin: str, expected_points: int, incoming: Iterator[bytes]
    ) -> Iterator[bytes]:
        assert self.plan is not None
        header = overlap_pb2.OverlapRelayHeader(
            overlap_id=overlap_id,
            origin=origin,
            hop=self.plan.hop_of(self.entry.name, origin),
            expected_points=expected_points,
            commitment=self.commitments.get(origin),
        )

        def requests() -> Iterator[overlap_pb2.OverlapRelayRequest]:
            yield overlap_pb2.OverlapRelayRequest(header=header)
            for batch in incoming:
                yield overlap_pb2.OverlapRelayRequest(points=node_pb2.PointBatch(points=batch))

        return self._stream(self._connection.overlap_relay(requests(), self._timeout()))

    def deliver_shared(self, overlap_id: str, notices: Iterable[bytes]) -> None:
        def requests() -> Iterator[overlap_pb2.OverlapSharedRequest]:
            yield overlap_pb2.OverlapSharedRequest(
                header=overlap_pb2.OverlapRef(overlap_id=overlap_id)
            )
            for notice in notices:
                yield overlap_pb2.OverlapSharedRequest(notices=notice)

        try:
            response = self._connection.overlap_shared(requests(), self._timeout())
        except grpc.RpcError as exc:
            self._record(exc)
            raise
        self.shared_records = int(response.shared_records)

    def close(self, overlap_id: str) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            if isinstance(call, grpc.RpcContext):
                call.cancel()  # a failed overlap stops every stream still running
            elif isinstance(call, Generator):
                call.close()  # an in-memory stream
        try:
            self.close_response = self._connection.overlap_close(
                overlap_pb2.OverlapRef(overlap_id=overlap_id),
                max(1.0, min(10.0, self._deadline - time.monotonic())),
            )
        except grpc.RpcError:
            self.close_response = None  # the node drops the overlap at its own deadline


class RelayRecorder:
    """The coordinator's own record of the overlap: digests for transcripts, optional log file."""

    def __init__(self, log_path: str | None = None) -> None:
        self._digests: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115

    def __call__(self, message: overlap_ring.Relayed) -> None:
        key = (message.sender, message.receiver, message.origin)
        with self._lock:
            digest = self._digests.setdefault(key, hashlib.sha256())
            if self._log is not None:
                self._log.write(
                    json.dumps(
                        {
                            "sender": message.sender,
                            "receiver": message.receiver,
                            "origin": message.origin,
                            "hop": message.hop,
                            "payload": message.payload.hex(),
                        }
                    )
                    + "\n"
                )
        digest.update(message.payload)

    def sha256(self, sender: str, receiver: str, origin: str) -> str:
        digest = self._digests.get((sender, receiver, origin))
        return (digest or hashlib.sha256()).hexdigest()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()

    def transcript(
        self,
        plan: overlap_protocol.OverlapPlan,
        node: str,
        query: OverlapQuery,
        result: OverlapNodeResult,
        sizes: dict[str, int],
        nonce: str,
        timestamp_ms: int,
    ) -> OverlapTranscript:
        hops = []
        for origin in plan.roster:
            if origin == node:
                continue
            hops.append(
                OverlapHop(
                    origin=origin,
                    hop=plan.hop_of(node, origin),
                    points=sizes[origin],
                    received_sha256=self.sha256("coordinator", node, origin),
                    sent_sha256=self.sha256(node, "coordinator", origin),
                )
            )
        hops.sort(key=lambda h: h.hop)
        return OverlapTranscript(
            jurisdiction=node,
            investigator=query.investigator,
            dataset=query.dataset,
            overlap_id=plan.overlap_id,
            roster=plan.roster,
            reveal=plan.reveal,
            disclosure=Level.OVERLAP.label,
            policy_version=result.policy_version,
            case_ref=query.case_ref,
            legal_basis=query.legal_basis,
            nonce=nonce,
            timestamp_unix_ms=timestamp_ms,
            set_size=result.set_size or 0,
            initial_sha256=self.sha256(node, "coordinator", node),
            hops=tuple(hops),
            notices_sha256=self.sha256("coordinator", node, node) if plan.reveal else "",
            min_cohort=result.min_cohort or 1,
            reveal_to_owner=bool(result.reveal_to_owner),
            policy_sha256=result.policy_sha256,
            v=TRANSCRIPT_VERSION,
        )


def run_overlap(
    federation: Federation,
    query: OverlapQuery,
    connections: Connections,
    ca_pem: bytes,
    *,
    nodes: Sequence[NodeEntry] | None = None,
    progress: Progress | None = None,
    observe: Callable[[overlap_ring.Relayed], None] | None = None,
    revoked: RevocationList | None = None,
) -> OverlapOutcome:
    """Run one overlap query over the selected nodes; results in roster order."""
    entries = list(nodes or federation.nodes)
    report = progress or silent
    trust = NodeTrust(ca_pem, revoked)
    started = time.monotonic()
    deadline = Deadline(started + federation.deadline_seconds)
    overlap_id = secrets.token_hex(16)
    failures: list[_Failure] = []
    peers = {
        e.name: ConnectionOverlapPeer(e, connections(e), deadline.at, failures) for e in entries
    }
    results = {
        e.name: OverlapNodeResult(e.name, NodeStatus.ERROR, "did not take part") for e in entries
    }

    def join(entry: NodeEntry, connection: NodeConnection) -> OverlapNodeResult:
        report(entry.name, "asking to join the overlap")
        return _joined(entry, peers[entry.name].join(overlap_id, query), trust)

    # Not retried: the node holds the overlap id from its first answer.
    for outcome in fan_out(
        entries, connections, deadline, join, silent, retry=False, report_status=False
    ):
        name = outcome.entry.name
        if outcome.failure is not None:
            result = OverlapNodeResult(name, outcome.failure.status, outcome.failure.reason)
        else:
            assert outcome.value is not None
            result = outcome.value
        result.seconds = outcome.seconds
        report(name, "joined" if result.status == NodeStatus.OK else result.status)
        results[name] = result
    joined = [e.name for e in entries if results[e.name].status == NodeStatus.OK]
    kinds = {results[code].identifier_kind for code in joined}
    if len(kinds) > 1:
        raise OverlapFailed(
            f"dataset {query.dataset!r} holds different identifier kinds at "
            + ", ".join(f"{c} ({results[c].identifier_kind})" for c in joined)
            + "; a overlap compares one kind"
        )
    if len(joined) < 2:
        for code in joined:
            peers[code].close(overlap_id)
            results[code].status = NodeStatus.ERROR
            results[
                code
            ].reason = f"the overlap needs at least 2 participants; only {len(joined)} joined"
        return OverlapOutcome(
            overlap_id,
            tuple(joined),
            False,
            1,
            [results[e.name] for e in entries],
            None,
            None,
            round(time.monotonic() - started, 3),
        )
    plan = overlap_protocol.OverlapPlan(
        overlap_id, tuple(joined), reveal=all(results[c].reveal_to_owner for c in joined)
    )
    min_cohort = max(results[c].min_cohort or 1 for c in joined)
    sizes = {code: results[code].set_size or 0 for code in joined}
    joins = [
        overlap_pb2.OverlapJoinProof(
            jurisdiction=code,
            set_size=sizes[code],
            certificate_pem=results[code].certificate_pem,
            signature=results[code].join_signature,
        )
        for code in joined
    ]
    commitments: dict[str, overlap_pb2.OverlapCommitment] = {}
    for code in joined:
        peers[code].sizes = sizes
        peers[code].joins = joins
        peers[code].commitments = commitments
    recorder = RelayRecorder(os.environ.get(RELAY_LOG_ENV) or None)

    def observed(message: overlap_ring.Relayed) -> None:
        recorder(message)
        if observe is not None:
            observe(message)

    report(
        "*",
        f"overlap of {', '.join(joined)}: relaying {sum(sizes.values()):,} items around the ring",
    )
    try:
        tally = overlap_ring.run_overlap(
            plan, {c: peers[c] for c in joined}, observe=observed, concurrent=True
        )
    except (
        grpc.RpcError,
        overlap_protocol.OverlapError,
        group.InvalidPoint,
        OverlapFailed,
    ) as exc:
        _blame(results, joined, failures, exc)
        return OverlapOutcome(
            overlap_id,
            plan.roster,
            plan.reveal,
            min_cohort,
            [results[e.name] for e in entries],
            None,
            None,
            round(time.monotonic() - started, 3),
        )
    finally:
        recorder.close()
    for code in joined:
        _check_transcript(results[code], peers[code], plan, query, recorder, sizes)
        results[code].shared_records = peers[code].shared_records
    groups = tally.groups(min_cohort)
    pairwise = tally.pairwise(min_cohort)
    return OverlapOutcome(
        overlap_id,
        plan.roster,
        plan.reveal,
        min_cohort,
        [results[e.name] for e in entries],
        groups,
        pairwise,
        round(time.monotonic() - started, 3),
    )


def _joined(
    entry: NodeEntry, response: overlap_pb2.OverlapJoinResponse, trust: NodeTrust
) -> OverlapNodeResult:
    certificate = trust.check(entry, bytes(response.certificate_pem))
    if response.jurisdiction != entry.name:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{entry.address} answers as {response.jurisdiction!r}, not as node {entry.name}",
        )
    return OverlapNodeResult(
        node=entry.name,
        status=NodeStatus.OK,
        disclosure=Level.OVERLAP.label,
        set_size=int(response.set_size),
        reveal_to_owner=bool(response.reveal_to_owner),
        min_cohort=max(1, int(response.min_cohort)),
        policy_version=response.policy_version,
        policy_sha256=policy_digest(entry.name, bytes(response.policy_sha256)),
        identifier_kind=response.identifier_kind,
        certificate_pem=certificate,
        join_signature=bytes(response.join_signature),
    )


def _blame(
    results: dict[str, OverlapNodeResult],
    joined: list[str],
    failures: list[_Failure],
    exc: BaseException,
) -> None:
    """Mark the node that broke the overlap, and every other participant as stopped by it."""
    genuine = [
        f
        for f in failures
        if _ITERATING not in (f.error.details() or "")
        and f.error.code() != grpc.StatusCode.CANCELLED
    ]
    culprit: str | None = None
    if genuine:
        first = min(genuine, key=lambda f: f.at)
        culprit = first.node
        entry = NodeEntry(first.node, "")
        failed = rpc_failure(entry, first.error)
        results[culprit].status = failed.status
        results[culprit].reason = f"overlap stopped at {culprit}: {failed.reason}"
    for code in joined:
        if code == culprit:
            continue
        results[code].status = NodeStatus.ERROR
        results[code].reason = (
            f"the overlap stopped because {culprit} failed"
            if culprit
            else f"the overlap stopped: {exc}"
        )


def _check_transcript(
    result: OverlapNodeResult,
    peer: ConnectionOverlapPeer,
    plan: overlap_protocol.OverlapPlan,
    query: OverlapQuery,
    recorder: RelayRecorder,
    sizes: dict[str, int],
) -> None:
    response = peer.close_response
    if response is None or not response.signature:
        result.status = NodeStatus.ERROR
        result.reason = f"{result.node} did not sign its overlap transcript at close"
        return
    transcript = recorder.transcript(
        plan, result.node, query, result, sizes, peer.nonce.hex(), peer.timestamp_ms
    )
    digest = transcript.digest()
    result.signature = {
        "algorithm": SIGNATURE_ALGORITHM,
        "transcript": dataclasses.asdict(transcript),
        "transcript_sha256": digest.hex(),
        "value": response.signature.hex(),
        "certificate_pem": result.certificate_pem.decode(),
    }
    if response.transcript_sha256 != digest or not verify_signature(
        result.certificate_pem, digest, response.signature
    ):
        result.status = NodeStatus.ERROR
        result.reason = (
            f"{result.node}'s overlap transcript does not match what the coordinator "
            "relayed, or its signature does not verify; the overlap is not trusted"
        )
    if result.status == NodeStatus.OK:
        try:
            result.audit_head = HeadWitness().check(result.node, response, result.certificate_pem)
        except NodeFailure as exc:
            result.status, result.reason = NodeStatus.ERROR, str(exc)

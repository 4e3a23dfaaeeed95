"""The overlap query from the investigator's side: join, plan, relay over gRPC, tally, report.

Flow (docs/overlap.md): every selected node is asked to join (its policy decides;
a refusal is that node's `denied` result and the overlap runs among the rest, if
at least two joined) → the plan fixes the roster, whether owners learn their
shared items (only when every joined grant allows it) and each origin's size →
`fedtrace.overlap_protocol.run_overlap` streams every set around its ring, all origins at
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from coordinator.federation import Federation, NodeEntry
from coordinator.match import Progress, rpc_failure
from coordinator.transport import node_channel, read_federation_file
from fedtrace import group
from fedtrace import overlap as overlap_protocol
from fedtrace.errors import FedtraceError
from fedtrace.overlap_transcript import OverlapHop, OverlapTranscript
from fedtrace.pki import (
    ROLE_NODE,
    InvalidCertificate,
    read_key_pem,
    verify_issued_by,
    verify_signature,
)
from fedtrace.transcript import SIGNATURE_ALGORITHM
from fedtrace.v1 import node_pb2, overlap_pb2, overlap_pb2_grpc

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
    status: str  # ok | denied | unavailable | error
    reason: str = ""
    disclosure: str = ""
    set_size: int | None = None
    reveal_to_owner: bool | None = None
    min_cohort: int | None = None
    policy_version: str = ""
    identifier_kind: str = ""
    shared_records: int | None = None  # own records the node stored (reveal overlap)
    signature: dict[str, Any] | None = None
    seconds: float = 0.0
    certificate_pem: bytes = field(default=b"", repr=False)


@dataclass
class OverlapReport:
    overlap_id: str
    roster: tuple[str, ...]
    reveal: bool
    min_cohort: int
    results: list[OverlapNodeResult]
    groups: dict[frozenset[str], overlap_protocol.GroupCount] | None
    pairwise: dict[tuple[str, str], overlap_protocol.GroupCount] | None
    seconds: float = 0.0


class OverlapChannels:
    """mTLS channels to nodes from the investigator's TLS material (FED.toml)."""

    def __init__(self, federation: Federation) -> None:
        self.root = read_federation_file(federation.ca, "federation CA certificate")
        self.cert = read_federation_file(federation.cert, "investigator certificate")
        self.key = read_key_pem(federation.key)

    def __call__(self, entry: NodeEntry) -> grpc.Channel:
        return node_channel(entry, self.root, self.key, self.cert)


@dataclass
class _Failure:
    node: str
    error: grpc.RpcError
    at: float


class GrpcOverlapPeer:
    """`fedtrace.overlap_protocol.OverlapPeer` over the OverlapService RPCs of one node."""

    def __init__(
        self, entry: NodeEntry, channel: grpc.Channel, deadline: float, failures: list[_Failure]
    ) -> None:
        self.entry = entry
        self._channel = channel
        self._stub = overlap_pb2_grpc.OverlapServiceStub(channel)
        self._deadline = deadline
        self._failures = failures
        self._calls: list[Any] = []
        self._lock = threading.Lock()
        self.plan: overlap_protocol.OverlapPlan | None = None
        self.sizes: dict[str, int] = {}
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

    def _stream(self, call: Any) -> Iterator[bytes]:
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
        reply: overlap_pb2.OverlapJoinResponse = self._stub.Join(
            overlap_pb2.OverlapJoinRequest(
                context=context, dataset=query.dataset, overlap_id=overlap_id
            ),
            timeout=self._timeout(),
        )
        return reply

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
        )
        try:
            response = self._stub.Open(request, timeout=self._timeout())
        except grpc.RpcError as exc:
            self._record(exc)
            raise
        return int(response.set_size)

    def initial(self, overlap_id: str) -> Iterator[bytes]:
        call = self._stub.Initial(
            overlap_pb2.OverlapRef(overlap_id=overlap_id), timeout=self._timeout()
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
        )

        def requests() -> Iterator[overlap_pb2.OverlapRelayRequest]:
            yield overlap_pb2.OverlapRelayRequest(header=header)
            for batch in incoming:
                yield overlap_pb2.OverlapRelayRequest(points=node_pb2.PointBatch(points=batch))

        return self._stream(self._stub.Relay(requests(), timeout=self._timeout()))

    def deliver_shared(self, overlap_id: str, notices: Iterable[bytes]) -> None:
        def requests() -> Iterator[overlap_pb2.OverlapSharedRequest]:
            yield overlap_pb2.OverlapSharedRequest(
                header=overlap_pb2.OverlapRef(overlap_id=overlap_id)
            )
            for notice in notices:
                yield overlap_pb2.OverlapSharedRequest(notices=notice)

        try:
            response = self._stub.Shared(requests(), timeout=self._timeout())
        except grpc.RpcError as exc:
            self._record(exc)
            raise
        self.shared_records = int(response.shared_records)

    def close(self, overlap_id: str) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            call.cancel()  # a failed overlap stops every stream still running
        try:
            self.close_response = self._stub.Close(
                overlap_pb2.OverlapRef(overlap_id=overlap_id),
                timeout=max(1.0, min(10.0, self._deadline - time.monotonic())),
            )
        except grpc.RpcError:
            self.close_response = None  # the node drops the overlap at its own deadline

    def shutdown(self) -> None:
        self._channel.close()


class RelayRecorder:
    """The coordinator's own record of the overlap: digests for transcripts, optional log file."""

    def __init__(self, log_path: str | None = None) -> None:
        self._digests: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115

    def __call__(self, message: overlap_protocol.Relayed) -> None:
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
            disclosure="overlap",
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
        )


def run_overlap(
    federation: Federation,
    query: OverlapQuery,
    channels: Callable[[NodeEntry], grpc.Channel],
    ca_pem: bytes,
    *,
    nodes: Sequence[NodeEntry] | None = None,
    progress: Progress | None = None,
    observe: Callable[[overlap_protocol.Relayed], None] | None = None,
) -> OverlapReport:
    """Run one overlap query over the selected nodes; results in roster order."""
    entries = list(nodes or federation.nodes)
    report = progress or (lambda node, what: None)
    started = time.monotonic()
    deadline = started + federation.deadline_seconds
    overlap_id = secrets.token_hex(16)
    failures: list[_Failure] = []
    peers = {e.name: GrpcOverlapPeer(e, channels(e), deadline, failures) for e in entries}
    results = {e.name: OverlapNodeResult(e.name, "error", "did not take part") for e in entries}
    try:

        def join(entry: NodeEntry) -> OverlapNodeResult:
            report(entry.name, "asking to join the overlap")
            t0 = time.monotonic()
            try:
                response = peers[entry.name].join(overlap_id, query)
                result = _joined(entry, response, ca_pem)
            except grpc.RpcError as exc:
                failed = rpc_failure(entry, exc)
                result = OverlapNodeResult(entry.name, failed.status, failed.reason)
            except _NodeProblem as exc:
                result = OverlapNodeResult(entry.name, "error", str(exc))
            result.seconds = round(time.monotonic() - t0, 3)
            report(entry.name, "joined" if result.status == "ok" else result.status)
            return result

        with ThreadPoolExecutor(max_workers=max(1, len(entries))) as pool:
            for result in pool.map(join, entries):
                results[result.node] = result
        joined = [e.name for e in entries if results[e.name].status == "ok"]
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
                results[code].status = "error"
                results[
                    code
                ].reason = f"the overlap needs at least 2 participants; only {len(joined)} joined"
            return OverlapReport(
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
        for code in joined:
            peers[code].sizes = sizes
        recorder = RelayRecorder(os.environ.get(RELAY_LOG_ENV) or None)

        def observed(message: overlap_protocol.Relayed) -> None:
            recorder(message)
            if observe is not None:
                observe(message)

        report(
            "*",
            f"overlap of {', '.join(joined)}: relaying {sum(sizes.values()):,} items "
            f"around the ring",
        )
        try:
            tally = overlap_protocol.run_overlap(
                plan, {c: peers[c] for c in joined}, observe=observed, concurrent=True
            )
        except (
            grpc.RpcError,
            overlap_protocol.OverlapError,
            group.InvalidPoint,
            OverlapFailed,
        ) as exc:
            _blame(results, joined, failures, exc)
            return OverlapReport(
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
        return OverlapReport(
            overlap_id,
            plan.roster,
            plan.reveal,
            min_cohort,
            [results[e.name] for e in entries],
            groups,
            pairwise,
            round(time.monotonic() - started, 3),
        )
    finally:
        for peer in peers.values():
            peer.shutdown()


class _NodeProblem(Exception):
    pass


def _joined(
    entry: NodeEntry, response: overlap_pb2.OverlapJoinResponse, ca_pem: bytes
) -> OverlapNodeResult:
    try:
        identity = verify_issued_by(response.certificate_pem, ca_pem)
    except InvalidCertificate as exc:
        raise _NodeProblem(f"{entry.name} presents an invalid signing certificate: {exc}") from None
    if (
        identity.jurisdiction != entry.name
        or identity.role != ROLE_NODE
        or response.jurisdiction != entry.name
    ):
        raise _NodeProblem(
            f"{entry.address} signs as {identity.describe()}, not as node {entry.name}"
        )
    return OverlapNodeResult(
        node=entry.name,
        status="ok",
        disclosure="overlap",
        set_size=int(response.set_size),
        reveal_to_owner=bool(response.reveal_to_owner),
        min_cohort=max(1, int(response.min_cohort)),
        policy_version=response.policy_version,
        identifier_kind=response.identifier_kind,
        certificate_pem=bytes(response.certificate_pem),
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
        results[code].status = "error"
        results[code].reason = (
            f"the overlap stopped because {culprit} failed"
            if culprit
            else f"the overlap stopped: {exc}"
        )


def _check_transcript(
    result: OverlapNodeResult,
    peer: GrpcOverlapPeer,
    plan: overlap_protocol.OverlapPlan,
    query: OverlapQuery,
    recorder: RelayRecorder,
    sizes: dict[str, int],
) -> None:
    response = peer.close_response
    if response is None or not response.signature:
        result.status = "error"
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
        result.status = "error"
        result.reason = (
            f"{result.node}'s overlap transcript does not match what the coordinator "
            "relayed, or its signature does not verify; the overlap is not trusted"
        )

"""OverlapService: decode, call `node.overlap`, encode; refusals become status codes.

Admission happens once, at join, in `node.session.query_session` through the
node's one gate: policy (an `overlap` grant for the investigator and dataset),
budgets, audit. The join answers the set size and the node's signed join,
so it is settled as answered before the response leaves. Open adds every
foreign point the node will relay to that admission's item charge
(`Gate.charge_more`), once every member's join verifies. Request streams
(Relay, Shared) must send their header within ``first_message_seconds``. Every later step of the
overlap (open, initial set, each relay hop, notices, close or expiry) is appended
to the audit trail as a `overlap` entry with counts and digests, never a point or
an identifier.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from fedtrace.overlap_commitment import Commitment, JoinProof
from fedtrace.pki import Identity, sign
from fedtrace.revocation import RevocationWatch
from fedtrace.v1 import node_pb2, overlap_pb2, overlap_pb2_grpc
from fedtrace.wire import Level
from node.audit import AuditError
from node.gate import QueryContextInfo, QueryRefused
from node.overlap import (
    NodeOverlap,
    OverlapRegistry,
    initial_batches,
    join_overlap,
    learn_shared,
    open_overlap,
    relay_batches,
    step_entry,
)
from node.overlap_members import MemberTrust
from node.policy import QueryKind
from node.session import abort, caller, first_within, query_session
from node.shared import store_shared
from node.state import NodeState

log = logging.getLogger(__name__)

SERVICE_NAME = overlap_pb2.DESCRIPTOR.services_by_name["OverlapService"].full_name
_OVERLAP_ID = re.compile(r"[0-9a-f]{16,64}")
T = TypeVar("T")


class OverlapServicer(overlap_pb2_grpc.OverlapServiceServicer):
    """The node's side of the overlap query over gRPC (docs/overlap.md)."""

    def __init__(
        self,
        state: NodeState,
        registry: OverlapRegistry | None = None,
        *,
        workers: int | None = None,
    ) -> None:
        self._state = state
        self._workers = workers
        self.registry = registry or OverlapRegistry(on_expire=self._expired)
        self._revocations: RevocationWatch | None = None
        self._stop = threading.Event()
        threading.Thread(
            target=self.registry.sweep, args=(self._stop,), daemon=True, name="overlap-sweeper"
        ).start()

    # --- helpers -------------------------------------------------------------------------

    @property
    def _jurisdiction(self) -> str:
        return self._state.config.jurisdiction

    def _audit(self, overlap: NodeOverlap, outcome: str, **fields: Any) -> None:
        """One `overlap` entry per step; raises QueryRefused when the trail cannot be written."""
        entry = step_entry(overlap, outcome, **fields)
        try:
            self._state.gate.audit.append("overlap", entry)
        except AuditError as exc:
            log.error("audit trail not writable, overlap step refused: %s", exc)
            raise QueryRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._jurisdiction} cannot write its audit trail; nothing more is answered",
            ) from None

    def _expired(self, overlap: NodeOverlap) -> None:
        try:
            self._audit(overlap, "expired", reason="deadline passed before close; key dropped")
        except QueryRefused:
            pass

    def _overlap(self, overlap_id: str, context: grpc.ServicerContext) -> NodeOverlap:
        return self.registry.get(overlap_id, caller(context))

    def _trust(self) -> MemberTrust:
        """The federation CA and revocation list that members' joins are checked against."""
        tls = self._state.config.tls
        try:
            ca_pem = tls.ca.read_bytes()
            if self._revocations is None:
                self._revocations = RevocationWatch(tls.revoked, ca_pem=ca_pem)
        except Exception as exc:  # noqa: BLE001 - without them no join can be trusted
            log.error("overlap: cannot read the CA or revocation list: %s", exc)
            raise QueryRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._jurisdiction} cannot check members' joins right now",
            ) from None
        revocations = self._revocations

        def is_revoked(identity: Identity) -> bool:
            return revocations.current().find(identity) is not None

        return MemberTrust(ca_pem, is_revoked)

    def _stream(self, requests: Iterator[T]) -> Iterator[T]:
        """The request stream, its header bounded by ``first_message_seconds``."""
        return first_within(requests, self._state.config.limits.first_message_seconds)

    def _fail_before(self, context: grpc.ServicerContext, step: str, exc: QueryRefused) -> NoReturn:
        """A refusal before the overlap is known (no header, unknown id): audited by the gate."""
        if not exc.audited:
            self._state.gate.refuse(caller(context), QueryKind.OVERLAP, exc, asked=Level.OVERLAP)
        self._fail(None, context, step, exc)

    def _fail(
        self,
        overlap: NodeOverlap | None,
        context: grpc.ServicerContext,
        step: str,
        exc: QueryRefused,
    ) -> NoReturn:
        log.info("overlap step refused: step=%s code=%s reason=%s", step, exc.code.name, exc)
        if overlap is not None:
            try:
                self._audit(overlap, "refused", step=step, code=exc.code.name, reason=str(exc))
            except QueryRefused:
                pass
        abort(context, exc)

    # --- RPCs ----------------------------------------------------------------------------

    def Join(
        self, request: overlap_pb2.OverlapJoinRequest, context: grpc.ServicerContext
    ) -> overlap_pb2.OverlapJoinResponse:
        state = self._state
        info = QueryContextInfo.from_proto(request.context)
        with query_session(
            state, context, QueryKind.OVERLAP, asked=Level.OVERLAP, slot=False, label="overlap"
        ) as session:
            identity = session.identity
            session.describe(request.dataset, info, 0)
            if not _OVERLAP_ID.fullmatch(request.overlap_id):
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a overlap id is 16 to 64 lower-case hex digits",
                )
            self.registry.reserve(self._jurisdiction, request.overlap_id)
            admission = session.admit(request.dataset, info, 0, Level.OVERLAP)
            dataset = state.config.dataset(request.dataset)
            assert dataset is not None  # the gate refused unknown datasets
            overlap = join_overlap(
                self.registry,
                state.database,
                dataset,
                request.overlap_id,
                identity,
                info,
                admission,
            )
            grant = admission.grant
            join_signature = JoinProof.signed(
                state.key_pem,
                state.certificate_pem,
                overlap_id=overlap.overlap_id,
                jurisdiction=self._jurisdiction,
                set_size=overlap.set_size,
                investigator_fingerprint=identity.fingerprint_sha256,
            ).signature
            try:
                # The set size leaves with the answer: settled (audited) before it does.
                session.answered(
                    details={
                        "overlap_id": overlap.overlap_id,
                        "step": "join",
                        "set_size": overlap.set_size,
                        "reveal_to_owner": grant.reveal_to_owner,
                        "min_cohort": grant.min_cohort,
                    },
                )
            except QueryRefused:
                self.registry.remove(overlap.overlap_id)
                raise
        log.info(
            "overlap joined: partner=%s dataset=%s overlap=%s items=%d",
            identity.jurisdiction,
            request.dataset,
            overlap.overlap_id,
            overlap.set_size,
        )
        return overlap_pb2.OverlapJoinResponse(
            jurisdiction=self._jurisdiction,
            set_size=overlap.set_size,
            reveal_to_owner=grant.reveal_to_owner,
            min_cohort=grant.min_cohort,
            policy_version=admission.policy.version,
            policy_sha256=bytes.fromhex(overlap.policy_sha256),
            identifier_kind=dataset.kind,
            certificate_pem=state.certificate_pem,
            max_relay_points=state.config.limits.max_items_per_request,
            join_signature=join_signature,
        )

    def Open(
        self, request: overlap_pb2.OverlapOpenRequest, context: grpc.ServicerContext
    ) -> overlap_pb2.OverlapOpenResponse:
        overlap = None
        try:
            overlap = self._overlap(request.overlap_id, context)
            sizes = {entry.origin: int(entry.size) for entry in request.sizes}
            if len(sizes) != len(request.sizes):
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the plan announces a participant's size twice",
                )
            admission = overlap.admission
            assert admission is not None  # set at join

            def charge(items: int) -> None:
                self._state.gate.charge_more(admission, items)

            commitment = open_overlap(
                overlap,
                self._jurisdiction,
                list(request.roster),
                request.reveal,
                sizes,
                joins=[
                    JoinProof(
                        j.jurisdiction, int(j.set_size), bytes(j.certificate_pem), j.signature
                    )
                    for j in request.joins
                ],
                trust=self._trust(),
                charge=charge,
                key_pem=self._state.key_pem,
                max_relay_points=self._state.config.limits.max_items_per_request,
                workers=self._workers,
            )
            self._audit(
                overlap,
                "opened",
                roster=list(request.roster),
                reveal=request.reveal,
                sizes=sizes,
                item_count=overlap.set_size,
                items_charged=admission.item_count,
                initial_sha256=commitment.initial_sha256.hex(),
            )
        except QueryRefused as exc:
            self._fail(overlap, context, "open", exc)
        return overlap_pb2.OverlapOpenResponse(
            set_size=overlap.set_size,
            commitment=overlap_pb2.OverlapCommitment(
                origin=commitment.origin,
                set_size=commitment.set_size,
                initial_sha256=commitment.initial_sha256,
                signature=commitment.signature,
            ),
        )

    def Initial(
        self, request: overlap_pb2.OverlapRef, context: grpc.ServicerContext
    ) -> Iterator[node_pb2.PointBatch]:
        overlap = None
        try:
            overlap = self._overlap(request.overlap_id, context)
            self._audit(overlap, "initial", item_count=overlap.set_size)
            for batch in initial_batches(overlap):
                yield node_pb2.PointBatch(points=batch)
        except QueryRefused as exc:
            self._fail(overlap, context, "initial", exc)

    def Relay(
        self, requests: Iterator[overlap_pb2.OverlapRelayRequest], context: grpc.ServicerContext
    ) -> Iterator[node_pb2.PointBatch]:
        overlap = None
        try:
            requests = self._stream(requests)
            first = next(requests, None)
            if first is None or first.WhichOneof("part") != "header":
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "an overlap Relay stream must start with its header",
                )
            header = first.header
            overlap = self._overlap(header.overlap_id, context)
        except QueryRefused as exc:
            self._fail_before(context, "relay", exc)
        try:
            batches = relay_batches(
                overlap,
                self._jurisdiction,
                header.origin,
                header.hop,
                header.expected_points,
                _points(requests),
                _commitment(header),
            )
            sent = 0
            for batch in batches:
                if sent == 0:
                    # Audited before the first byte of the hop's answer leaves.
                    self._audit(
                        overlap,
                        "relayed",
                        origin=header.origin,
                        hop=header.hop,
                        item_count=header.expected_points,
                    )
                sent += len(batch)
                yield node_pb2.PointBatch(points=batch)
            if sent == 0:
                self._audit(
                    overlap,
                    "relayed",
                    origin=header.origin,
                    hop=header.hop,
                    item_count=header.expected_points,
                )
        except QueryRefused as exc:
            self._fail(overlap, context, "relay", exc)

    def Shared(
        self, requests: Iterator[overlap_pb2.OverlapSharedRequest], context: grpc.ServicerContext
    ) -> overlap_pb2.OverlapSharedResponse:
        overlap = None
        try:
            requests = self._stream(requests)
            first = next(requests, None)
            if first is None or first.WhichOneof("part") != "header":
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "an overlap Shared stream must start with its header",
                )
            overlap = self._overlap(first.header.overlap_id, context)
        except QueryRefused as exc:
            self._fail_before(context, "shared", exc)
        try:
            shared = learn_shared(overlap, _notices(requests))
            records = [
                (record, sorted(item.partners))
                for item in shared
                for record in overlap.items.describe(item.item)
            ]
            stored = store_shared(
                self._state.database,
                case_ref=overlap.context.case_ref,
                overlap_id=overlap.overlap_id,
                dataset=overlap.dataset,
                investigator=overlap.identity.jurisdiction,
                records=records,
            )
            self._audit(overlap, "shared-stored", item_count=len(shared), records=stored)
        except QueryRefused as exc:
            self._fail(overlap, context, "shared", exc)
        return overlap_pb2.OverlapSharedResponse(shared_records=stored)

    def Close(
        self, request: overlap_pb2.OverlapRef, context: grpc.ServicerContext
    ) -> overlap_pb2.OverlapCloseResponse:
        overlap = None
        try:
            overlap = self._overlap(request.overlap_id, context)
            with overlap.lock:
                transcript = overlap.transcript(self._jurisdiction) if overlap.plan else None
            self.registry.remove(overlap.overlap_id)
            if transcript is None:
                self._audit(overlap, "closed", reason="closed before it opened")
                return overlap_pb2.OverlapCloseResponse(audit_head=self._audit_head())
            digest = transcript.digest()
            self._audit(
                overlap, "closed", transcript_sha256=digest.hex(), hops=len(transcript.hops)
            )
        except QueryRefused as exc:
            self._fail(overlap, context, "close", exc)
        return overlap_pb2.OverlapCloseResponse(
            transcript_sha256=digest,
            signature=sign(self._state.key_pem, digest),
            audit_head=self._audit_head(),
        )

    def _audit_head(self) -> node_pb2.AuditHead:
        """The trail's head after the close entry, signed."""
        return self._state.gate.audit.signed_head(self._jurisdiction).to_proto()

    def stop(self) -> None:
        self._stop.set()
        self.registry.close_all()


def _commitment(header: overlap_pb2.OverlapRelayHeader) -> Commitment | None:
    if not header.HasField("commitment"):
        return None
    c = header.commitment
    return Commitment(c.origin, int(c.set_size), bytes(c.initial_sha256), bytes(c.signature))


def _points(requests: Iterator[overlap_pb2.OverlapRelayRequest]) -> Iterator[bytes]:
    for message in requests:
        if message.WhichOneof("part") != "points":
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "after its header an overlap Relay stream carries only point batches",
            )
        yield message.points.points


def _notices(requests: Iterator[overlap_pb2.OverlapSharedRequest]) -> Iterator[bytes]:
    for message in requests:
        if message.WhichOneof("part") != "notices":
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "after its header an overlap Shared stream carries only notices",
            )
        yield message.notices

"""The OverlapService servicer: decode, call `node.overlap`, encode; refusals become status codes.

Admission happens once, at join, through the node's one gate
(`Gate.admit(identity, QueryKind.OVERLAP, …)`): policy (an `overlap` grant for
the investigator and dataset), budgets, audit. The join answers the set size,
so it is settled as answered before the response leaves. Every later step of the
overlap (open, initial set, each relay hop, notices, close or expiry) is appended
to the audit trail as a `overlap` entry with counts and digests, never a point or
an identifier.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from fedtrace.pki import Identity, sign
from fedtrace.v1 import node_pb2, overlap_pb2, overlap_pb2_grpc
from node.audit import AuditError
from node.auth import peer_identity
from node.epoch import DatasetError
from node.gate import Admission, Outcome, QueryContextInfo, QueryRefused
from node.overlap import (
    NodeOverlap,
    OverlapRegistry,
    initial_batches,
    learn_shared,
    open_overlap,
    overlap_items,
    relay_batches,
)
from node.policy import Level, QueryKind
from node.service import NodeState
from node.shared import store_shared

log = logging.getLogger(__name__)

SERVICE_NAME = overlap_pb2.DESCRIPTOR.services_by_name["OverlapService"].full_name
_OVERLAP_ID = re.compile(r"[0-9a-f]{16,64}")


def _abort(context: grpc.ServicerContext, refusal: QueryRefused) -> None:
    context.abort(refusal.code, str(refusal))


class OverlapServicer(overlap_pb2_grpc.OverlapServiceServicer):  # type: ignore[misc,unused-ignore]
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
        entry = {
            "peer": {
                "jurisdiction": overlap.identity.jurisdiction,
                "role": overlap.identity.role,
                "subject": overlap.identity.subject,
                "serial": overlap.identity.serial,
                "fingerprint_sha256": overlap.identity.fingerprint_sha256,
            },
            "case_ref": overlap.context.case_ref,
            "legal_basis": overlap.context.legal_basis,
            "nonce": overlap.context.nonce,
            "kind": QueryKind.OVERLAP.value,
            "dataset": overlap.dataset,
            "overlap_id": overlap.overlap_id,
            "disclosure": Level.OVERLAP.label,
            "policy_version": overlap.policy_version,
            "outcome": outcome,
            **fields,
        }
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
        identity = peer_identity(context)
        assert identity is not None  # IdentityInterceptor guarantees it
        return self.registry.get(overlap_id, identity)

    def _fail(
        self,
        overlap: NodeOverlap | None,
        context: grpc.ServicerContext,
        step: str,
        exc: QueryRefused,
    ) -> None:
        log.info("overlap step refused: step=%s code=%s reason=%s", step, exc.code.name, exc)
        if overlap is not None:
            try:
                self._audit(overlap, "refused", step=step, code=exc.code.name, reason=str(exc))
            except QueryRefused:
                pass
        _abort(context, exc)

    # --- RPCs ----------------------------------------------------------------------------

    def Join(self, request: overlap_pb2.OverlapJoinRequest, context: grpc.ServicerContext) -> Any:
        identity = peer_identity(context)
        assert identity is not None
        gate = self._state.gate
        info = QueryContextInfo.from_proto(request.context)
        try:
            if not _OVERLAP_ID.fullmatch(request.overlap_id):
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a overlap id is 16 to 64 lower-case hex digits",
                )
            self.registry.reserve(self._jurisdiction, request.overlap_id)
        except QueryRefused as exc:
            gate.refuse(
                identity,
                QueryKind.OVERLAP,
                exc,
                dataset=request.dataset,
                context=info,
                asked=Level.OVERLAP,
            )
            _abort(context, exc)
            return None
        try:
            admission = gate.admit(
                identity, QueryKind.OVERLAP, request.dataset, info, 0, Level.OVERLAP
            )
        except QueryRefused as exc:
            log.info(
                "overlap refused: partner=%s code=%s reason=%s",
                identity.jurisdiction,
                exc.code.name,
                exc,
            )
            _abort(context, exc)
            return None
        try:
            return self._join(identity, request, info, admission)
        except QueryRefused as exc:
            gate.settle(admission, Outcome.REFUSED, reason=str(exc), code=exc.code)
            _abort(context, exc)
            return None
        except BaseException:
            gate.settle(
                admission, Outcome.FAILED, reason="internal error", code=grpc.StatusCode.INTERNAL
            )
            raise

    def _join(
        self,
        identity: Identity,
        request: overlap_pb2.OverlapJoinRequest,
        info: QueryContextInfo,
        admission: Admission,
    ) -> overlap_pb2.OverlapJoinResponse:
        dataset = self._state.config.dataset(request.dataset)
        assert dataset is not None  # the gate refused unknown datasets
        try:
            with self._state.database.session() as con:
                items = overlap_items(con, dataset)
        except DatasetError as exc:
            raise QueryRefused(grpc.StatusCode.INTERNAL, str(exc)) from None
        grant = admission.grant
        overlap = NodeOverlap(
            overlap_id=request.overlap_id,
            identity=identity,
            dataset=request.dataset,
            context=info,
            policy_version=admission.policy.version,
            reveal_to_owner=grant.reveal_to_owner,
            min_cohort=grant.min_cohort,
            items=items,
            deadline=self.registry.deadline(),
        )
        self.registry.add(overlap)
        try:
            # The set size leaves with the answer: settled (audited) before it does.
            self._state.gate.settle(
                admission,
                Outcome.ANSWERED,
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
            "overlap joined: partner=%s case=%s dataset=%s overlap=%s items=%d",
            identity.jurisdiction,
            info.case_ref,
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
            identifier_kind=dataset.kind,
            certificate_pem=self._state.certificate_pem,
            max_relay_points=self._state.config.limits.max_items_per_request,
        )

    def Open(self, request: overlap_pb2.OverlapOpenRequest, context: grpc.ServicerContext) -> Any:
        overlap = None
        try:
            overlap = self._overlap(request.overlap_id, context)
            sizes = {entry.origin: int(entry.size) for entry in request.sizes}
            if len(sizes) != len(request.sizes):
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the plan announces a participant's size twice",
                )
            open_overlap(
                overlap,
                self._jurisdiction,
                list(request.roster),
                request.reveal,
                sizes,
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
            )
        except QueryRefused as exc:
            self._fail(overlap, context, "open", exc)
            return None
        return overlap_pb2.OverlapOpenResponse(set_size=overlap.set_size)

    def Initial(
        self, request: overlap_pb2.OverlapRef, context: grpc.ServicerContext
    ) -> Iterable[node_pb2.PointBatch]:
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
    ) -> Iterable[node_pb2.PointBatch]:
        overlap = None
        try:
            first = next(requests, None)
            if first is None or first.WhichOneof("part") != "header":
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "an overlap Relay stream must start with its header",
                )
            header = first.header
            overlap = self._overlap(header.overlap_id, context)
            batches = relay_batches(
                overlap,
                self._jurisdiction,
                header.origin,
                header.hop,
                header.expected_points,
                _points(requests),
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
    ) -> Any:
        overlap = None
        try:
            first = next(requests, None)
            if first is None or first.WhichOneof("part") != "header":
                raise QueryRefused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "an overlap Shared stream must start with its header",
                )
            overlap = self._overlap(first.header.overlap_id, context)
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
            return None
        return overlap_pb2.OverlapSharedResponse(shared_records=stored)

    def Close(self, request: overlap_pb2.OverlapRef, context: grpc.ServicerContext) -> Any:
        overlap = None
        try:
            overlap = self._overlap(request.overlap_id, context)
            with overlap.lock:
                transcript = overlap.transcript(self._jurisdiction) if overlap.plan else None
            self.registry.remove(overlap.overlap_id)
            if transcript is None:
                self._audit(overlap, "closed", reason="closed before it opened")
                return overlap_pb2.OverlapCloseResponse()
            digest = transcript.digest()
            self._audit(
                overlap, "closed", transcript_sha256=digest.hex(), hops=len(transcript.hops)
            )
        except QueryRefused as exc:
            self._fail(overlap, context, "close", exc)
            return None
        return overlap_pb2.OverlapCloseResponse(
            transcript_sha256=digest, signature=sign(self._state.key_pem, digest)
        )

    def stop(self) -> None:
        self._stop.set()
        self.registry.close_all()


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

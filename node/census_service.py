"""The CensusService servicer: decode, call `node.census`, encode; refusals become status codes.

Admission happens once, at join, through the node's one gate
(`Gate.admit(identity, QueryKind.OVERLAP, …)`): policy (an `overlap` grant for
the investigator and dataset), budgets, audit. The join answers the set size,
so it is settled as answered before the response leaves. Every later step of the
census (open, initial set, each relay hop, notices, close or expiry) is appended
to the audit trail as a `census` entry with counts and digests, never a point or
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
from node.census import (
    CensusRegistry,
    NodeCensus,
    census_items,
    initial_batches,
    learn_shared,
    open_census,
    relay_batches,
)
from node.epoch import DatasetError
from node.gate import Admission, Outcome, QueryContextInfo, QueryRefused
from node.policy import Level, QueryKind
from node.service import NodeState
from node.shared import store_shared

log = logging.getLogger(__name__)

SERVICE_NAME = overlap_pb2.DESCRIPTOR.services_by_name["CensusService"].full_name
_CENSUS_ID = re.compile(r"[0-9a-f]{16,64}")


def _abort(context: grpc.ServicerContext, refusal: QueryRefused) -> None:
    context.abort(refusal.code, str(refusal))


class CensusServicer(overlap_pb2_grpc.CensusServiceServicer):  # type: ignore[misc,unused-ignore]
    """The node's side of the overlap census over gRPC (docs/overlap.md)."""

    def __init__(self, state: NodeState, registry: CensusRegistry | None = None,
                 *, workers: int | None = None) -> None:
        self._state = state
        self._workers = workers
        self.registry = registry or CensusRegistry(on_expire=self._expired)
        self._stop = threading.Event()
        threading.Thread(target=self.registry.sweep, args=(self._stop,), daemon=True,
                         name="census-sweeper").start()

    # --- helpers -------------------------------------------------------------------------

    @property
    def _jurisdiction(self) -> str:
        return self._state.config.jurisdiction

    def _audit(self, census: NodeCensus, outcome: str, **fields: Any) -> None:
        """One `census` entry per step; raises QueryRefused when the trail cannot be written."""
        entry = {
            "peer": {
                "jurisdiction": census.identity.jurisdiction,
                "role": census.identity.role,
                "subject": census.identity.subject,
                "serial": census.identity.serial,
                "fingerprint_sha256": census.identity.fingerprint_sha256,
            },
            "case_ref": census.context.case_ref,
            "legal_basis": census.context.legal_basis,
            "nonce": census.context.nonce,
            "kind": QueryKind.OVERLAP.value,
            "dataset": census.dataset,
            "census_id": census.census_id,
            "disclosure": Level.OVERLAP.label,
            "policy_version": census.policy_version,
            "outcome": outcome,
            **fields,
        }
        try:
            self._state.gate.audit.append("census", entry)
        except AuditError as exc:
            log.error("audit trail not writable, census step refused: %s", exc)
            raise QueryRefused(grpc.StatusCode.UNAVAILABLE,
                               f"{self._jurisdiction} cannot write its audit trail; "
                               "nothing more is answered") from None

    def _expired(self, census: NodeCensus) -> None:
        try:
            self._audit(census, "expired", reason="deadline passed before close; key dropped")
        except QueryRefused:
            pass

    def _census(self, census_id: str, context: grpc.ServicerContext) -> NodeCensus:
        identity = peer_identity(context)
        assert identity is not None  # IdentityInterceptor guarantees it
        return self.registry.get(census_id, identity)

    def _fail(self, census: NodeCensus | None, context: grpc.ServicerContext, step: str,
              exc: QueryRefused) -> None:
        log.info("census step refused: step=%s code=%s reason=%s", step, exc.code.name, exc)
        if census is not None:
            try:
                self._audit(census, "refused", step=step, code=exc.code.name, reason=str(exc))
            except QueryRefused:
                pass
        _abort(context, exc)

    # --- RPCs ----------------------------------------------------------------------------

    def CensusJoin(self, request: overlap_pb2.CensusJoinRequest,
                   context: grpc.ServicerContext) -> Any:
        identity = peer_identity(context)
        assert identity is not None
        gate = self._state.gate
        info = QueryContextInfo.from_proto(request.context)
        try:
            if not _CENSUS_ID.fullmatch(request.census_id):
                raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                   "a census id is 16 to 64 lower-case hex digits")
            self.registry.reserve(self._jurisdiction, request.census_id)
        except QueryRefused as exc:
            gate.refuse(identity, QueryKind.OVERLAP, exc, dataset=request.dataset, context=info,
                        asked=Level.OVERLAP)
            _abort(context, exc)
            return None
        try:
            admission = gate.admit(identity, QueryKind.OVERLAP, request.dataset, info, 0,
                                   Level.OVERLAP)
        except QueryRefused as exc:
            log.info("census refused: partner=%s code=%s reason=%s", identity.jurisdiction,
                     exc.code.name, exc)
            _abort(context, exc)
            return None
        try:
            return self._join(identity, request, info, admission)
        except QueryRefused as exc:
            gate.settle(admission, Outcome.REFUSED, reason=str(exc), code=exc.code)
            _abort(context, exc)
            return None
        except BaseException:
            gate.settle(admission, Outcome.FAILED, reason="internal error",
                        code=grpc.StatusCode.INTERNAL)
            raise

    def _join(self, identity: Identity, request: overlap_pb2.CensusJoinRequest,
              info: QueryContextInfo, admission: Admission) -> overlap_pb2.CensusJoinResponse:
        dataset = self._state.config.dataset(request.dataset)
        assert dataset is not None  # the gate refused unknown datasets
        try:
            with self._state.database.session() as con:
                items = census_items(con, dataset)
        except DatasetError as exc:
            raise QueryRefused(grpc.StatusCode.INTERNAL, str(exc)) from None
        grant = admission.grant
        census = NodeCensus(
            census_id=request.census_id,
            identity=identity,
            dataset=request.dataset,
            context=info,
            policy_version=admission.policy.version,
            reveal_to_owner=grant.reveal_to_owner,
            min_cohort=grant.min_cohort,
            items=items,
            deadline=self.registry.deadline(),
        )
        self.registry.add(census)
        try:
            # The set size leaves with the answer: settled (audited) before it does.
            self._state.gate.settle(
                admission, Outcome.ANSWERED,
                details={"census_id": census.census_id, "step": "join",
                         "set_size": census.set_size, "reveal_to_owner": grant.reveal_to_owner,
                         "min_cohort": grant.min_cohort},
            )
        except QueryRefused:
            self.registry.remove(census.census_id)
            raise
        log.info("census joined: partner=%s case=%s dataset=%s census=%s items=%d",
                 identity.jurisdiction, info.case_ref, request.dataset, census.census_id,
                 census.set_size)
        return overlap_pb2.CensusJoinResponse(
            jurisdiction=self._jurisdiction,
            set_size=census.set_size,
            reveal_to_owner=grant.reveal_to_owner,
            min_cohort=grant.min_cohort,
            policy_version=admission.policy.version,
            identifier_kind=dataset.kind,
            certificate_pem=self._state.certificate_pem,
            max_relay_points=self._state.config.limits.max_items_per_request,
        )

    def CensusOpen(self, request: overlap_pb2.CensusOpenRequest,
                   context: grpc.ServicerContext) -> Any:
        census = None
        try:
            census = self._census(request.census_id, context)
            sizes = {entry.origin: int(entry.size) for entry in request.sizes}
            if len(sizes) != len(request.sizes):
                raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                   "the plan announces a participant's size twice")
            open_census(census, self._jurisdiction, list(request.roster), request.reveal, sizes,
                        max_relay_points=self._state.config.limits.max_items_per_request,
                        workers=self._workers)
            self._audit(census, "opened", roster=list(request.roster), reveal=request.reveal,
                        sizes=sizes, item_count=census.set_size)
        except QueryRefused as exc:
            self._fail(census, context, "open", exc)
            return None
        return overlap_pb2.CensusOpenResponse(set_size=census.set_size)

    def CensusInitial(self, request: overlap_pb2.CensusRef,
                      context: grpc.ServicerContext) -> Iterable[node_pb2.PointBatch]:
        census = None
        try:
            census = self._census(request.census_id, context)
            self._audit(census, "initial", item_count=census.set_size)
            for batch in initial_batches(census):
                yield node_pb2.PointBatch(points=batch)
        except QueryRefused as exc:
            self._fail(census, context, "initial", exc)

    def CensusRelay(self, requests: Iterator[overlap_pb2.CensusRelayRequest],
                    context: grpc.ServicerContext) -> Iterable[node_pb2.PointBatch]:
        census = None
        try:
            first = next(requests, None)
            if first is None or first.WhichOneof("part") != "header":
                raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                   "a CensusRelay stream must start with its header")
            header = first.header
            census = self._census(header.census_id, context)
            batches = relay_batches(census, self._jurisdiction, header.origin, header.hop,
                                    header.expected_points, _points(requests))
            sent = 0
            for batch in batches:
                if sent == 0:
                    # Audited before the first byte of the hop's answer leaves.
                    self._audit(census, "relayed", origin=header.origin, hop=header.hop,
                                item_count=header.expected_points)
                sent += len(batch)
                yield node_pb2.PointBatch(points=batch)
            if sent == 0:
                self._audit(census, "relayed", origin=header.origin, hop=header.hop,
                            item_count=header.expected_points)
        except QueryRefused as exc:
            self._fail(census, context, "relay", exc)

    def CensusShared(self, requests: Iterator[overlap_pb2.CensusSharedRequest],
                     context: grpc.ServicerContext) -> Any:
        census = None
        try:
            first = next(requests, None)
            if first is None or first.WhichOneof("part") != "header":
                raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                   "a CensusShared stream must start with its header")
            census = self._census(first.header.census_id, context)
            shared = learn_shared(census, _notices(requests))
            records = [(record, sorted(item.partners)) for item in shared
                       for record in census.items.describe(item.item)]
            stored = store_shared(
                self._state.database, case_ref=census.context.case_ref,
                census_id=census.census_id, dataset=census.dataset,
                investigator=census.identity.jurisdiction, records=records,
            )
            self._audit(census, "shared-stored", item_count=len(shared), records=stored)
        except QueryRefused as exc:
            self._fail(census, context, "shared", exc)
            return None
        return overlap_pb2.CensusSharedResponse(shared_records=stored)

    def CensusClose(self, request: overlap_pb2.CensusRef, context: grpc.ServicerContext) -> Any:
        census = None
        try:
            census = self._census(request.census_id, context)
            with census.lock:
                transcript = census.transcript(self._jurisdiction) if census.plan else None
            self.registry.remove(census.census_id)
            if transcript is None:
                self._audit(census, "closed", reason="closed before it opened")
                return overlap_pb2.CensusCloseResponse()
            digest = transcript.digest()
            self._audit(census, "closed", transcript_sha256=digest.hex(),
                        hops=len(transcript.hops))
        except QueryRefused as exc:
            self._fail(census, context, "close", exc)
            return None
        return overlap_pb2.CensusCloseResponse(transcript_sha256=digest,
                                               signature=sign(self._state.key_pem, digest))

    def stop(self) -> None:
        self._stop.set()
        self.registry.close_all()


def _points(requests: Iterator[overlap_pb2.CensusRelayRequest]) -> Iterator[bytes]:
    for message in requests:
        if message.WhichOneof("part") != "points":
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                               "after its header a CensusRelay stream carries only point batches")
        yield message.points.points


def _notices(requests: Iterator[overlap_pb2.CensusSharedRequest]) -> Iterator[bytes]:
    for message in requests:
        if message.WhichOneof("part") != "notices":
            raise QueryRefused(grpc.StatusCode.INVALID_ARGUMENT,
                               "after its header a CensusShared stream carries only notices")
        yield message.notices

"""NodeService: GetInfo, GetFilter and Evaluate (the match query), over `node.match`.

Flow of a match: read the header → admission through the gate (policy, budgets,
audit; `node.session`) → an additive request at a shuffled level is refused →
read and bound the points → blinded evaluation →
(shuffle for cardinality) → signed transcript → settle (charge kept, answer
audited) → stream the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from fedtrace import __version__, group
from fedtrace.v1 import node_pb2, node_pb2_grpc
from fedtrace.wire import batched
from node.filters import filter_chunks
from node.gate import QueryContextInfo, QueryRefused
from node.lookups import FILTER, admit_lookup, granted_datasets, record_lookup
from node.match import (
    MatchAnswer,
    check_blinding,
    compute_match_answer,
    read_match_header,
    read_match_points,
)
from node.openings import QueryOpening, add_monitors
from node.policy import QueryKind
from node.session import abort, caller, query_session
from node.state import NodeState

log = logging.getLogger(__name__)

SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
# The epoch a dataset the caller holds no grant for is listed under: no size, no timing.
UNDESCRIBED_EPOCH = "0" * 16


def node_info(state: NodeState, granted: set[str] | None = None) -> node_pb2.NodeInfo:
    """The node's description; only the datasets in `granted` (None: all) are described,
    the others named only (`node.lookups`)."""
    datasets = []
    for dataset in state.config.datasets:
        if granted is not None and dataset.name not in granted:
            datasets.append(
                node_pb2.DatasetInfo(
                    name=dataset.name, identifier_kind=dataset.kind, epoch_id=UNDESCRIBED_EPOCH
                )
            )
            continue
        epoch = state.epochs[dataset.name]
        datasets.append(
            node_pb2.DatasetInfo(
                name=dataset.name,
                identifier_kind=dataset.kind,
                epoch_id=epoch.epoch_id,
                size=epoch.item_count,
                aggregate_columns=dataset.aggregate_columns,
                disclosable_columns=dataset.disclosable_columns,
                group=group.GROUP_NAME,
                blinding_point=epoch.blinding_point,
                key_commitment=epoch.key_commitment,
                blinding_proof=epoch.blinding_proof(state.config.jurisdiction),
                filter_partition_bits=epoch.partition_bits,
            )
        )
    return node_pb2.NodeInfo(
        jurisdiction=state.config.jurisdiction,
        policy_version=state.policies.current().version,
        datasets=datasets,
        software_version=__version__,
        certificate_pem=state.certificate_pem,
    )


def match_messages(answer: MatchAnswer) -> Iterator[node_pb2.EvaluateResponse]:
    yield node_pb2.EvaluateResponse(summary=answer.summary)
    for batch in batched(answer.response, group.POINT_BYTES):
        yield node_pb2.EvaluateResponse(points=node_pb2.PointBatch(points=batch))
    yield node_pb2.EvaluateResponse(trailer=answer.trailer)


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    """Decode, call the domain function, encode, map refusals to status codes."""

    def __init__(self, state: NodeState) -> None:
        self._state = state

    def GetInfo(
        self, request: node_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> node_pb2.NodeInfo:
        state, identity = self._state, caller(context)
        try:
            record_lookup(state, identity, "GetInfo", "", "answered")
        except QueryRefused as refusal:
            abort(context, refusal)
        info = node_info(state, granted_datasets(state.policies.current(), identity))
        add_monitors(info, state.policies.current(), identity.jurisdiction)
        info.audit_head.CopyFrom(state.gate.audit.signed_head(state.config.jurisdiction).to_proto())
        return info

    def GetFilter(
        self, request: node_pb2.GetFilterRequest, context: grpc.ServicerContext
    ) -> Iterator[node_pb2.FilterChunk]:
        try:
            admit_lookup(self._state, caller(context), FILTER, request.dataset)
            yield from filter_chunks(self._state, request)
        except QueryRefused as refusal:
            abort(context, refusal)

    def Evaluate(
        self, requests: Iterator[node_pb2.EvaluateRequest], context: grpc.ServicerContext
    ) -> Iterator[node_pb2.EvaluateResponse]:
        state = self._state
        with query_session(state, context, QueryKind.MATCH) as session:
            requests = session.stream(requests)
            header, asked = read_match_header(state, requests)
            info = QueryContextInfo.from_proto(header.context)
            admission = session.admit(header.dataset, info, header.item_count, asked)
            check_blinding(header, admission)  # before any point is read
            sealing = QueryOpening(state, context, session.identity, "match", header, admission)
            request = read_match_points(header, requests)
            sealing.check_points(request)  # a sealed opening the grant demands binds the points
            answer = compute_match_answer(state, session.identity, request, admission)
            # Charged and audited before the first byte of the answer leaves the node.
            session.answered(
                transcript_sha256=answer.transcript.digest().hex(), details=sealing.keep() or None
            )
            answer.trailer.audit_head.CopyFrom(
                state.gate.audit.signed_head(state.config.jurisdiction).to_proto()
            )
            log.info(
                "match answered: partner=%s dataset=%s items=%d level=%s policy=%s blinding=%s",
                session.identity.jurisdiction,
                header.dataset,
                answer.summary.item_count,
                admission.level.label,
                admission.policy.version,
                answer.transcript.blinding,
            )
            yield from match_messages(answer)

"""One fan-out for every query kind: each node on its own thread, against one shared deadline.

`fan_out` runs a node exchange for each selected roster entry concurrently; a
transient failure is retried with backoff (coordinator.retry) while the deadline
lasts; a refusal, an unreachable node or an answer that does not verify becomes
that node's `NodeResult` with a `NodeStatus`, and never fails the others.
`checked_info` is the first step of most exchanges: the node's info, its signing
certificate checked against the federation CA, its name and the revocation list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from coordinator.certificates import check_node_certificate
from coordinator.federation import NodeEntry
from coordinator.progress import Progress
from coordinator.results import NodeFailure, NodeResult, rpc_failure
from coordinator.retry import with_retries
from coordinator.transport import Connections, NodeConnection
from fedtrace.revocation import RevocationList
from fedtrace.v1 import node_pb2
from fedtrace.wire import NodeStatus

T = TypeVar("T")


@dataclass(frozen=True)
class Deadline:
    """The instant (time.monotonic) by which every node must have answered."""

    at: float

    @staticmethod
    def after(seconds: float) -> Deadline:
        return Deadline(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left for the next call, or NodeFailure(unavailable) when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise NodeFailure(NodeStatus.UNAVAILABLE, "no answer within the query deadline")
        return left


@dataclass(frozen=True)
class NodeTrust:
    """What a node's signing certificate is checked against: the CA and the revocation list."""

    ca_pem: bytes
    revoked: RevocationList | None = None

    def check(self, entry: NodeEntry, certificate_pem: bytes) -> bytes:
        return check_node_certificate(entry, certificate_pem, self.ca_pem, self.revoked)


@dataclass
class NodeOutcome(Generic[T]):
    """One node's exchange: its value, or the failure that ended it; how long it took."""

    entry: NodeEntry
    value: T | None
    failure: NodeResult | None
    seconds: float

    @property
    def status(self) -> NodeStatus:
        return self.failure.status if self.failure is not None else NodeStatus.OK


def checked_info(
    entry: NodeEntry,
    connection: NodeConnection,
    deadline: Deadline,
    trust: NodeTrust,
    progress: Progress,
) -> tuple[node_pb2.NodeInfo, bytes]:
    """The node's info and its checked signing certificate."""
    progress(entry.name, "asking for node info")
    info = connection.info(deadline.remaining())
    return info, trust.check(entry, bytes(info.certificate_pem))


def dataset_info(entry: NodeEntry, info: node_pb2.NodeInfo, dataset: str) -> node_pb2.DatasetInfo:
    """The node's description of `dataset`, or NodeFailure naming the datasets it has."""
    found = next((d for d in info.datasets if d.name == dataset), None)
    if found is None:
        names = ", ".join(d.name for d in info.datasets) or "none"
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{entry.name} has no dataset {dataset!r} (it has: {names}); pick one with --dataset",
        )
    return found


def fan_out(
    entries: Sequence[NodeEntry],
    connections: Connections,
    deadline: Deadline,
    exchange: Callable[[NodeEntry, NodeConnection], T],
    progress: Progress,
    *,
    retry: bool = True,
    report_status: bool = True,
) -> list[NodeOutcome[T]]:
    """Run `exchange` with every node concurrently; outcomes in roster order."""

    def one(entry: NodeEntry) -> NodeOutcome[T]:
        started = time.monotonic()
        value: T | None = None
        failure: NodeResult | None = None
        try:
            connection = connections(entry)
            if retry:  # transient UNAVAILABLE / busy: back off, run the exchange again
                value = with_retries(lambda: exchange(entry, connection), deadline.at)
            else:
                value = exchange(entry, connection)
        except NodeFailure as exc:
            failure = NodeResult(entry.name, exc.status, str(exc))
        except grpc.RpcError as exc:
            failure = rpc_failure(entry, exc)
        outcome = NodeOutcome(entry, value, failure, round(time.monotonic() - started, 3))
        if report_status or failure is not None:
            progress(entry.name, outcome.status)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, len(entries))) as pool:
        return list(pool.map(one, entries))

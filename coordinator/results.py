"""How one node's part of a query ended: the match result, the failure, and gRPC errors mapped.

Every query kind reports per node with a `fedtrace.wire.NodeStatus`; a failure is
raised inside a node's exchange as `NodeFailure` and becomes that node's result,
never an exception for the whole query. A limit that is used up and renews later
(RESOURCE_EXHAUSTED with the `fedtrace.wire.RENEWS_AT_METADATA` trailer) is the
node's policy refusing until then: `denied`, with the renewal time in the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from coordinator.federation import NodeEntry
from fedtrace.audit_head import SignedHead
from fedtrace.wire import RENEWS_AT_METADATA, NodeStatus

# What a node's refusal message calls each limit that can be used up (node.gate).
_LIMIT_NAMES = ("rate limit", "item budget", "epsilon budget")
POLICY_SHA256_BYTES = 32


@dataclass
class NodeResult:
    """One node's answer to a match (and the shared fields of an aggregate answer)."""

    node: str
    status: NodeStatus
    reason: str = ""
    disclosure: str = ""
    match_count: int | None = None
    matched: list[str] | None = None
    policy_version: str = ""
    policy_sha256: str = ""  # hex: the node's policy file, as its signed transcript binds it
    epoch_id: str = ""
    signature: dict[str, Any] | None = None
    seconds: float = 0.0
    audit_head: SignedHead | None = None  # the node's signed audit head after this answer
    # A match answer tested `tested_items` against a filter of false-positive rate 2^-bits.
    tested_items: int | None = None
    false_positive_bits: int | None = None

    @property
    def false_positive_rate(self) -> float | None:
        """The probability that one tested item not held by the node still matches."""
        bits = self.false_positive_bits
        return None if bits is None else 2.0**-bits

    @property
    def expected_false_hits(self) -> float | None:
        """How many of this answer's hits are expected to be false: items × rate."""
        rate = self.false_positive_rate
        return None if rate is None or self.tested_items is None else self.tested_items * rate


def head_json(head: SignedHead | None) -> dict[str, Any]:
    """``{"audit_head": {...}}`` for a result's JSON, or {} when it has no head."""
    return {} if head is None else {"audit_head": head.to_dict()}


class NodeFailure(Exception):
    """A node's exchange stopped: its status (denied, unavailable, error) and the reason."""

    def __init__(self, status: NodeStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def policy_digest(node: str, digest: bytes) -> str:
    """The hex SHA-256 of the policy file a node's answer names; an error unless 32 bytes."""
    if len(digest) != POLICY_SHA256_BYTES:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{node}'s answer does not give the SHA-256 of the policy file it answered under "
            f"({len(digest)} bytes, not {POLICY_SHA256_BYTES}); is it running this version?",
        )
    return digest.hex()


def renews_at(exc: grpc.RpcError) -> str | None:
    """The renewal time a RESOURCE_EXHAUSTED refusal carries in its trailer, if any."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    trailing = getattr(exc, "trailing_metadata", lambda: None)() or ()
    for key, value in trailing:
        if key == RENEWS_AT_METADATA:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            return text[:40]
    return None


def rpc_failure(entry: NodeEntry, exc: grpc.RpcError) -> NodeResult:
    """One node's failed call as a result the investigator can act on (every query kind)."""
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return NodeResult(entry.name, NodeStatus.DENIED, details)
    renewal = renews_at(exc)
    if renewal is not None:
        limit = next((name for name in _LIMIT_NAMES if name in details), "limit")
        return NodeResult(
            entry.name,
            NodeStatus.DENIED,
            f"{limit} used up; renews at {renewal} (RESOURCE_EXHAUSTED: {details})",
        )
    if code == grpc.StatusCode.UNAVAILABLE and "Socket closed" in details:
        return NodeResult(
            entry.name,
            NodeStatus.ERROR,
            f"UNAUTHENTICATED: {entry.name} at {entry.address} closed the TLS connection; it did "
            "not accept our certificate (is it issued by the federation CA and still valid?)",
        )
    if code == grpc.StatusCode.UNAVAILABLE and "Hostname Verification" in details:
        return NodeResult(
            entry.name,
            NodeStatus.ERROR,
            f"UNAUTHENTICATED: the server at {entry.address} is not node "
            f"{entry.name} (its certificate names another jurisdiction)",
        )
    if code == grpc.StatusCode.UNAVAILABLE and "CERTIFICATE_VERIFY_FAILED" in details:
        return NodeResult(
            entry.name,
            NodeStatus.ERROR,
            f"UNAUTHENTICATED: the server at {entry.address} presents a certificate "
            "not issued by the federation CA",
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return NodeResult(
            entry.name,
            NodeStatus.UNAVAILABLE,
            f"{entry.name} at {entry.address} did not answer ({code.name})",
        )
    return NodeResult(entry.name, NodeStatus.ERROR, f"{code.name}: {details}")

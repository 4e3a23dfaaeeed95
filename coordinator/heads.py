"""Signed audit heads on the coordinator's side: check each one, keep it, collect them as evidence.

Every answer a node gives carries its signed audit head (`fedtrace.audit_head`).
`HeadWitness` checks each head a query receives: the signature under the node's
certificate the query already pinned, the jurisdiction it names, and that it is no
shorter than a head the same node showed earlier in the query — and, for the head
of an answer, longer: the node audits every answer before it leaves, so its trail
must have grown since the head it showed before the query. A head that fails
makes that node's result an error. The head after the answer is kept in the
report (``"audit_head"``).

`collect_heads` asks every node of a federation for its head (GetInfo) and
`merge_heads` adds them to a HEADS.json file of evidence (docs/audit-heads.md):
every distinct head is kept, never replaced, so a partner holds each statement the
node ever made to it.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from coordinator.fanout import Deadline, NodeTrust, checked_info, fan_out
from coordinator.federation import NodeEntry
from coordinator.progress import Progress, silent
from coordinator.results import NodeFailure
from coordinator.transport import Connections, NodeConnection
from fedtrace.audit_head import SignedHead
from fedtrace.errors import FedtraceError
from fedtrace.v1 import node_pb2
from fedtrace.wire import NodeStatus

HEADS_VERSION = 1
BAD_SIGNATURE = "signed audit head does not verify"


class CarriesHead(Protocol):
    """A message with an ``audit_head`` field (NodeInfo, trailers, close, follow-up record)."""

    @property
    def audit_head(self) -> node_pb2.AuditHead: ...

    def HasField(self, field_name: Any, /) -> bool: ...  # noqa: N802 - protobuf's name


def head_of(message: CarriesHead) -> SignedHead | None:
    """The head a message carries, or None when it carries none."""
    if not message.HasField("audit_head"):
        return None
    return SignedHead.from_proto(message.audit_head)


class HeadWitness:
    """The heads one query saw, per node: each verified, none shorter than the last one seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, SignedHead] = {}

    def check(
        self, node: str, message: CarriesHead, certificate_pem: bytes, *, answer: bool = False
    ) -> SignedHead:
        """The message's head once it holds; NodeFailure (error) otherwise."""
        return self.admit(node, head_of(message), certificate_pem, answer=answer)

    def admit(
        self,
        node: str,
        head: SignedHead | None,
        certificate_pem: bytes,
        *,
        answer: bool = False,
    ) -> SignedHead:
        """`head` once it holds; NodeFailure (error) when it is missing or does not.

        `answer`: the head comes with an answer the node audited after the last head seen,
        so its trail must be longer than that head's.
        """
        if head is None:
            raise NodeFailure(NodeStatus.ERROR, f"{node} answered without a signed audit head")
        problem = head_problem(node, head, certificate_pem)
        if problem:
            raise NodeFailure(NodeStatus.ERROR, problem)
        with self._lock:
            earlier = self._seen.get(node)
            if earlier is not None and head.entries < earlier.entries:
                raise NodeFailure(
                    NodeStatus.ERROR,
                    f"{node}'s signed audit head went back: {earlier.describe()} was seen "
                    f"earlier, now {head.describe()}; its trail was rolled back",
                )
            if answer and earlier is not None and head.entries == earlier.entries:
                raise NodeFailure(
                    NodeStatus.ERROR,
                    f"{node} answered without auditing the answer: its signed audit head "
                    f"after the answer ({head.describe()}) is the one it showed before",
                )
            self._seen[node] = head
        return head

    def latest(self, node: str) -> SignedHead | None:
        """The last head `node` showed in this query (None: none yet)."""
        with self._lock:
            return self._seen.get(node)


def head_problem(node: str, head: SignedHead, certificate_pem: bytes) -> str:
    """Why `head` is not `node`'s signed head under `certificate_pem` ("" when it is)."""
    if head.jurisdiction != node:
        return f"{node}: the signed audit head names {head.jurisdiction!r}, not {node}"
    if not head.verifies(certificate_pem):
        return f"{node}: {BAD_SIGNATURE}"
    return ""


# --- collecting heads as evidence (`fedtrace audit heads`) ------------------------------------


@dataclass(frozen=True)
class CollectedHead:
    """One node's answer to `collect_heads`: its checked head and certificate, or why not."""

    node: str
    status: NodeStatus
    reason: str = ""
    head: SignedHead | None = None
    certificate_pem: str = ""
    bad: bool = False  # a head was received but does not verify (not merely unreachable)

    @property
    def verified(self) -> bool:
        return self.status == NodeStatus.OK


def collect_heads(
    entries: Sequence[NodeEntry],
    connections: Connections,
    trust: NodeTrust,
    deadline_seconds: float,
    progress: Progress | None = None,
) -> list[CollectedHead]:
    """Every node's current head (GetInfo), checked; a node that fails never fails the others."""
    deadline = Deadline.after(deadline_seconds)
    report = progress or silent

    def exchange(entry: NodeEntry, connection: NodeConnection) -> CollectedHead:
        info, cert = checked_info(entry, connection, deadline, trust, report)
        head = head_of(info)
        if head is None:
            raise NodeFailure(NodeStatus.ERROR, f"{entry.name} sent no signed audit head")
        problem = head_problem(entry.name, head, cert)
        if problem:
            return CollectedHead(entry.name, NodeStatus.ERROR, problem, head, cert.decode(), True)
        return CollectedHead(entry.name, NodeStatus.OK, "", head, cert.decode())

    collected = []
    for outcome in fan_out(entries, connections, deadline, exchange, report):
        if outcome.failure is not None:
            failure = outcome.failure
            collected.append(CollectedHead(failure.node, failure.status, failure.reason))
        else:
            assert outcome.value is not None
            collected.append(outcome.value)
    return collected


def head_entry(head: SignedHead, certificate_pem: str) -> dict[str, Any]:
    """One head as HEADS.json keeps it: the head's keys and the certificate that signed it."""
    return {**head.to_dict(), "certificate_pem": certificate_pem}


def load_heads(path: Path) -> list[dict[str, Any]]:
    """The heads a HEADS.json holds (each parsed strictly); [] when the file does not exist."""
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FedtraceError(f"{path}: not a heads file: {exc}") from None
    if not isinstance(document, dict) or document.get("v") != HEADS_VERSION:
        raise FedtraceError(f'{path}: not a heads file (expected "v": {HEADS_VERSION})')
    heads = document.get("heads")
    if not isinstance(heads, list):
        raise FedtraceError(f'{path}: not a heads file (no "heads" list)')
    kept = []
    for number, entry in enumerate(heads, 1):
        try:
            SignedHead.from_dict(entry)
        except ValueError as exc:
            raise FedtraceError(f"{path}: head {number}: {exc}") from None
        if not isinstance(entry.get("certificate_pem"), str):
            raise FedtraceError(f"{path}: head {number} lacks its certificate_pem")
        kept.append(dict(entry))
    return kept


def merge_heads(
    earlier: Iterable[Mapping[str, Any]], collected: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Every distinct head of both (same node, entries, hash and signature: kept once),
    ordered by node, then entries, then time."""
    merged: dict[tuple[str, int, str, str], dict[str, Any]] = {}
    for entry in (*earlier, *collected):
        key = (
            str(entry["jurisdiction"]),
            int(entry["entries"]),
            str(entry["head_sha256"]),
            str(entry["signature"]),
        )
        merged.setdefault(key, dict(entry))
    return sorted(
        merged.values(),
        key=lambda e: (e["jurisdiction"], e["entries"], e["timestamp_unix_ms"]),
    )


def heads_document(
    heads: list[dict[str, Any]], unreachable: Sequence[CollectedHead]
) -> dict[str, Any]:
    """The HEADS.json document: every head kept, and the nodes this collection could not check."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    document: dict[str, Any] = {"v": HEADS_VERSION, "collected_at": now, "heads": heads}
    if unreachable:
        document["unreachable"] = [
            {"node": c.node, "status": c.status, "reason": c.reason} for c in unreachable
        ]
    return document


def heads_from_report(report: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The heads a report's per-node results carry, each with the certificate that signed the
    result, once its signature verifies under it; and why each other head was left out."""
    found, problems = [], []
    results = report.get("results")
    for result in results if isinstance(results, list) else []:
        if not isinstance(result, Mapping) or result.get("audit_head") is None:
            continue
        node = str(result.get("node", "?"))
        signature = result.get("signature")
        cert = signature.get("certificate_pem", "") if isinstance(signature, Mapping) else ""
        try:
            head = SignedHead.from_dict(result["audit_head"])
        except ValueError as exc:
            problems.append(f"{node}: {exc}")
            continue
        problem = head_problem(node, head, str(cert or "").encode())
        if problem:
            problems.append(problem)
        else:
            found.append(head_entry(head, str(cert)))
    return found, problems

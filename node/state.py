"""What every servicer of a node shares: configuration, database, policy, epochs, keys, gate.

`NodeState` is built once by `node.server.load_state`. `PolicyHolder` keeps the
policy in force and re-reads its file when it changes; `watch_policy` is the
thread that makes a change take effect within seconds even with no traffic.
`serving_epoch` is the epoch a request names, or the refusal that says why not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc

from node.audit import AuditError, AuditLog
from node.bounds import DATASET, bounded
from node.config import NodeConfig
from node.epoch import Epoch
from node.gate import Gate, QueryRefused
from node.metrics import NodeMetrics
from node.policy import Policy, parse_policy
from node.store import NodeDatabase

log = logging.getLogger(__name__)


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


class PartnerQueries:
    """How many queries each partner has in progress, capped per partner."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}

    def acquire(self, partner: str, cap: int) -> bool:
        with self._lock:
            if self._running.get(partner, 0) >= cap:
                return False
            self._running[partner] = self._running.get(partner, 0) + 1
            return True

    def release(self, partner: str) -> None:
        with self._lock:
            left = self._running.get(partner, 0) - 1
            if left > 0:
                self._running[partner] = left
            else:
                self._running.pop(partner, None)


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
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    partner_queries: PartnerQueries = field(default_factory=PartnerQueries)


def serving_epoch(state: NodeState, dataset: str, epoch_id: str) -> Epoch:
    """The current epoch of `dataset`; NOT_FOUND for an unknown dataset, FAILED_PRECONDITION
    when the request names an epoch that has ended (an empty `epoch_id` takes the current one).
    """
    epoch = state.epochs.get(dataset)
    if epoch is None:
        known = ", ".join(sorted(state.epochs)) or "none"
        raise QueryRefused(
            grpc.StatusCode.NOT_FOUND,
            f"{state.config.jurisdiction} has no dataset {bounded(dataset, DATASET)!r} "
            f"(it has: {known})",
        )
    if epoch_id and epoch_id != epoch.epoch_id:
        raise QueryRefused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"epoch {epoch_id} of {dataset!r} has ended; fetch the filter of epoch "
            f"{epoch.epoch_id}",
        )
    return epoch

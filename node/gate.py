"""The one admission API every query kind goes through: policy, budgets and audit together.

A servicer calls `Gate.admit` as soon as it knows who asks (the client
certificate), what (query kind, dataset, item count, level asked, columns,
epsilon) and why (case reference and legal basis from the QueryContext). It gets
an `Admission` or a `QueryRefused` carrying the gRPC status; either way the
request is in the audit trail. The admission has already charged the budgets,
in the same DuckDB transaction that checked them. The servicer then computes the
answer and calls `Gate.settle`:

- ``Outcome.ANSWERED`` before the first byte of the answer leaves the node: the
  charge stands and the audit entry records the answer (with its transcript
  digest);
- ``Outcome.REFUSED`` / ``Outcome.FAILED`` when it stops before disclosing
  anything: the charge is refunded, the entry records why.

A request refused before it could be admitted (a malformed stream, the node
busy) is recorded with `Gate.refuse`. If the audit trail cannot be written the
request is refused: nothing is answered that is not audited.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from fedtrace.pki import Identity
from fedtrace.wire import CASE_REF, LEGAL_BASIS, RENEWS_AT_FORMAT, Level
from node import budget
from node.audit import AuditError, AuditLog
from node.bounds import (
    DATASET,
    NONCE_HEX,
    bounded,
    bounded_reason,
    context_problem,
    legal_basis_code,
)
from node.config import NodeConfig
from node.metrics import (
    NodeMetrics,
    RefusalReason,
    outcome_status,
    refusal_for_limit,
    refusal_reason,
)
from node.policy import Grant, Policy, QueryKind, RequestFacts, decide, utc_now
from node.replay import ReplayGuard, ReplayRefused
from node.store import NodeDatabase

log = logging.getLogger(__name__)


class QueryRefused(Exception):
    """A request the node will not answer; `code` is the gRPC status to return.

    `renews_at` is set for RESOURCE_EXHAUSTED refusals of a budget or rate limit: the
    moment the request would fit again.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        renews_at: dt.datetime | None = None,
        *,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.renews_at = renews_at
        # A short fixed code for metrics (node.metrics.RefusalReason); empty: from `code`.
        self.reason = reason or refusal_reason(code.name)
        self.audited = False  # set once the gate has recorded this refusal


class Outcome(enum.StrEnum):
    ANSWERED = "answered"
    REFUSED = "refused"
    FAILED = "failed"


class PolicySource(Protocol):
    def current(self) -> Policy: ...


@dataclass(frozen=True)
class QueryContextInfo:
    """The QueryContext of a request, as the gate needs it (see fedtrace.v1.QueryContext)."""

    case_ref: str = ""
    legal_basis: str = ""
    nonce: str = ""  # hex; random per query, links the audit entry to the signed transcript
    timestamp_unix_ms: int = 0

    @classmethod
    def from_proto(cls, context: Any) -> QueryContextInfo:
        return cls(
            case_ref=context.case_ref,
            legal_basis=context.legal_basis,
            nonce=bytes(context.nonce).hex(),
            timestamp_unix_ms=int(context.timestamp_unix_ms),
        )


@dataclass
class Admission:
    """An admitted request: the grant and level that answer it, and what it was charged."""

    request_id: str
    identity: Identity
    kind: QueryKind
    dataset: str
    context: QueryContextInfo
    item_count: int
    asked: Level
    level: Level
    grant: Grant
    policy: Policy
    cost: budget.Charge
    limits: list[budget.LimitUse] = field(default_factory=list)
    columns: tuple[str, ...] = ()
    settled: bool = False
    started: float = field(default_factory=time.monotonic)


_CODES = {
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
}


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(RENEWS_AT_FORMAT)


def exhausted_message(
    exhausted: budget.Exhausted, partner: str, jurisdiction: str, dataset: str
) -> str:
    """One line saying which limit is used up and, when it can renew, when."""
    if exhausted.name == budget.LIFETIME:
        return (
            f"{partner} has spent epsilon {exhausted.used:g} of the {exhausted.limit:g} its "
            f"grant at {jurisdiction} allows over its lifetime on {dataset!r}; this query needs "
            f"{exhausted.need:g}"
        )
    unit = {"queries": "queries", "items": "items", "epsilon": "epsilon"}[exhausted.name]
    limit_name = {"queries": "rate limit", "items": "item budget", "epsilon": "epsilon budget"}[
        exhausted.name
    ]
    used = f"{exhausted.used:g}" if exhausted.name == "epsilon" else f"{int(exhausted.used)}"
    limit = f"{exhausted.limit:g}" if exhausted.name == "epsilon" else f"{int(exhausted.limit)}"
    need = f"{exhausted.need:g}" if exhausted.name == "epsilon" else f"{int(exhausted.need)}"
    if exhausted.renews_at is None:
        return (
            f"this request needs {need} {unit}, more than {partner}'s whole {limit_name} of "
            f"{limit} {unit} per {exhausted.per} on {jurisdiction}'s dataset {dataset!r}; "
            "split it"
        )
    return (
        f"{partner}'s {limit_name} on {jurisdiction}'s dataset {dataset!r} is used up: "
        f"{used} of {limit} {unit} per {exhausted.per} used, this request needs {need}; "
        f"it renews at {_iso(exhausted.renews_at)} (retry then)"
    )


class Gate:
    """Admission, settlement and audit of every request a node receives."""

    def __init__(
        self,
        config: NodeConfig,
        database: NodeDatabase,
        policies: PolicySource,
        audit: AuditLog,
        clock: Callable[[], dt.datetime] = utc_now,
        replay: ReplayGuard | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.metrics = metrics  # None: not observed (unit tests, the officer's commands)
        self._config = config
        self._database = database
        self._policies = policies
        self._audit = audit
        self._clock = clock
        self._replay = replay  # nonce + timestamp window (node.replay); None: unchecked
        self._ledger = threading.Lock()  # check-and-charge is serialised inside the process

    @property
    def audit(self) -> AuditLog:
        return self._audit

    def admit(
        self,
        identity: Identity,
        kind: QueryKind,
        dataset: str,
        context: QueryContextInfo,
        item_count: int,
        asked: Level,
        *,
        epsilon: float = 0.0,
        columns: Sequence[str] = (),
    ) -> Admission:
        """Admit a request or raise QueryRefused (audited either way, budgets charged if admitted).

        Checks, in order: the case reference and legal basis are well formed
        (INVALID_ARGUMENT; `node.bounds`); the dataset exists; the node's hard ceiling per request
        (RESOURCE_EXHAUSTED); the policy in force (role, a valid grant for partner,
        dataset and kind, case reference, legal basis, items per query, columns,
        epsilon: PERMISSION_DENIED or INVALID_ARGUMENT); then the grant's rate limit
        and item and epsilon budgets (RESOURCE_EXHAUSTED with the renewal time).
        """
        policy = self._policies.current()
        request_id = secrets.token_hex(16)
        base = self._record(request_id, identity, kind, dataset, context, item_count, asked, policy)
        try:
            admission = self._decide(
                request_id,
                identity,
                kind,
                dataset,
                context,
                item_count,
                asked,
                policy,
                epsilon,
                tuple(columns),
            )
        except QueryRefused as refusal:
            refusal.audited = True
            self._write(
                "query",
                {**base, **_outcome(Outcome.REFUSED, refusal), "budget": _spent(None)},
                refund=None,
            )
            self._observe_refusal(identity, kind, refusal, 0.0)
            raise
        if self.metrics is not None:
            self.metrics.record_limit_uses(
                identity.jurisdiction, dataset, kind.value, admission.limits
            )
        return admission

    def settle(
        self,
        admission: Admission,
        outcome: Outcome,
        *,
        reason: str = "",
        code: grpc.StatusCode = grpc.StatusCode.OK,
        transcript_sha256: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record how an admitted request ended; refund its charge unless it was answered.

        Call with ANSWERED before the answer leaves the node; raises QueryRefused
        (INTERNAL, charge refunded) when the audit trail cannot be written.
        Settling twice does nothing.
        """
        if admission.settled:
            return
        admission.settled = True
        entry = {
            **self._record(
                admission.request_id,
                admission.identity,
                admission.kind,
                admission.dataset,
                admission.context,
                admission.item_count,
                admission.asked,
                admission.policy,
            ),
            "disclosure": admission.level.label if outcome is Outcome.ANSWERED else "",
            "grant": admission.grant.index,
            "outcome": outcome.value,
            "code": code.name,
            "reason": bounded_reason(reason),
            "budget": _spent(admission) if outcome is Outcome.ANSWERED else _spent(None),
        }
        if admission.columns:
            entry["columns"] = list(admission.columns)
        if transcript_sha256:
            entry["transcript_sha256"] = transcript_sha256
        if details:
            entry["details"] = dict(details)
        refund = None if outcome is Outcome.ANSWERED else admission.request_id
        if refund is not None:
            self._refund(refund)
        self._write("query", entry, refund=admission.request_id if refund is None else None)
        if self.metrics is not None:
            seconds = time.monotonic() - admission.started
            status = outcome_status(outcome.value, code.name)
            self.metrics.query_finished(
                admission.kind.value, status, admission.identity.jurisdiction, seconds
            )
            if outcome is Outcome.REFUSED:
                self.metrics.refused(refusal_reason(code.name))

    def charge_more(self, admission: Admission, items: int) -> None:
        """Add `items` to an admitted request's charge: a later step of it tests more items.

        The request's ledger row is replaced by one for all its items, checked against
        the limits of the policy in force; when they do not fit, the row stays as it
        was and the usual limit refusal (QueryRefused) is raised. The caller audits.
        """
        if items <= 0:
            return
        j = self._config.jurisdiction
        identity, total = admission.identity, admission.item_count + items
        facts = RequestFacts(
            partner=identity.jurisdiction,
            role=identity.role,
            kind=admission.kind,
            dataset=admission.dataset,
            asked=admission.asked,
            item_count=total,
            case_ref=admission.context.case_ref,
            legal_basis=legal_basis_code(admission.context.legal_basis),
            columns=admission.columns,
            epsilon=admission.cost.epsilon,
        )
        now = self._clock()
        decision = decide(self._policies.current(), facts, now)
        if not decision.allowed or decision.grant is None:
            raise QueryRefused(
                _CODES.get(decision.code, grpc.StatusCode.PERMISSION_DENIED), decision.reason
            )
        cost = budget.Charge(admission.cost.queries, total, admission.cost.epsilon)
        try:
            with self._ledger, self._database.session() as con:
                limits, exhausted = budget.recharge(
                    con,
                    request_id=admission.request_id,
                    partner=identity.jurisdiction,
                    dataset=admission.dataset,
                    kind=admission.kind.value,
                    grants=decision.limiting or (decision.grant,),
                    cost=cost,
                    now=now,
                )
        except Exception as exc:  # noqa: BLE001 - a ledger we cannot write answers nothing
            log.error("usage ledger unavailable: %s", exc)
            raise QueryRefused(
                grpc.StatusCode.UNAVAILABLE, f"{j} cannot record usage right now; retry shortly"
            ) from None
        if exhausted is not None:
            message = exhausted_message(exhausted, identity.jurisdiction, j, admission.dataset)
            reason = refusal_for_limit(exhausted.name)
            if exhausted.renews_at is None:
                raise QueryRefused(grpc.StatusCode.PERMISSION_DENIED, message, reason=reason)
            raise QueryRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED, message, exhausted.renews_at, reason=reason
            )
        admission.item_count, admission.cost, admission.limits = total, cost, limits

    def refuse(
        self,
        identity: Identity,
        kind: QueryKind,
        refusal: QueryRefused,
        *,
        dataset: str = "",
        context: QueryContextInfo | None = None,
        item_count: int = 0,
        asked: Level | None = None,
    ) -> None:
        """Record a request refused before it could be admitted (malformed, node busy …)."""
        policy = self._policies.current()
        base = self._record(
            secrets.token_hex(16),
            identity,
            kind,
            dataset,
            context or QueryContextInfo(),
            item_count,
            asked,
            policy,
        )
        try:
            self._write(
                "query",
                {**base, **_outcome(Outcome.REFUSED, refusal), "budget": _spent(None)},
                refund=None,
            )
        except QueryRefused:
            log.error("request refused and not audited: %s", refusal)
        self._observe_refusal(identity, kind, refusal, 0.0)

    def _observe_refusal(
        self, identity: Identity, kind: QueryKind, refusal: QueryRefused, seconds: float
    ) -> None:
        if self.metrics is None:
            return
        status = outcome_status(Outcome.REFUSED.value, refusal.code.name)
        self.metrics.query_finished(kind.value, status, identity.jurisdiction, seconds)
        self.metrics.refused(refusal.reason)

    # --- internals ------------------------------------------------------------------------

    def _decide(
        self,
        request_id: str,
        identity: Identity,
        kind: QueryKind,
        dataset: str,
        context: QueryContextInfo,
        item_count: int,
        asked: Level,
        policy: Policy,
        epsilon: float,
        columns: tuple[str, ...],
    ) -> Admission:
        j = self._config.jurisdiction
        malformed = context_problem(context.case_ref, context.legal_basis)
        if malformed:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"{j} refuses the request: {malformed}"
            )
        if self._replay is not None:
            try:
                self._replay.check(context.nonce, context.timestamp_unix_ms)
            except ReplayRefused as exc:
                raise QueryRefused(exc.code, str(exc)) from None
        if self._config.dataset(dataset) is None:
            known = ", ".join(d.name for d in self._config.datasets) or "none"
            raise QueryRefused(
                grpc.StatusCode.NOT_FOUND,
                f"{j} has no dataset {bounded(dataset, DATASET)!r} (it has: {known})",
            )
        ceiling = self._config.limits.max_items_per_request
        if item_count > ceiling:
            raise QueryRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{item_count} items exceed this node's ceiling of {ceiling} per request",
                reason=RefusalReason.TOO_MANY_ITEMS,
            )
        facts = RequestFacts(
            partner=identity.jurisdiction,
            role=identity.role,
            kind=kind,
            dataset=dataset,
            asked=asked,
            item_count=item_count,
            case_ref=context.case_ref,
            legal_basis=legal_basis_code(context.legal_basis),
            columns=columns,
            epsilon=epsilon,
        )
        now = self._clock()
        decision = decide(policy, facts, now)
        if not decision.allowed or decision.level is None or decision.grant is None:
            raise QueryRefused(
                _CODES.get(decision.code, grpc.StatusCode.PERMISSION_DENIED), decision.reason
            )
        cost = budget.Charge(queries=1, items=item_count, epsilon=epsilon)
        try:
            with self._ledger, self._database.session() as con:
                limits, exhausted = budget.charge(
                    con,
                    request_id=request_id,
                    partner=identity.jurisdiction,
                    dataset=dataset,
                    kind=kind.value,
                    grants=decision.limiting or (decision.grant,),
                    cost=cost,
                    now=now,
                )
        except Exception as exc:  # noqa: BLE001 - a ledger we cannot write answers nothing
            log.error("usage ledger unavailable: %s", exc)
            raise QueryRefused(
                grpc.StatusCode.UNAVAILABLE, f"{j} cannot record usage right now; retry shortly"
            ) from None
        if exhausted is not None:
            message = exhausted_message(exhausted, identity.jurisdiction, j, dataset)
            reason = refusal_for_limit(exhausted.name)
            if exhausted.renews_at is None:
                raise QueryRefused(grpc.StatusCode.PERMISSION_DENIED, message, reason=reason)
            raise QueryRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED, message, exhausted.renews_at, reason=reason
            )
        return Admission(
            request_id=request_id,
            identity=identity,
            kind=kind,
            dataset=dataset,
            context=context,
            item_count=item_count,
            asked=asked,
            level=decision.level,
            grant=decision.grant,
            policy=policy,
            cost=cost,
            limits=limits,
            columns=columns,
        )

    def _record(
        self,
        request_id: str,
        identity: Identity,
        kind: QueryKind,
        dataset: str,
        context: QueryContextInfo,
        item_count: int,
        asked: Level | None,
        policy: Policy,
    ) -> dict[str, Any]:
        return {
            "request_id": request_id,
            "peer": {
                "jurisdiction": identity.jurisdiction,
                "role": identity.role,
                "subject": identity.subject,
                "serial": identity.serial,
                "fingerprint_sha256": identity.fingerprint_sha256,
            },
            # Bounded: a malformed value is recorded by length, digest and a short prefix.
            "case_ref": bounded(context.case_ref, CASE_REF),
            "legal_basis": legal_basis_code(context.legal_basis)
            if LEGAL_BASIS.fullmatch(context.legal_basis)
            else bounded(context.legal_basis, LEGAL_BASIS),
            "nonce": bounded(context.nonce, NONCE_HEX),
            "query_time_ms": context.timestamp_unix_ms,
            "kind": kind.value,
            "dataset": bounded(dataset, DATASET),
            "item_count": item_count,
            "asked": asked.label if asked is not None else "",
            "disclosure": "",
            "policy_version": policy.version,
            "policy_sha256": policy.sha256,
        }

    def _refund(self, request_id: str) -> None:
        try:
            with self._ledger, self._database.session() as con:
                budget.refund(con, request_id)
        except Exception:  # noqa: BLE001 - a charge we cannot refund stays charged: safe side
            log.exception("could not refund request %s", request_id)

    def _write(self, event: str, fields: Mapping[str, Any], *, refund: str | None) -> None:
        try:
            self._audit.append(event, fields)
        except AuditError as exc:
            log.error("audit trail not writable, request refused: %s", exc)
            if refund is not None:
                self._refund(refund)
            refusal = QueryRefused(
                grpc.StatusCode.INTERNAL,
                f"{self._config.jurisdiction} cannot write its audit trail "
                "and answers nothing until its operator repairs it",
            )
            refusal.audited = True  # as far as it can be: retrying the write would fail too
            raise refusal from None


def _outcome(outcome: Outcome, refusal: QueryRefused) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "outcome": outcome.value,
        "code": refusal.code.name,
        "reason": bounded_reason(str(refusal)),
    }
    if refusal.renews_at is not None:
        fields["renews_at"] = _iso(refusal.renews_at)
    return fields


def _spent(admission: Admission | None) -> dict[str, Any]:
    if admission is None:
        return {"spent": {"queries": 0, "items": 0, "epsilon": 0.0}}
    return {
        "spent": {
            "queries": admission.cost.queries,
            "items": admission.cost.items,
            "epsilon": admission.cost.epsilon,
        },
        "limits": {use.name: use.as_json() for use in admission.limits},
    }

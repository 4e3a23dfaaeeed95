"""Who may look at a dataset's public epoch material: GetInfo, GetFilter and GetPositionTags.

These calls disclose no identifier, but they are not free: the filter of an epoch
lets its holder test any item offline against the dataset (at the filter's
false-positive rate), and the position tags and sizes describe the dataset. So:

- GetFilter answers only a partner with a grant in force that admits match
  queries on that dataset (cardinality, aggregate, membership or
  disclosure-request); GetPositionTags only one whose grant admits aggregates;
- GetInfo describes (epoch, size, columns) only the datasets the caller holds a
  grant in force for; the others are named, nothing more, so a coordinator still
  gets the policy's refusal for them;
- each call leaves one audit entry (who, which method and dataset, the outcome;
  never an identifier). A call whose entry cannot be written is refused.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import grpc

from fedtrace.pki import Identity
from node.audit import AuditError
from node.bounds import DATASET, bounded, bounded_reason
from node.gate import QueryRefused
from node.policy import Policy, QueryKind, utc_now
from node.state import NodeState


@dataclass(frozen=True)
class Lookup:
    """One call for public epoch material: the RPC and the query kind whose grant it needs."""

    method: str
    needs: QueryKind


FILTER = Lookup("GetFilter", QueryKind.MATCH)
POSITION_TAGS = Lookup("GetPositionTags", QueryKind.AGGREGATE)


def granted_datasets(policy: Policy, identity: Identity) -> set[str]:
    """The datasets on which a grant in force names this investigator."""
    if identity.role != "investigator":
        return set()
    now = utc_now()
    return {
        name
        for grant in policy.grants
        if grant.valid_at(now)
        for name in grant.datasets
        if grant.applies(identity.jurisdiction, name)
    }


def admit_lookup(state: NodeState, identity: Identity, lookup: Lookup, dataset: str) -> None:
    """Allow the call (audited) or raise QueryRefused (audited) when no grant needs it."""
    policy = state.policies.current()
    now = utc_now()
    allowed = identity.role == "investigator" and any(
        g.applies(identity.jurisdiction, dataset) and g.serves(lookup.needs) and g.valid_at(now)
        for g in policy.grants
    )
    j = state.config.jurisdiction
    if allowed:
        record_lookup(state, identity, lookup.method, dataset, "answered")
        return
    refusal = QueryRefused(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{j}'s policy {policy.version} grants {identity.jurisdiction} no "
        f"{lookup.needs.value} access to dataset {bounded(dataset, DATASET)!r}; ask {j}'s "
        "privacy officer for a grant",
    )
    record_lookup(state, identity, lookup.method, dataset, "refused", refusal)
    raise refusal


def record_lookup(
    state: NodeState,
    identity: Identity,
    method: str,
    dataset: str,
    outcome: str,
    refusal: QueryRefused | None = None,
) -> None:
    """One audit entry for one call; QueryRefused (INTERNAL) when it cannot be written."""
    fields: dict[str, object] = {
        "request_id": secrets.token_hex(16),
        "peer": {
            "jurisdiction": identity.jurisdiction,
            "role": identity.role,
            "subject": identity.subject,
            "serial": identity.serial,
            "fingerprint_sha256": identity.fingerprint_sha256,
        },
        "method": method,
        "dataset": bounded(dataset, DATASET),
        "outcome": outcome,
        "code": refusal.code.name if refusal is not None else grpc.StatusCode.OK.name,
        "reason": bounded_reason(str(refusal)) if refusal is not None else "",
    }
    try:
        state.gate.audit.append("lookup", fields)
    except AuditError:
        failed = QueryRefused(
            grpc.StatusCode.INTERNAL,
            f"{state.config.jurisdiction} cannot write its audit trail "
            "and answers nothing until its operator repairs it",
        )
        failed.audited = True
        raise failed from None

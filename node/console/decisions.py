"""The officer's decisions from the console: approve or refuse a request, release a freeze.

The decision itself is `node.officer_requests.approve_request` / `refuse_request` /
`release_request`, exactly as `fedtrace node approve|refuse|release` makes it: the
policy in force is checked again, the row moves only from pending (a release only
from frozen), and the decision is audited with the officer's login name. The
console adds its session id (never the token or the cookie) to the audit entry's
``officer``, so the trail names the console session that decided; the reason,
which the partner reads in the signed record, stays the officer's words.

Failures are typed for the API's status codes: `RequestUnknown` (404),
`RequestNotPending` (409, including a request decided meanwhile elsewhere, and a
release of a request that is not a freeze in force) and
`DecisionInvalid` (400: a bad field list, a missing reason, a grant withdrawn).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from fedtrace.errors import FedtraceError
from node.console.data import ConsoleNode, RequestView, find_request
from node.officer_requests import (
    approve_request,
    console_officer,
    decision_line,
    refuse_request,
    release_request,
)

REASON_MAX_CHARS = 2000


class DecisionError(FedtraceError):
    """A decision the console cannot make as asked; the message says why."""


class RequestUnknown(DecisionError):
    pass


class RequestNotPending(DecisionError):
    pass


class DecisionInvalid(DecisionError):
    pass


@dataclass(frozen=True)
class Decided:
    """A request after the officer's decision, and the one line that summarises it."""

    request: RequestView
    summary: str


def _pending(node: ConsoleNode, request_id: str) -> RequestView:
    request = find_request(node, request_id)
    if request is None:
        raise RequestUnknown(f"no follow-up request {request_id!r} at node {node.jurisdiction}")
    if not request.pending:
        raise RequestNotPending(
            f"request {request_id} is already {request.state_label}"
            + (f" ({request.decided_at})" if request.decided_at else "")
            + "; a decision is final"
        )
    return request


def _check_reason(reason: str) -> None:
    if len(reason) > REASON_MAX_CHARS:
        raise DecisionInvalid(f"the reason is longer than {REASON_MAX_CHARS} characters")


def _failed(node: ConsoleNode, request_id: str, exc: FedtraceError) -> DecisionError:
    """Classify a refusal of the officer functions: decided meanwhile (409) or invalid (400)."""
    now = find_request(node, request_id)
    if now is not None and not now.pending:
        return RequestNotPending(str(exc))
    return DecisionInvalid(str(exc))


def approve(
    node: ConsoleNode,
    request_id: str,
    fields: Sequence[str] | None,
    reason: str,
    session_id: str,
    now: dt.datetime | None = None,
) -> Decided:
    """Approve `fields` (None: every field asked) of a pending request, audited."""
    request = _pending(node, request_id)
    _check_reason(reason)
    if fields is not None and request.kind == "disclose" and not fields:
        raise DecisionInvalid(
            f"choose at least one field of {', '.join(request.fields_asked)} to approve, "
            "or refuse the request"
        )
    if request.kind != "disclose" and fields:
        raise DecisionInvalid(f"request {request_id} is a {request.kind}; it discloses no fields")
    try:
        row = approve_request(
            node.node_dir,
            request_id,
            None if request.kind != "disclose" else fields,
            reason.strip() or "approved by the officer",
            now,
            officer=console_officer(session_id),
        )
    except FedtraceError as exc:
        raise _failed(node, request_id, exc) from None
    return Decided(RequestView.from_row(row), decision_line(row))


def refuse(
    node: ConsoleNode,
    request_id: str,
    reason: str,
    session_id: str,
    now: dt.datetime | None = None,
) -> Decided:
    """Refuse a pending request; the reason is required and reaches the partner."""
    _pending(node, request_id)
    if not reason.strip():
        raise DecisionInvalid("a refusal needs its reason")
    _check_reason(reason)
    try:
        row = refuse_request(
            node.node_dir, request_id, reason.strip(), now, officer=console_officer(session_id)
        )
    except FedtraceError as exc:
        raise _failed(node, request_id, exc) from None
    return Decided(RequestView.from_row(row), decision_line(row))


def release(
    node: ConsoleNode,
    request_id: str,
    reason: str,
    session_id: str,
    now: dt.datetime | None = None,
) -> Decided:
    """Lift a freeze in force; the reason is required and reaches the partner."""
    request = find_request(node, request_id)
    if request is None:
        raise RequestUnknown(f"no follow-up request {request_id!r} at node {node.jurisdiction}")
    if not request.frozen:
        raise RequestNotPending(
            f"request {request_id} is {request.state_label}, not a freeze in force; "
            "only a frozen request can be released"
        )
    if not reason.strip():
        raise DecisionInvalid("a release needs its reason")
    _check_reason(reason)
    try:
        row = release_request(
            node.node_dir, request_id, reason.strip(), now, officer=console_officer(session_id)
        )
    except FedtraceError as exc:
        current = find_request(node, request_id)
        if current is not None and not current.frozen:
            raise RequestNotPending(str(exc)) from None
        raise DecisionInvalid(str(exc)) from None
    return Decided(RequestView.from_row(row), decision_line(row))

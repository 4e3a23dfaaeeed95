"""The console's JSON API under ``/api`` (docs/console.md lists every route).

Reads answer 200 with one JSON object. The two decisions need the session's CSRF
token (from ``GET /api/session``) in the ``X-CSRF-Token`` header: 403 without it
or with a wrong one, 404 for an unknown request, 409 for one no longer pending,
400 for a bad body; otherwise the updated request object.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fedtrace.errors import FedtraceError
from node.console import data, datasets, decisions, policy_data
from node.console.auth import CSRF_HEADER
from node.console.state import console_state, csrf_ok, officer_session
from node.policy import utc_now
from node.store import DatabaseBusy

Endpoint = Callable[[Request], Awaitable[JSONResponse]]
_STATUS = {
    decisions.RequestUnknown: 404,
    decisions.RequestNotPending: 409,
    decisions.DecisionInvalid: 400,
    DatabaseBusy: 503,
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Turn the node's one-line errors into JSON answers with their status code."""

    async def run(request: Request) -> JSONResponse:
        try:
            return await endpoint(request)
        except FedtraceError as exc:
            status = next((s for kind, s in _STATUS.items() if isinstance(exc, kind)), 500)
            return _error(status, str(exc))

    return run


@_guarded
async def session(request: Request) -> JSONResponse:
    state = console_state(request)
    officer = officer_session(request)
    return JSONResponse(
        {"csrf": officer.csrf, "session": officer.audit_id, "node": state.node.jurisdiction}
    )


@_guarded
async def list_requests(request: Request) -> JSONResponse:
    node = console_state(request).node
    state = request.query_params.get("state", "all")
    if state not in data.STATE_FILTERS:
        return _error(400, f"state {state!r} must be one of {', '.join(data.STATE_FILTERS)}")
    views = await run_in_threadpool(data.requests, node, state)
    now = utc_now()
    return JSONResponse({"node": node.jurisdiction, "requests": [v.as_json(now) for v in views]})


@_guarded
async def one_request(request: Request) -> JSONResponse:
    node = console_state(request).node
    found = await run_in_threadpool(data.find_request, node, request.path_params["id"])
    if found is None:
        return _error(404, f"no follow-up request {request.path_params['id']!r}")
    return JSONResponse(found.as_json(utc_now()))


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise decisions.DecisionInvalid("the body is not JSON") from None
    if not isinstance(body, dict):
        raise decisions.DecisionInvalid("the body must be a JSON object")
    unknown = sorted(set(body) - {"fields", "reason"})
    if unknown:
        raise decisions.DecisionInvalid(f"unknown key(s) {', '.join(unknown)}; use fields, reason")
    return body


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if reason is None:
        return ""
    if not isinstance(reason, str):
        raise decisions.DecisionInvalid("reason must be a string")
    return reason


def _fields(body: dict[str, Any]) -> tuple[str, ...] | None:
    fields = body.get("fields")
    if fields is None:
        return None
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise decisions.DecisionInvalid("fields must be a list of field names")
    return tuple(fields)


def _csrf_refused(request: Request) -> JSONResponse | None:
    if csrf_ok(request, request.headers.get(CSRF_HEADER)):
        return None
    return _error(403, f"missing or wrong {CSRF_HEADER} header (GET /api/session gives it)")


@dataclass(frozen=True)
class _Decision:
    """A decision call that passed its checks: the node, the request id, the JSON body."""

    node: data.ConsoleNode
    request_id: str
    body: dict[str, Any]
    session_id: str


async def _decision(request: Request, *, reason_only: str = "") -> _Decision | JSONResponse:
    """The checks every decision shares: CSRF (403), a known request (404), a JSON body
    (400); with `reason_only`, a body that names fields is refused with that word."""
    refused = _csrf_refused(request)
    if refused is not None:
        return refused
    node = console_state(request).node
    request_id = request.path_params["id"]
    if await run_in_threadpool(data.find_request, node, request_id) is None:
        return _error(404, f"no follow-up request {request_id!r} at node {node.jurisdiction}")
    body = await _body(request)
    if reason_only and "fields" in body:
        raise decisions.DecisionInvalid(f"a {reason_only} takes a reason only")
    return _Decision(node, request_id, body, officer_session(request).audit_id)


@_guarded
async def approve(request: Request) -> JSONResponse:
    checked = await _decision(request)
    if isinstance(checked, JSONResponse):
        return checked
    decided = await run_in_threadpool(
        decisions.approve,
        checked.node,
        checked.request_id,
        _fields(checked.body),
        _reason(checked.body),
        checked.session_id,
    )
    return JSONResponse(decided.request.as_json(utc_now()))


@_guarded
async def refuse(request: Request) -> JSONResponse:
    checked = await _decision(request, reason_only="refusal")
    if isinstance(checked, JSONResponse):
        return checked
    decided = await run_in_threadpool(
        decisions.refuse,
        checked.node,
        checked.request_id,
        _reason(checked.body),
        checked.session_id,
    )
    return JSONResponse(decided.request.as_json(utc_now()))


@_guarded
async def release(request: Request) -> JSONResponse:
    checked = await _decision(request, reason_only="release")
    if isinstance(checked, JSONResponse):
        return checked
    decided = await run_in_threadpool(
        decisions.release,
        checked.node,
        checked.request_id,
        _reason(checked.body),
        checked.session_id,
    )
    return JSONResponse(decided.request.as_json(utc_now()))


@_guarded
async def audit(request: Request) -> JSONResponse:
    node = console_state(request).node
    query = request.query_params
    try:
        chosen = data.AuditFilter.parse(
            query.get("partner", ""), query.get("case", ""), query.get("since", "")
        )
    except ValueError as exc:
        return _error(400, str(exc))
    view = await run_in_threadpool(data.audit_view, node, chosen)
    check = view.verification
    return JSONResponse(
        {
            "node": node.jurisdiction,
            "verification": {
                "ok": check.ok,
                "entries": check.entries,
                "problem": check.problem,
                "notes": list(check.notes),
            },
            "filter": chosen.as_json(),
            "entries": [dict(e) for e in view.entries],
        }
    )


@_guarded
async def budgets(request: Request) -> JSONResponse:
    node = console_state(request).node
    now = utc_now()
    lines = await run_in_threadpool(policy_data.budgets, node, now)
    return JSONResponse(
        {
            "node": node.jurisdiction,
            "as_of": data.iso(now),
            "budgets": [line.as_json() for line in lines],
        }
    )


@_guarded
async def policy(request: Request) -> JSONResponse:
    node = console_state(request).node
    view = await run_in_threadpool(policy_data.policy_view, node)
    return JSONResponse({"node": node.jurisdiction, **view.as_json()})


@_guarded
async def node_datasets(request: Request) -> JSONResponse:
    node = console_state(request).node
    found = await run_in_threadpool(datasets.node_data, node)
    return JSONResponse(found.as_json(utc_now()))


ROUTES = [
    Route("/api/session", session),
    Route("/api/requests", list_requests),
    Route("/api/requests/{id}", one_request),
    Route("/api/requests/{id}/approve", approve, methods=["POST"]),
    Route("/api/requests/{id}/refuse", refuse, methods=["POST"]),
    Route("/api/requests/{id}/release", release, methods=["POST"]),
    Route("/api/audit", audit),
    Route("/api/budgets", budgets),
    Route("/api/policy", policy),
    Route("/api/datasets", node_datasets),
]

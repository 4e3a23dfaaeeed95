"""The console's pages: server-rendered Jinja2 (autoescaped), plain HTML forms, no script.

Each page reads through `node.console.data`, `policy_data` or `datasets` and
renders one template. The two decision forms carry the session's CSRF token in
a hidden field; after a decision the browser is redirected back to the request
list (post/redirect/get), where the outcome is shown once.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from fedtrace.errors import FedtraceError
from node.console import data, datasets, decisions, policy_data
from node.console.auth import COOKIE_NAME, CSRF_FIELD, SESSION_HOURS
from node.console.state import SECRET_KEY, SESSION_KEY, console_state, csrf_ok, officer_session
from node.policy import utc_now

NAVIGATION = (
    ("/requests", "Requests"),
    ("/audit", "Audit trail"),
    ("/policy", "Policy"),
    ("/budgets", "Budgets"),
    ("/datasets", "Datasets"),
)


def _page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    state = console_state(request)
    session = officer_session(request)
    return state.templates.TemplateResponse(
        request,
        template,
        {
            "node": state.node.jurisdiction,
            "session": session,
            "csrf_field": CSRF_FIELD,
            "navigation": NAVIGATION,
            "path": request.url.path,
            "flash": session.take_flash(),
            "now": utc_now(),
            "iso": data.iso,
            **context,
        },
        status_code=status,
    )


def _message(request: Request, status: int, title: str, text: str) -> Response:
    return _page(request, "message.html", status, title=title, text=text)


async def home(request: Request) -> Response:
    """``/``: redeem the start token once (then drop it from the address bar), or go on."""
    state = console_state(request)
    token = request.query_params.get("token")
    if request.scope["state"].get(SESSION_KEY) is not None or token is None:
        return RedirectResponse("/requests", status_code=303)
    opened = state.sessions.redeem(token)
    if opened is None:
        return state.templates.TemplateResponse(
            request,
            "signin.html",
            {"reason": "This sign-in link was already used or is not the one printed."},
            status_code=401,
        )
    secret, _ = opened
    response = RedirectResponse("/requests", status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        secret,
        max_age=int(SESSION_HOURS * 3600),
        path="/",
        httponly=True,
        samesite="strict",
        secure=state.secure_cookie,
    )
    return response


async def request_list(request: Request) -> Response:
    node = console_state(request).node
    try:
        everything = await run_in_threadpool(data.requests, node)
    except FedtraceError as exc:
        return _message(request, 503, "Requests unavailable", str(exc))
    return _page(
        request,
        "requests.html",
        pending=[r for r in everything if r.pending],
        frozen=[r for r in everything if r.frozen],
        past=list(reversed([r for r in everything if not r.pending and not r.frozen])),
    )


async def _decide(request: Request, decision: str) -> Response:
    form = await request.form()
    presented = form.get(CSRF_FIELD)
    if not csrf_ok(request, presented if isinstance(presented, str) else None):
        return _message(
            request, 403, "Refused", "The form is stale or did not come from this console."
        )
    session = officer_session(request)
    node = console_state(request).node
    request_id = request.path_params["id"]
    reason = form.get("reason")
    reason_text = reason if isinstance(reason, str) else ""
    try:
        if decision == "approve":
            fields = tuple(f for f in form.getlist("fields") if isinstance(f, str))
            decided = await run_in_threadpool(
                decisions.approve, node, request_id, fields, reason_text, session.audit_id
            )
        else:
            decide = decisions.release if decision == "release" else decisions.refuse
            decided = await run_in_threadpool(
                decide, node, request_id, reason_text, session.audit_id
            )
    except FedtraceError as exc:
        session.flash.append(("error", f"{request_id}: {exc}"))
    else:
        session.flash.append(("done", decided.summary))
    return RedirectResponse("/requests", status_code=303)


async def approve(request: Request) -> Response:
    return await _decide(request, "approve")


async def refuse(request: Request) -> Response:
    return await _decide(request, "refuse")


async def release(request: Request) -> Response:
    return await _decide(request, "release")


async def audit(request: Request) -> Response:
    node = console_state(request).node
    query = request.query_params
    values = {k: query.get(k, "") for k in ("partner", "case", "since")}
    try:
        chosen = data.AuditFilter.parse(values["partner"], values["case"], values["since"])
    except ValueError as exc:
        chosen, problem = data.AuditFilter(), str(exc)
    else:
        problem = ""
    view = await run_in_threadpool(data.audit_view, node, chosen)
    shared = await run_in_threadpool(data.shared_records, node, chosen.case) if chosen.case else []
    return _page(
        request,
        "audit.html",
        view=view,
        rows=view.rows(),
        limit=data.AUDIT_PAGE_ENTRIES,
        values=values,
        problem=problem,
        shared=shared,
    )


async def policy(request: Request) -> Response:
    view = await run_in_threadpool(policy_data.policy_view, console_state(request).node)
    return _page(request, "policy.html", view=view)


async def budgets(request: Request) -> Response:
    node = console_state(request).node
    try:
        lines = await run_in_threadpool(policy_data.budgets, node)
    except FedtraceError as exc:
        return _message(request, 503, "Budgets unavailable", str(exc))
    return _page(request, "budgets.html", lines=lines)


async def node_datasets(request: Request) -> Response:
    node = console_state(request).node
    try:
        found = await run_in_threadpool(datasets.node_data, node)
    except FedtraceError as exc:
        return _message(request, 503, "Datasets unavailable", str(exc))
    return _page(request, "datasets.html", data=found)


async def sign_out(request: Request) -> Response:
    form = await request.form()
    presented = form.get(CSRF_FIELD)
    if not csrf_ok(request, presented if isinstance(presented, str) else None):
        return _message(request, 403, "Refused", "The form did not come from this console.")
    state = console_state(request)
    secret = request.scope["state"].get(SECRET_KEY)
    state.sessions.close(secret if isinstance(secret, str) else None)
    response = state.templates.TemplateResponse(
        request, "signin.html", {"reason": "Signed out."}, status_code=200
    )
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response


ROUTES = [
    Route("/", home),
    Route("/requests", request_list),
    Route("/requests/{id}/approve", approve, methods=["POST"]),
    Route("/requests/{id}/refuse", refuse, methods=["POST"]),
    Route("/requests/{id}/release", release, methods=["POST"]),
    Route("/audit", audit),
    Route("/policy", policy),
    Route("/budgets", budgets),
    Route("/datasets", node_datasets),
    Route("/signout", sign_out, methods=["POST"]),
]

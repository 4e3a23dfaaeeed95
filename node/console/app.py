"""The console's Starlette application: routes, the session gate and security headers.

Nothing is served without a session: the gate answers 401 (JSON under ``/api``,
a short page elsewhere) unless the request carries a live session cookie, or is
the sign-in itself (``GET /?token=…``, which the views redeem once). Every
response forbids framing, sniffing, caching and referrers, and the content
security policy admits the console's own stylesheet and nothing else (the pages
need no script).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.console import api, views
from node.console.auth import COOKIE_NAME, SessionStore
from node.console.data import ConsoleNode
from node.console.state import SECRET_KEY, SESSION_KEY, STATIC_DIR, ConsoleState, templates

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class ConsoleSettings:
    """How the console runs: which node, whether over TLS, which Host headers it answers."""

    node_dir: Path
    secure_cookie: bool = False
    allowed_hosts: Sequence[str] = ()  # empty: any Host header


class SessionGate:
    """Attach the officer's session to the request, or answer 401 without calling the app."""

    def __init__(self, app: ASGIApp, sessions: SessionStore, sign_in_page: str) -> None:
        self.app = app
        self.sessions = sessions
        self.sign_in_page = sign_in_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        secret = connection.cookies.get(COOKIE_NAME)
        session = self.sessions.lookup(secret)
        signing_in = connection.url.path == "/" and "token" in connection.query_params
        if session is None and not signing_in:
            response: Response
            if connection.url.path.startswith("/api/") or connection.url.path == "/api":
                response = JSONResponse(
                    {"error": "no session: open the URL printed by `fedtrace console`"},
                    status_code=401,
                )
            else:
                response = HTMLResponse(self.sign_in_page, status_code=401)
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[SESSION_KEY] = session
        state[SECRET_KEY] = secret
        await self.app(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: ConsoleSettings, sessions: SessionStore | None = None) -> Starlette:
    """The console for `settings.node_dir`; `sessions` holds the start token (new if None)."""
    store = sessions or SessionStore()
    state = ConsoleState(
        node=ConsoleNode.open(settings.node_dir),
        sessions=store,
        templates=templates(),
        secure_cookie=settings.secure_cookie,
    )
    sign_in_page = state.templates.get_template("signin.html").render(
        reason="This browser is not signed in to the console."
    )
    middleware = [Middleware(SecurityHeaders)]
    if settings.allowed_hosts:
        middleware.append(
            Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
        )
    middleware.append(Middleware(SessionGate, sessions=store, sign_in_page=sign_in_page))
    app = Starlette(
        routes=[
            *views.ROUTES,
            *api.ROUTES,
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=middleware,
    )
    app.state.console = state
    return app

"""What every console endpoint shares: the node, the sessions, the templates, and the checks.

`ConsoleState` lives on the Starlette application (``app.state.console``);
`officer_session` is the session the gate in `node.console.app` attached to the
request; `csrf_ok` checks the token a state-changing call presents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.templating import Jinja2Templates

from node.console.auth import Session, SessionStore
from node.console.data import ConsoleNode

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
SESSION_KEY = "console_session"
SECRET_KEY = "console_cookie"


def templates() -> Jinja2Templates:
    """Jinja2 with autoescaping on for every template: every value rendered is text."""
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=environment)


@dataclass(frozen=True)
class ConsoleState:
    node: ConsoleNode
    sessions: SessionStore
    templates: Jinja2Templates
    secure_cookie: bool  # the console is served over TLS: the cookie is `Secure` too


def console_state(request: Request) -> ConsoleState:
    state = request.app.state.console
    assert isinstance(state, ConsoleState)
    return state


def officer_session(request: Request) -> Session:
    session = request.scope.get("state", {}).get(SESSION_KEY)
    assert isinstance(session, Session), "the session gate runs before every endpoint"
    return session


def csrf_ok(request: Request, presented: str | None) -> bool:
    return officer_session(request).csrf_matches(presented)

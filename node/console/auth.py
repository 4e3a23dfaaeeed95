"""Officer sessions for the web console: a one-time start token, session cookies and CSRF tokens.

`fedtrace console` prints a URL carrying a random start token (like Jupyter). The
first request that presents it opens a session and the token is spent: a copy of
the URL found later in a shell history or a proxy log opens nothing. A session is
a random cookie secret (HttpOnly, SameSite=Strict) plus a CSRF token that every
state-changing call must echo, and a separate short `audit_id` that is written
into decisions; the cookie secret and the start token never leave this module
except in the cookie and the printed URL. Every comparison of a secret is in
constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field

COOKIE_NAME = "fedtrace_console"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SESSION_HOURS = 12.0


@dataclass
class Session:
    """One officer's signed-in browser: its CSRF token and the id decisions are audited with."""

    audit_id: str  # public: shown on pages and written into decision reasons
    csrf: str = field(repr=False)
    opened: dt.datetime
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, message) to show once

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "surrogatepass"), self.csrf.encode()
        )

    def take_flash(self) -> list[tuple[str, str]]:
        messages, self.flash = self.flash, []
        return messages


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class SessionStore:
    """The console process's start token and open sessions (kept in memory only)."""

    def __init__(self, *, hours: float = SESSION_HOURS, start_token: str | None = None) -> None:
        self.start_token = start_token or secrets.token_urlsafe(32)
        self._spent = False
        self._lifetime = dt.timedelta(hours=hours)
        self._sessions: dict[str, Session] = {}  # sha256 of the cookie secret → session
        self._lock = threading.Lock()

    def redeem(self, token: str, now: dt.datetime | None = None) -> tuple[str, Session] | None:
        """Open a session for the start token, once; returns (cookie secret, session)."""
        with self._lock:
            presented = token.encode("utf-8", "surrogatepass")
            if self._spent or not hmac.compare_digest(presented, self.start_token.encode()):
                return None
            self._spent = True
            secret = secrets.token_urlsafe(32)
            session = Session(
                audit_id="cs-" + secrets.token_hex(6),
                csrf=secrets.token_urlsafe(32),
                opened=now or dt.datetime.now(dt.UTC),
            )
            self._sessions[_digest(secret)] = session
            return secret, session

    def lookup(self, secret: str | None, now: dt.datetime | None = None) -> Session | None:
        """The session a cookie secret opens, or None (unknown, or older than its lifetime).

        The store is keyed by the secret's SHA-256, so finding it reveals nothing
        through timing about the secret itself.
        """
        if not secret:
            return None
        moment = now or dt.datetime.now(dt.UTC)
        key = _digest(secret)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if moment - session.opened > self._lifetime:
                del self._sessions[key]
                return None
            return session

    def close(self, secret: str | None) -> None:
        if secret:
            with self._lock:
                self._sessions.pop(_digest(secret), None)

    @property
    def spent(self) -> bool:
        return self._spent

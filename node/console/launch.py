"""Starting the console: check where it may listen, bind, print the sign-in URL, run uvicorn.

Loopback is the default and needs nothing else. Any other address is reachable
from other machines: the console warns, and refuses to start unless it is given
a TLS certificate and key (the session cookie is then `Secure`). The socket is
bound before the URL is printed, so ``--listen 127.0.0.1:0`` prints the port the
system chose. Uvicorn's access log is off: it would record the one-time token.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import uvicorn

from fedtrace.errors import ConfigError
from node.config import parse_listen
from node.console.app import ConsoleSettings, create_app
from node.console.auth import SessionStore

DEFAULT_LISTEN = "127.0.0.1:8080"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ConsoleTls:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ConsoleListen:
    host: str
    port: int
    tls: ConsoleTls | None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def url(self, port: int, token: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.url_host}:{port}/?token={token}"

    def allowed_hosts(self) -> tuple[str, ...]:
        """Host headers answered on loopback (a page whose DNS was rebound to 127.0.0.1 is
        refused); any elsewhere, where TLS and the session already decide."""
        if not self.loopback:
            return ()
        return tuple(dict.fromkeys(("localhost", "127.0.0.1", "[::1]", self.url_host)))


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plan_listen(listen: str, tls_cert: Path | None, tls_key: Path | None) -> ConsoleListen:
    """Where to listen and with which TLS material; ConfigError (one line) when it is unsafe."""
    host, port = parse_listen(listen, "--listen")
    host = host.strip("[]")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: pass both, or neither")
    tls = ConsoleTls(tls_cert, tls_key) if tls_cert and tls_key else None
    if tls is not None:
        for path in (tls.cert, tls.key):
            if not path.is_file():
                raise ConfigError(f"{path}: no such file (--tls-cert / --tls-key take PEM files)")
    plan = ConsoleListen(host, port, tls)
    if not plan.loopback and tls is None:
        raise ConfigError(
            f"--listen {listen} is not a loopback address: the console would be reachable from "
            "other machines, so it needs --tls-cert PEM and --tls-key PEM (or listen on 127.0.0.1)"
        )
    return plan


def _bind(plan: ConsoleListen) -> socket.socket:
    family = socket.AF_INET6 if ":" in plan.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((plan.host, plan.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--listen {plan.host}:{plan.port}: cannot listen there: {exc.strerror}"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class _Stopped(Exception):
    """SIGTERM, re-raised by uvicorn once it has shut down."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def serve(node_dir: Path, plan: ConsoleListen, out: TextIO = sys.stdout) -> int:
    """Run the console for `node_dir` until Ctrl-C or SIGTERM; prints the one-time sign-in URL."""
    sessions = SessionStore()
    app = create_app(
        ConsoleSettings(
            node_dir=node_dir,
            secure_cookie=plan.tls is not None,
            allowed_hosts=plan.allowed_hosts(),
        ),
        sessions,
    )
    if not plan.loopback:
        print(
            f"warning: the console listens on {plan.host}, reachable from other machines; "
            "only someone holding the URL below can sign in, once",
            file=sys.stderr,
            flush=True,
        )
    sock = _bind(plan)
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        ssl_certfile=str(plan.tls.cert) if plan.tls else None,
        ssl_keyfile=str(plan.tls.key) if plan.tls else None,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    print(
        f"fedtrace console for node {app.state.console.node.jurisdiction}; open "
        f"{plan.url(port, sessions.start_token)}",
        file=out,
        flush=True,
    )
    print("the link signs in one browser, once; stop with Ctrl-C", file=out, flush=True)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass  # uvicorn has already shut down; it re-raises the signal that stopped it
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    print("console stopped; its sessions are gone", file=out, flush=True)
    return 0

"""Readiness for systemd: tell the service manager when the node serves and when it stops.

With ``Type=notify`` systemd starts dependants, and `systemctl start` returns, only
once the node sends ``READY=1`` — after its epochs are built and the gRPC port is
bound, not when the process merely exists. The protocol is one datagram to the
unix socket named in ``$NOTIFY_SOCKET`` (a name starting with ``@`` is in the
abstract namespace). Without that variable — a terminal, a container, a test —
every call here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. ``"READY=1"``) to the service manager; True when it was sent.

    Never raises: a node must not stop serving because its supervisor went away.
    """
    name = (os.environ if environ is None else environ).get(NOTIFY_SOCKET, "")
    if not name or not (name.startswith("/") or name.startswith("@")):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(name))
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", name, exc.strerror)
        return False
    return True


def notify_ready(status: str = "", environ: Mapping[str, str] | None = None) -> bool:
    """The node serves: its port is bound and its epochs are current."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""), environ)


def notify_stopping(environ: Mapping[str, str] | None = None) -> bool:
    """The node is finishing in-flight calls and will exit."""
    return notify("STOPPING=1", environ)

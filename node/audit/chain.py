"""The audit trail's format, shared by its writer and its readers: files, hashes, locking.

An entry's hash is SHA-256 over the canonical JSON of everything but its hash and
signature, domain-separated; the signed head's digest likewise. Appends take an
exclusive `flock` on ``audit/.lock``, readers a shared one (`read_trail`), so the
officer's commands work while the node serves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fedtrace.errors import FedtraceError

AUDIT_DIR = "audit"
TRAIL_FILE = "audit.jsonl"
HEAD_FILE = "head.json"
LOCK_FILE = ".lock"
SIGNERS_DIR = "signers"
ENTRY_DOMAIN = b"fedtrace-audit-entry-v1\x00"
HEAD_DOMAIN = b"fedtrace-audit-head-v1\x00"
GENESIS = "0" * 64
TAIL_BYTES = 1 << 16  # bytes read per step when scanning back for the start of a line
SEALED = ("hash", "signature")
DIRECTORY_MODE = 0o700  # the trail, its head and its lock: the node's account only
FILE_MODE = 0o600


class AuditError(FedtraceError):
    """The audit trail cannot be read or appended; the message says where and what to do."""


def canonical_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in SEALED}
    return hashlib.sha256(ENTRY_DOMAIN + canonical_json(body)).hexdigest()


def head_digest(head: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in head.items() if k != "signature"}
    return hashlib.sha256(HEAD_DOMAIN + canonical_json(body)).digest()


def certificate_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of a certificate (hex): the name its copy has under ``audit/signers/``."""
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()


@contextlib.contextmanager
def locked(directory: Path, exclusive: bool) -> Iterator[None]:
    """Hold the trail's lock (exclusive to append, shared to read) for the block."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise AuditError(f"{directory}: cannot open the audit lock: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def line_start(handle: BinaryIO, end: int) -> int:
    """Offset of the first byte of the line that ends at `end`: just after the newline
    before it, or 0. Scans back in steps, so a line of any length is found."""
    position = end
    while position > 0:
        step = min(TAIL_BYTES, position)
        handle.seek(position - step)
        cut = handle.read(step).rfind(b"\n")
        if cut >= 0:
            return position - step + cut + 1
        position -= step
    return 0


def last_line(path: Path) -> tuple[bytes, bool] | None:
    """The file's last line (without its newline) and whether a newline ends it; None if empty."""
    if not path.exists():
        return None
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        handle.seek(size - 1)
        whole = handle.read(1) == b"\n"
        end = size - 1 if whole else size
        start = line_start(handle, end)
        handle.seek(start)
        return handle.read(end - start), whole


def read_head(directory: Path) -> dict[str, Any] | None:
    """The signed head as written (not verified); {"unreadable": True} when it does not parse."""
    path = directory / HEAD_FILE
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {"unreadable": True}
    return dict(value) if isinstance(value, dict) else {"unreadable": True}


def read_trail(directory: Path) -> tuple[list[str], dict[str, Any] | None]:
    """The trail's lines and its head, read under a shared lock (a consistent snapshot)."""
    lines, head, _ = read_trail_torn(directory)
    return lines, head


def read_trail_torn(directory: Path) -> tuple[list[str], dict[str, Any] | None, bool]:
    """As `read_trail`, plus whether the last line is torn (the file ends without a newline)."""
    if not directory.is_dir():
        return [], None, False
    with locked(directory, exclusive=False):
        trail = directory / TRAIL_FILE
        raw = trail.read_text(encoding="utf-8", errors="replace") if trail.exists() else ""
        lines = raw.splitlines()
        torn = bool(raw) and not raw.endswith("\n")
        head = read_head(directory)
    return lines, head, torn


def entry_time(entry: Mapping[str, Any]) -> dt.datetime:
    """When an entry (or the head) says it was written; now when it says nothing usable."""
    try:
        moment = dt.datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.now(dt.UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

"""Writing the node's audit trail: signed, hash-chained entries appended safely.

Appends take an exclusive `flock`, write the whole line with one `write` on an
O_APPEND descriptor and `fsync` it before the signed head moves. A last line torn
by a crash mid-write is set aside on the next append, and the repair is itself
an entry.

Before every append the trail's last entry is compared with the signed head (and
with the last entry this process wrote): a trail cut short, spliced or rolled back
to an older head is not extended. The append is refused (the query with it, as
INTERNAL) and the node logs an ALERT line.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedtrace.audit_head import SignedHead, sign_head
from fedtrace.pki import InvalidCertificate, sign, verify_signature
from node.audit.chain import (
    DIRECTORY_MODE,
    FILE_MODE,
    GENESIS,
    HEAD_FILE,
    SIGNERS_DIR,
    TRAIL_FILE,
    AuditError,
    canonical_json,
    certificate_fingerprint,
    entry_hash,
    head_digest,
    last_line,
    line_start,
    locked,
    read_head,
)

log = logging.getLogger(__name__)


def _now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def last_entry(path: Path) -> dict[str, Any] | None:
    found = last_line(path)
    if found is None:
        return None
    last, whole = found
    if not whole:
        raise AuditError(
            f"{path}: the last line is incomplete; run `fedtrace audit verify` and "
            "restore the trail before the node can answer again"
        )
    try:
        entry = json.loads(last)
        int(entry["seq"]), str(entry["hash"]), str(entry["prev"])
    except (ValueError, KeyError, TypeError):
        raise AuditError(
            f"{path}: the last line is not an audit entry; run `fedtrace audit "
            "verify` and restore the trail before the node can answer again"
        ) from None
    return dict(entry)


def head_problem(directory: Path, last: dict[str, Any] | None) -> str:
    """Why the trail's last entry does not match its signed head ("" when it does).

    A head one entry behind the last entry, naming that entry's predecessor, is a
    crash between writing an entry and moving the head: accepted.
    """
    head = read_head(directory)
    if head is None:
        if last is None or (int(last["seq"]) == 1 and last["prev"] == GENESIS):
            return ""
        return f"the signed head ({HEAD_FILE}) is missing but the trail holds {last['seq']} entries"
    if head.get("unreadable") or not isinstance(head.get("count"), int):
        return f"the signed head ({HEAD_FILE}) is not a well-formed head"
    pem_path = directory / SIGNERS_DIR / f"{head.get('signer', '')}.pem"
    try:
        signed = verify_signature(
            pem_path.read_bytes(), head_digest(head), bytes.fromhex(str(head.get("signature", "")))
        )
    except (OSError, ValueError, InvalidCertificate):
        signed = False
    if not signed:
        return f"the signed head ({HEAD_FILE}) does not verify with its signer's certificate"
    count = int(head["count"])
    if last is None:
        return f"the trail is empty but the signed head records {count} entries"
    seq = int(last["seq"])
    if count == seq and head.get("last_hash") == last["hash"]:
        return ""
    if count == seq - 1 and head.get("last_hash") == last["prev"]:
        return ""
    return (
        f"the trail ends at entry {seq} but the signed head records {count} entries "
        "ending elsewhere"
    )


class AuditLog:
    """Appends signed entries to a node's trail; safe across threads and processes."""

    def __init__(
        self,
        directory: Path,
        key_pem: bytes,
        cert_pem: bytes,
        on_append: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.on_append = on_append  # told of every entry written (the node's metrics)
        self._key_pem = key_pem
        self._cert_pem = cert_pem
        self._signer = certificate_fingerprint(cert_pem)
        self._lock = threading.Lock()
        self._written: tuple[int, str] | None = None  # (seq, hash) this process wrote last
        try:
            directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            (directory / SIGNERS_DIR).mkdir(mode=DIRECTORY_MODE, exist_ok=True)
            for folder in (directory, directory / SIGNERS_DIR):
                os.chmod(folder, DIRECTORY_MODE)
            for written in (directory / TRAIL_FILE, directory / HEAD_FILE):
                if written.exists():  # a trail from an older version: 0640 then
                    os.chmod(written, FILE_MODE)
            signer = directory / SIGNERS_DIR / f"{self._signer}.pem"
            if not signer.exists():
                fd = os.open(signer, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                try:
                    os.write(fd, cert_pem)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise AuditError(
                f"{directory}: cannot prepare the audit trail: {exc.strerror}"
            ) from None

    def append(self, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry; returns it as written (with seq, hash and signature).

        A last line torn by a crash mid-write (no newline at its end) is first set
        aside by `_repair_torn_tail`, and the repair is itself an entry.
        """
        trail = self.directory / TRAIL_FILE
        with self._lock, locked(self.directory, exclusive=True):
            try:
                repair = _repair_torn_tail(self.directory, trail)
            except OSError as exc:
                raise AuditError(
                    f"{trail}: cannot set aside a torn last line: {exc.strerror}"
                ) from None
            if repair is not None:
                self._appendlocked(trail, "trail-repaired", repair)
            return self._appendlocked(trail, event, fields)

    def signed_head(self, jurisdiction: str) -> SignedHead:
        """The trail's head now (entry count and the last entry's chain hash), signed.

        Read under both locks, so the pair is consistent; called after an answer's
        entry was appended, the head is at or after that entry.
        """
        trail = self.directory / TRAIL_FILE
        with self._lock, locked(self.directory, exclusive=False):
            last = last_entry(trail)
        entries = 0 if last is None else int(last["seq"])
        try:
            digest = bytes.fromhex(GENESIS if last is None else str(last["hash"]))
        except ValueError:
            raise AuditError(f"{trail}: the last entry's hash is not hex") from None
        return sign_head(self._key_pem, jurisdiction, entries, digest, int(time.time() * 1000))

    def check(self) -> None:
        """Raise AuditError (one line) when the node could not extend its trail.

        A last line torn by a crash is first set aside, as the next append would do
        (`_repair_torn_tail`), and the repair is recorded: a torn write is the one
        damage a node repairs by itself, because it can only have been its own.
        """
        trail = self.directory / TRAIL_FILE
        with self._lock, locked(self.directory, exclusive=True):
            try:
                repair = _repair_torn_tail(self.directory, trail)
            except OSError as exc:
                raise AuditError(
                    f"{trail}: cannot set aside a torn last line: {exc.strerror}"
                ) from None
            if repair is not None:
                self._appendlocked(trail, "trail-repaired", repair)
            else:
                self._extendable(trail)

    def _extendable(self, trail: Path) -> dict[str, Any] | None:
        """The last entry, once it is known to match the signed head and this process's writes."""
        last = last_entry(trail)
        problem = head_problem(self.directory, last)
        if not problem and self._written is not None:
            seq, digest = self._written
            if last is None or int(last["seq"]) < seq:
                problem = f"the trail was cut back below entry {seq}, which this node wrote"
            elif int(last["seq"]) == seq and last["hash"] != digest:
                problem = f"entry {seq}, which this node wrote, was replaced"
        if problem:
            log.critical("ALERT: audit trail %s tampered with, appends refused: %s", trail, problem)
            raise AuditError(
                f"{trail}: {problem}; the node answers nothing until its operator runs "
                "`fedtrace audit verify` and restores the trail"
            )
        return last

    def _appendlocked(self, trail: Path, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Write one entry and move the head; the caller holds both locks."""
        last = self._extendable(trail)
        entry: dict[str, Any] = {
            **fields,
            "event": event,
            "seq": 1 if last is None else int(last["seq"]) + 1,
            "time": _now_text(),
            "prev": GENESIS if last is None else str(last["hash"]),
            "signer": self._signer,
        }
        digest = entry_hash(entry)
        entry["hash"] = digest
        entry["signature"] = sign(self._key_pem, bytes.fromhex(digest)).hex()
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
        try:
            fd = os.open(trail, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._written = (int(entry["seq"]), digest)
            self._write_head(entry)
        except OSError as exc:
            raise AuditError(f"{trail}: cannot append to the audit trail: {exc.strerror}") from None
        if self.on_append is not None:
            self.on_append()
        return entry

    def _write_head(self, entry: Mapping[str, Any]) -> None:
        head: dict[str, Any] = {
            "count": entry["seq"],
            "last_hash": entry["hash"],
            "time": entry["time"],
            "signer": self._signer,
        }
        head["signature"] = sign(self._key_pem, head_digest(head)).hex()
        path = self.directory / HEAD_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, canonical_json(head) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _repair_torn_tail(directory: Path, trail: Path) -> dict[str, Any] | None:
    """Make the trail end with a whole line again after a crash tore its last write.

    Caller holds the exclusive lock. A last line that is a complete, self-consistent
    entry lacking only its newline gets the newline. Anything else after the last
    newline is copied to ``torn-<time>.partial`` beside the trail and cut off; the
    returned fields describe the repair for a ``trail-repaired`` entry. Returns None
    when the trail is whole.
    """
    if not trail.exists():
        return None
    with trail.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        keep = line_start(handle, size)  # a fragment of any length is found whole
        handle.seek(keep)
        fragment = handle.read()
    try:
        entry = json.loads(fragment)
        whole = isinstance(entry, dict) and entry_hash(entry) == entry.get("hash")
    except ValueError:
        whole = False
    if whole:
        fd = os.open(trail, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = directory / f"torn-{stamp}.partial"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.write(fd, fragment)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.truncate(trail, keep)
    fd = os.open(trail, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {
        "outcome": "repaired",
        "reason": "the last line was torn by a crash mid-write; it was set aside, not an entry",
        "torn_bytes": len(fragment),
        "torn_sha256": hashlib.sha256(fragment).hexdigest(),
        "set_aside": aside.name,
    }

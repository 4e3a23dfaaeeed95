"""The node's audit trail: an append-only, hash-chained, signed JSON-lines file.

Storage (docs/audit.md, docs/decisions.md): ``NODE_DIR/audit/audit.jsonl``, one
entry a line. Each entry carries its sequence number, the hash of the entry
before it (``prev``), its own hash (SHA-256 over the canonical JSON of
everything else, domain-separated) and the node's ECDSA signature over that
hash. ``audit/head.json`` is a signed head (entry count and last hash),
rewritten after every append, so deleting the last entries is detected too.
``audit/signers/<sha256>.pem`` keeps each certificate that signed, so a trail
stays verifiable after the node's certificate is renewed.

Appends take an exclusive `flock` on ``audit/.lock``, write the whole line with
one `write` on an O_APPEND descriptor and `fsync` it before the head moves;
readers (`audit show`, `audit verify`) take a shared lock, so the officer's
commands work while the node serves. A plain file is used rather than DuckDB
because DuckDB admits one process at a time and the trail must be readable
while the node runs.

Entries never hold a raw or blinded identifier: callers pass counts, codes and
references only.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fedtrace.errors import FedtraceError
from fedtrace.pki import InvalidCertificate, PkiError, sign, verify_issued_by, verify_signature

AUDIT_DIR = "audit"
TRAIL_FILE = "audit.jsonl"
HEAD_FILE = "head.json"
LOCK_FILE = ".lock"
SIGNERS_DIR = "signers"
ENTRY_DOMAIN = b"fedtrace-audit-entry-v1\x00"
HEAD_DOMAIN = b"fedtrace-audit-head-v1\x00"
GENESIS = "0" * 64
_TAIL_BYTES = 1 << 16
_SEALED = ("hash", "signature")


class AuditError(FedtraceError):
    """The audit trail cannot be read or appended; the message says where and what to do."""


def canonical_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in _SEALED}
    return hashlib.sha256(ENTRY_DOMAIN + canonical_json(body)).hexdigest()


def head_digest(head: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in head.items() if k != "signature"}
    return hashlib.sha256(HEAD_DOMAIN + canonical_json(body)).digest()


def _now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fingerprint(cert_pem: bytes) -> str:
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()


@contextlib.contextmanager
def _locked(directory: Path, exclusive: bool) -> Iterator[None]:
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:
        raise AuditError(f"{directory}: cannot open the audit lock: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _last_entry(path: Path) -> dict[str, Any] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - _TAIL_BYTES))
        tail = handle.read()
    if not tail.endswith(b"\n"):
        raise AuditError(
            f"{path}: the last line is incomplete; run `fedtrace audit verify` and "
            "restore the trail before the node can answer again"
        )
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        entry = json.loads(last)
        int(entry["seq"]), str(entry["hash"])
    except (ValueError, KeyError, TypeError):
        raise AuditError(
            f"{path}: the last line is not an audit entry; run `fedtrace audit "
            "verify` and restore the trail before the node can answer again"
        ) from None
    return dict(entry)


class AuditLog:
    """Appends signed entries to a node's trail; safe across threads and processes."""

    def __init__(self, directory: Path, key_pem: bytes, cert_pem: bytes) -> None:
        self.directory = directory
        self._key_pem = key_pem
        self._cert_pem = cert_pem
        self._signer = _fingerprint(cert_pem)
        self._lock = threading.Lock()
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            (directory / SIGNERS_DIR).mkdir(mode=0o750, exist_ok=True)
            signer = directory / SIGNERS_DIR / f"{self._signer}.pem"
            if not signer.exists():
                signer.write_bytes(cert_pem)
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
        with self._lock, _locked(self.directory, exclusive=True):
            try:
                repair = _repair_torn_tail(self.directory, trail)
            except OSError as exc:
                raise AuditError(
                    f"{trail}: cannot set aside a torn last line: {exc.strerror}"
                ) from None
            if repair is not None:
                self._append_locked(trail, "trail-repaired", repair)
            return self._append_locked(trail, event, fields)

    def _append_locked(self, trail: Path, event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Write one entry and move the head; the caller holds both locks."""
        last = _last_entry(trail)
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
            fd = os.open(trail, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._write_head(entry)
        except OSError as exc:
            raise AuditError(f"{trail}: cannot append to the audit trail: {exc.strerror}") from None
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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
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


# --- reading and verifying ------------------------------------------------------------------


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
        start = max(0, size - _TAIL_BYTES)
        handle.seek(start)
        tail = handle.read()
    cut = tail.rfind(b"\n")
    keep = start + cut + 1 if cut >= 0 else 0  # a fragment longer than the tail: cut it all
    fragment = tail[cut + 1 :] if cut >= 0 else tail
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
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
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


def read_trail(directory: Path) -> tuple[list[str], dict[str, Any] | None]:
    """The trail's lines and its head, read under a shared lock (a consistent snapshot)."""
    lines, head, _ = _read_trail(directory)
    return lines, head


def _read_trail(directory: Path) -> tuple[list[str], dict[str, Any] | None, bool]:
    """As `read_trail`, plus whether the last line is torn (the file ends without a newline)."""
    if not directory.is_dir():
        return [], None, False
    with _locked(directory, exclusive=False):
        trail = directory / TRAIL_FILE
        raw = trail.read_text(encoding="utf-8", errors="replace") if trail.exists() else ""
        lines = raw.splitlines()
        torn = bool(raw) and not raw.endswith("\n")
        head_path = directory / HEAD_FILE
        head: dict[str, Any] | None = None
        if head_path.exists():
            try:
                head = dict(json.loads(head_path.read_text(encoding="utf-8")))
            except ValueError:
                head = {"unreadable": True}
    return lines, head, torn


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    problem: str  # the first problem, naming the entry; "" when ok
    notes: tuple[str, ...]


class _Signers:
    def __init__(self, directory: Path, ca_pem: bytes | None, jurisdiction: str | None) -> None:
        self.directory = directory
        self.ca_pem = ca_pem
        self.jurisdiction = jurisdiction
        self.checked: dict[str, bytes] = {}

    def certificate(self, fingerprint: str, at: dt.datetime) -> tuple[bytes | None, str]:
        if fingerprint in self.checked:
            return self.checked[fingerprint], ""
        path = self.directory / SIGNERS_DIR / f"{fingerprint}.pem"
        try:
            pem = path.read_bytes()
        except OSError:
            return None, f"its signer's certificate {path} is missing"
        if _fingerprint(pem) != fingerprint:
            return None, f"{path} is not the certificate its name says"
        if self.ca_pem is not None:
            try:
                identity = verify_issued_by(pem, self.ca_pem, at=at)
            except (InvalidCertificate, PkiError) as exc:
                return None, f"its signer's certificate is not valid: {exc}"
            if self.jurisdiction and identity.jurisdiction != self.jurisdiction:
                return None, (
                    f"it is signed by {identity.describe()}, not by node {self.jurisdiction}"
                )
        self.checked[fingerprint] = pem
        return pem, ""


def _entry_time(entry: Mapping[str, Any]) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.now(dt.UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def verify_trail(
    directory: Path, *, ca_pem: bytes | None = None, jurisdiction: str | None = None
) -> Verification:
    """Check every entry's hash, signature, number and chain link, then the signed head.

    The first problem is named: an entry edited, deleted, inserted or reordered, or
    entries missing at the end of the trail.
    """
    lines, head, torn = _read_trail(directory)
    torn_note: tuple[str, ...] = ()
    if torn and lines:  # a crash tore the last write: not an entry, and never in the head
        fragment = lines.pop()
        torn_note = (
            f"line {len(lines) + 1} is a torn write ({len(fragment)} characters, no newline), "
            "not an entry; the node sets it aside on its next append",
        )
    signers = _Signers(directory, ca_pem, jurisdiction)
    parsed: list[dict[str, Any] | None] = []
    for text in lines:
        try:
            value = json.loads(text)
            parsed.append(value if isinstance(value, dict) else None)
        except ValueError:
            parsed.append(None)
    where_seq: dict[int, int] = {}
    for number, entry in enumerate(parsed, 1):
        if entry is not None and isinstance(entry.get("seq"), int):
            where_seq.setdefault(entry["seq"], number)

    def fail(message: str) -> Verification:
        return Verification(False, len(lines), message, ())

    previous_hash = GENESIS
    seen: dict[int, int] = {}
    for number, entry in enumerate(parsed, 1):
        expected = number
        if (
            entry is None
            or not isinstance(entry.get("seq"), int)
            or not all(
                isinstance(entry.get(k), str) for k in ("hash", "signature", "prev", "signer")
            )
        ):
            return fail(
                f"line {number} (entry {expected}) is not a well-formed audit entry: "
                "edited or inserted"
            )
        seq = int(entry["seq"])
        label = f"entry {seq} (line {number})"
        if entry_hash(entry) != entry["hash"]:
            return fail(f"{label} was edited: its content does not match its hash")
        pem, why = signers.certificate(str(entry["signer"]), _entry_time(entry))
        if pem is None:
            return fail(f"{label} cannot be trusted: {why}")
        try:
            signed = verify_signature(
                pem, bytes.fromhex(entry["hash"]), bytes.fromhex(entry["signature"])
            )
        except ValueError:
            signed = False
        if not signed:
            return fail(
                f"{label} was edited or forged: its signature does not verify with the node's key"
            )
        if seq in seen:
            return fail(f"{label} was inserted: it repeats entry {seq} of line {seen[seq]}")
        if seq != expected:
            if seq > expected and expected not in where_seq:
                missing = (
                    f"entry {expected}" if seq == expected + 1 else f"entries {expected}-{seq - 1}"
                )
                return fail(
                    f"{missing} deleted: line {number} holds entry {seq} where entry "
                    f"{expected} should be"
                )
            if expected in where_seq:
                return fail(
                    f"entries reordered: line {number} holds entry {seq}, but entry "
                    f"{expected} belongs here (it is at line {where_seq[expected]})"
                )
            return fail(f"{label} was inserted: entry {expected} belongs at line {number}")
        if entry["prev"] != previous_hash:
            return fail(
                f"{label} does not follow the entry before it (its chain link differs): "
                "an entry was inserted, deleted or reordered before it"
            )
        seen[seq] = number
        previous_hash = entry["hash"]
    result = _verify_head(head, parsed, signers, len(lines))
    return Verification(result.ok, result.entries, result.problem, result.notes + torn_note)


def _verify_head(
    head: dict[str, Any] | None,
    parsed: Sequence[dict[str, Any] | None],
    signers: _Signers,
    count: int,
) -> Verification:
    if head is None:
        if count == 0:
            return Verification(True, 0, "", ("the trail is empty",))
        return Verification(
            False,
            count,
            f"the signed head ({HEAD_FILE}) is missing: entries at the end may have been deleted",
            (),
        )
    fields = ("count", "last_hash", "time", "signer", "signature")
    if (
        head.get("unreadable")
        or not all(k in head for k in fields)
        or not isinstance(head["count"], int)
    ):
        return Verification(
            False,
            count,
            f"the signed head ({HEAD_FILE}) was edited: it is not a well-formed head",
            (),
        )
    pem, why = signers.certificate(str(head["signer"]), _entry_time(head))
    try:
        signed = pem is not None and verify_signature(
            pem, head_digest(head), bytes.fromhex(str(head["signature"]))
        )
    except ValueError:
        signed = False
    if not signed:
        return Verification(
            False,
            count,
            f"the signed head ({HEAD_FILE}) was edited or forged"
            + (f": {why}" if why else ": its signature does not verify"),
            (),
        )
    recorded = int(head["count"])
    if recorded > count:
        missing = (
            f"entry {recorded}" if recorded == count + 1 else f"entries {count + 1}-{recorded}"
        )
        return Verification(
            False,
            count,
            f"{missing} deleted from the end of the trail (the "
            f"signed head records {recorded} entries, the file holds {count})",
            (),
        )
    last = parsed[recorded - 1] if recorded else None
    if recorded and (last is None or last.get("hash") != head["last_hash"]):
        return Verification(
            False,
            count,
            f"entry {recorded} does not match the signed head: the end of the trail was replaced",
            (),
        )
    notes: tuple[str, ...] = ()
    if recorded < count:  # a crash between an append and its head update
        notes = (
            f"the signed head records {recorded} of {count} entries (the node stopped "
            "between writing an entry and its head); the later entries verify on their own",
        )
    return Verification(True, count, "", notes)


# --- showing ---------------------------------------------------------------------------------


SHOW_COLUMNS = (
    "seq",
    "time",
    "event",
    "partner",
    "role",
    "case_ref",
    "legal_basis",
    "kind",
    "dataset",
    "item_count",
    "disclosure",
    "outcome",
    "reason",
)


def entries(directory: Path) -> list[dict[str, Any]]:
    """Every well-formed entry, in file order (use `verify_trail` to trust them)."""
    lines, _ = read_trail(directory)
    out = []
    for text in lines:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def select(
    all_entries: Sequence[Mapping[str, Any]],
    *,
    partner: str | None = None,
    case: str | None = None,
    since: dt.datetime | None = None,
) -> list[Mapping[str, Any]]:
    chosen = []
    for entry in all_entries:
        peer = entry.get("peer") or {}
        if partner and (not isinstance(peer, dict) or peer.get("jurisdiction") != partner):
            continue
        if case and entry.get("case_ref") != case:
            continue
        if since and _entry_time(entry) < since:
            continue
        chosen.append(entry)
    return chosen


def _flat(entry: Mapping[str, Any]) -> dict[str, str]:
    peer = entry.get("peer") if isinstance(entry.get("peer"), dict) else {}
    assert isinstance(peer, dict)
    row = {column: entry.get(column, "") for column in SHOW_COLUMNS}
    row["partner"] = peer.get("jurisdiction", "")
    row["role"] = peer.get("role", "")
    return {k: "" if v is None else str(v) for k, v in row.items()}


def render_entries(chosen: Sequence[Mapping[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(list(chosen), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=(*SHOW_COLUMNS, "policy_version", "budget"), lineterminator="\n"
        )
        writer.writeheader()
        for entry in chosen:
            row: dict[str, str] = _flat(entry)
            row["policy_version"] = str(entry.get("policy_version", ""))
            budget = entry.get("budget")
            row["budget"] = json.dumps(budget, sort_keys=True) if budget else ""
            writer.writerow(row)
        return buffer.getvalue()
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=160, force_terminal=False, color_system=None)
    table = Table(box=box.SIMPLE_HEAVY, title=f"{len(chosen)} audit entries", title_justify="left")
    shown = (
        "seq",
        "time",
        "event",
        "partner",
        "case_ref",
        "legal_basis",
        "kind",
        "dataset",
        "item_count",
        "disclosure",
        "outcome",
        "reason",
    )
    for column in shown:
        table.add_column(column.replace("_", " "), overflow="fold")
    for entry in chosen:
        row = _flat(entry)
        table.add_row(*(row[c] or "-" for c in shown))
    console.print(table)
    return str(console.file.getvalue())  # type: ignore[attr-defined]

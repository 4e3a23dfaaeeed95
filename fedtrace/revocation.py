"""The federation's revocation list: certificates the secretariat has withdrawn before they expire.

The secretariat keeps ``CA_DIR/revoked.toml`` (`fedtrace pki revoke CA_DIR
--serial S` or ``--cert PEM``) and distributes it to every member. A node names
its copy in ``node.toml`` (``[tls] revoked``, default ``tls/revoked.toml``) and an
investigator in FED.toml (``[investigator] revoked``). A node refuses calls from a
revoked certificate with ``UNAUTHENTICATED`` (node.auth) and audits the attempt;
a coordinator refuses a node whose signing certificate is revoked.

The list is signed by the federation CA: `fedtrace pki revoke` writes
``revoked.toml.sig`` beside it (hex ECDSA P-256 signature by ``ca.key`` over a
domain tag and the file's exact bytes), and whoever loads it with the CA's
certificate (`load_revocations(path, ca_pem=...)`, `RevocationWatch`) refuses a
list without a signature, or whose signature does not verify, with one line. So a
member cannot quietly drop an entry from its copy, nor can anyone who can write
the file but does not hold the CA key.

The file is re-read when it (or its signature) changes (size or mtime), so a node
picks up a new list without a restart. A missing file is an empty list; an
unreadable, invalid or badly signed one is an error at start and, once running,
leaves the previous list in force (logged).

Format::

    # fedtrace revocation list, written by `fedtrace pki revoke`
    [[revoked]]
    serial = "3f9a…"                 # hex, as `Identity.serial`
    fingerprint_sha256 = "ab12…"     # optional; either identifies the certificate
    jurisdiction = "EE"              # informational
    reason = "key compromise"
    revoked_at = "2026-11-25T10:00:00Z"
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from fedtrace.errors import ConfigError
from fedtrace.pki import (
    CA_KEY_FILE,
    Identity,
    InvalidCertificate,
    PkiError,
    load_certificate,
    read_key_pem,
    sign,
    verify_signature,
)
from fedtrace.pki import identity_from_certificate as _identity_of
from fedtrace.tomlconfig import TableReader, load_toml

log = logging.getLogger(__name__)

REVOCATION_FILE = "revoked.toml"
SIGNATURE_SUFFIX = ".sig"
SIGNATURE_DOMAIN = b"fedtrace-revocation-list-v1\x00"
_HEX = re.compile(r"^[0-9a-f]+$")


def signature_path(path: Path) -> Path:
    """Where the CA's detached signature of the list at `path` lives."""
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def sign_list(ca_dir: Path, path: Path) -> Path:
    """Sign the list at `path` with ``CA_DIR/ca.key``; returns the signature file."""
    key_pem = read_key_pem(Path(ca_dir) / CA_KEY_FILE)
    signature = sign(key_pem, SIGNATURE_DOMAIN + path.read_bytes()).hex()
    target = signature_path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(signature + "\n", encoding="ascii")
    os.chmod(tmp, 0o644)
    tmp.replace(target)
    return target


def check_signature(path: Path, raw: bytes, ca_pem: bytes) -> None:
    """Raise ConfigError (one line) unless the federation CA signed exactly `raw`."""
    signature_file = signature_path(path)
    try:
        text = signature_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(
            f"{path}: the revocation list is not signed ({signature_file.name} is missing); "
            "use the list and signature `fedtrace pki revoke` wrote on the secretariat's machine"
        ) from None
    try:
        signed = verify_signature(ca_pem, SIGNATURE_DOMAIN + raw, bytes.fromhex(text))
    except (ValueError, InvalidCertificate):
        signed = False
    if not signed:
        raise ConfigError(
            f"{path}: the revocation list's signature does not verify with the federation "
            f"CA: it was edited after signing or not issued by the secretariat; refused"
        )


@dataclass(frozen=True)
class Revocation:
    serial: str
    fingerprint_sha256: str
    jurisdiction: str
    reason: str
    revoked_at: str


@dataclass(frozen=True)
class RevocationList:
    entries: tuple[Revocation, ...] = ()

    def find(self, identity: Identity) -> Revocation | None:
        """The entry that revokes this certificate (by serial or fingerprint), if any."""
        for entry in self.entries:
            if entry.serial and entry.serial == identity.serial:
                return entry
            if entry.fingerprint_sha256 and entry.fingerprint_sha256 == identity.fingerprint_sha256:
                return entry
        return None


def _hex(value: str, where: str, key: str) -> str:
    text = value.strip().lower().replace(":", "")
    if text.startswith("0x"):
        text = text[2:]
    if not text or not _HEX.match(text):
        raise ConfigError(f"{where}: {key!r} must be hexadecimal, got {value!r}")
    if key == "serial":
        return text.lstrip("0") or "0"
    return text


def parse_revocations(document: dict[str, object], where: str) -> RevocationList:
    top = TableReader(dict(document), where, ("revoked",))
    entries = []
    for number, table in enumerate(top.tables("revoked"), 1):
        reader = TableReader(
            table,
            f"{where} [[revoked]] #{number}",
            ("serial", "fingerprint_sha256", "jurisdiction", "reason", "revoked_at"),
        )
        label = f"{where} [[revoked]] #{number}"
        serial = reader.optional("serial", str, "")
        fingerprint = reader.optional("fingerprint_sha256", str, "")
        jurisdiction = reader.optional("jurisdiction", str, "")
        reason = reader.optional("reason", str, "")
        revoked_at = reader.optional("revoked_at", str, "")
        reader.finish()  # a misspelt key is named before anything else
        if not serial and not fingerprint:
            raise ConfigError(f"{label}: give 'serial' or 'fingerprint_sha256'")
        entries.append(
            Revocation(
                serial=_hex(serial, label, "serial") if serial else "",
                fingerprint_sha256=_hex(fingerprint, label, "fingerprint_sha256")
                if fingerprint
                else "",
                jurisdiction=jurisdiction,
                reason=reason,
                revoked_at=revoked_at,
            )
        )
    top.finish()
    return RevocationList(tuple(entries))


def load_revocations(path: Path, *, ca_pem: bytes | None = None) -> RevocationList:
    """The list in `path`; a missing file is an empty list, a broken one a ConfigError.

    With `ca_pem` (the federation CA's certificate) the list must carry the CA's
    signature (`check_signature`); callers that trust a list must pass it.
    """
    if not path.exists():
        return RevocationList()
    if ca_pem is not None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the revocation list: {exc.strerror}") from None
        check_signature(path, raw, ca_pem)
    return parse_revocations(load_toml(path, "revocation list"), str(path))


def _stamp(path: Path) -> tuple[int, int, int, int]:
    stamps: list[int] = []
    for each in (path, signature_path(path)):
        try:
            info = os.stat(each)
        except OSError:
            stamps += [0, 0]
        else:
            stamps += [info.st_mtime_ns, info.st_size]
    return (stamps[0], stamps[1], stamps[2], stamps[3])


class RevocationWatch:
    """The revocation list in `path` (signed by the CA of `ca_pem`), re-read when it changes."""

    def __init__(self, path: Path, *, ca_pem: bytes | None = None) -> None:
        self.path = path
        self.ca_pem = ca_pem
        self._lock = threading.Lock()
        self._stamp = _stamp(path)
        self._list = load_revocations(path, ca_pem=ca_pem)

    def current(self) -> RevocationList:
        with self._lock:
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._list = load_revocations(self.path, ca_pem=self.ca_pem)
                except ConfigError as exc:
                    log.error("revocation list not reloaded, the previous one stays: %s", exc)
            return self._list


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def revoke(
    ca_dir: Path,
    *,
    serial: str = "",
    cert: Path | None = None,
    reason: str = "",
    now: dt.datetime | None = None,
) -> tuple[Path, Revocation]:
    """Add a certificate to ``CA_DIR/revoked.toml`` (written atomically) and sign the list
    with the CA key (``revoked.toml.sig``); return path and entry."""
    ca_dir = Path(ca_dir)
    if not (ca_dir / CA_KEY_FILE).is_file():
        raise PkiError(
            f"the CA directory {ca_dir} holds no {CA_KEY_FILE}: revoke on the secretariat's "
            "machine that holds the CA"
        )
    where = "--serial"
    jurisdiction, fingerprint = "", ""
    if cert is not None:
        identity = _identity_of(load_certificate(cert))
        serial, fingerprint, jurisdiction = (
            identity.serial,
            identity.fingerprint_sha256,
            identity.jurisdiction,
        )
    if not serial:
        raise PkiError("name the certificate to revoke with --serial HEX or --cert PEM")
    serial = _hex(serial, where, "serial")
    path = ca_dir / REVOCATION_FILE
    current = load_revocations(path)
    moment = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = Revocation(serial, fingerprint, jurisdiction, reason, moment)
    if any(e.serial == serial for e in current.entries):
        sign_list(ca_dir, path)  # an unsigned list from an older version gets its signature
        return path, next(e for e in current.entries if e.serial == serial)
    lines = [
        "# fedtrace revocation list, written by `fedtrace pki revoke`; distribute it to every",
        "# member: node.toml [tls] revoked, FED.toml [investigator] revoked.",
        "",
    ]
    for item in (*current.entries, entry):
        lines.append("[[revoked]]")
        lines.append(f"serial = {_toml_string(item.serial)}")
        if item.fingerprint_sha256:
            lines.append(f"fingerprint_sha256 = {_toml_string(item.fingerprint_sha256)}")
        if item.jurisdiction:
            lines.append(f"jurisdiction = {_toml_string(item.jurisdiction)}")
        lines.append(f"reason = {_toml_string(item.reason)}")
        lines.append(f"revoked_at = {_toml_string(item.revoked_at)}")
        lines.append("")
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    sign_list(ca_dir, path)
    return path, entry

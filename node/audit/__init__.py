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

The trail's format is `node.audit.chain`; `node.audit.log` writes it (refusing
to extend a trail whose end does not match its signed head), `node.audit.verify`
checks it, `node.audit.show` reads and renders it, and `node.audit.anchor` keeps
its genesis and high-water mark in the node's database, where deleting the
trail's files does not remove them. The names callers use are re-exported here.
"""

from __future__ import annotations

from node.audit.chain import (
    AUDIT_DIR,
    HEAD_FILE,
    SIGNERS_DIR,
    TRAIL_FILE,
    AuditError,
    canonical_json,
    entry_hash,
    head_digest,
    read_trail,
)
from node.audit.log import AuditLog
from node.audit.show import SHOW_COLUMNS, entries, render_entries, select
from node.audit.verify import Verification, verify_trail

__all__ = [
    "AUDIT_DIR",
    "HEAD_FILE",
    "SHOW_COLUMNS",
    "SIGNERS_DIR",
    "TRAIL_FILE",
    "AuditError",
    "AuditLog",
    "Verification",
    "canonical_json",
    "entries",
    "entry_hash",
    "head_digest",
    "read_trail",
    "render_entries",
    "select",
    "verify_trail",
]

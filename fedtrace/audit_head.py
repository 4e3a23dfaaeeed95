"""Signed audit heads: a node's statement of how long its audit trail is and how it ends.

A node signs, with every answer and in GetInfo, the number of entries in its audit
trail and the chain hash of the last one (docs/audit-heads.md). A partner that
keeps such a head can later show that the node's trail was rolled back, truncated,
rewritten or wiped behind it: `fedtrace audit verify NODE_DIR --heads HEADS.json`
checks the trail against every head collected.

The signature is ECDSA P-256 / SHA-256 (DER) by the node's certificate key over the
RFC 8785 canonical JSON of the statement::

    {"v": 1, "kind": "fedtrace-audit-head", "jurisdiction": ..., "entries": N,
     "head_sha256": "<hex>", "timestamp_unix_ms": T}

Shared by node (signs) and coordinator (verifies); bytes travel as lowercase hex in
JSON and as raw bytes in `node_pb2.AuditHead`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedtrace.canonical import canonical_json
from fedtrace.pki import InvalidCertificate, sign, verify_signature
from fedtrace.v1 import node_pb2

HEAD_VERSION = 1
HEAD_KIND = "fedtrace-audit-head"
HASH_BYTES = 32
#: The keys of a head in JSON (reports and HEADS.json), in the order written.
HEAD_KEYS = ("jurisdiction", "entries", "head_sha256", "timestamp_unix_ms", "signature")


def head_statement(
    jurisdiction: str, entries: int, head_sha256: bytes, timestamp_unix_ms: int
) -> bytes:
    """The exact bytes a node signs for a head."""
    return canonical_json(
        {
            "v": HEAD_VERSION,
            "kind": HEAD_KIND,
            "jurisdiction": jurisdiction,
            "entries": entries,
            "head_sha256": head_sha256.hex(),
            "timestamp_unix_ms": timestamp_unix_ms,
        }
    )


@dataclass(frozen=True)
class SignedHead:
    """One signed head: `entries` entries, the last with chain hash `head_sha256`."""

    jurisdiction: str
    entries: int
    head_sha256: bytes
    timestamp_unix_ms: int
    signature: bytes

    def statement(self) -> bytes:
        return head_statement(
            self.jurisdiction, self.entries, self.head_sha256, self.timestamp_unix_ms
        )

    def verifies(self, certificate_pem: bytes) -> bool:
        """Whether the signature is `certificate_pem`'s key's over this head's statement."""
        if len(self.head_sha256) != HASH_BYTES or self.entries < 0:
            return False
        try:
            return verify_signature(certificate_pem, self.statement(), self.signature)
        except (ValueError, InvalidCertificate):
            return False

    @property
    def signed_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.timestamp_unix_ms / 1000, dt.UTC)

    def describe(self) -> str:
        """``head of 12 entries (3f2a9c…) signed at 2026-11-30T06:00:00Z``."""
        moment = self.signed_at.isoformat(timespec="seconds").replace("+00:00", "Z")
        return f"head of {self.entries} entries ({self.head_sha256.hex()[:16]}…) signed at {moment}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "jurisdiction": self.jurisdiction,
            "entries": self.entries,
            "head_sha256": self.head_sha256.hex(),
            "timestamp_unix_ms": self.timestamp_unix_ms,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> SignedHead:
        """Parse a head from JSON strictly (ValueError naming what is wrong)."""
        if not isinstance(document, Mapping):
            raise ValueError("an audit head must be a JSON object")
        missing = [k for k in HEAD_KEYS if k not in document]
        if missing:
            raise ValueError(f"an audit head lacks {', '.join(missing)}")
        jurisdiction = document["jurisdiction"]
        entries = document["entries"]
        stamp = document["timestamp_unix_ms"]
        if not isinstance(jurisdiction, str):
            raise ValueError("an audit head's jurisdiction must be a string")
        for name, value in (("entries", entries), ("timestamp_unix_ms", stamp)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"an audit head's {name} must be a non-negative integer")
        try:
            head_sha256 = bytes.fromhex(str(document["head_sha256"]))
            signature = bytes.fromhex(str(document["signature"]))
        except ValueError:
            raise ValueError("an audit head's head_sha256 and signature must be hex") from None
        if len(head_sha256) != HASH_BYTES:
            raise ValueError(f"an audit head's head_sha256 must be {HASH_BYTES} bytes")
        return cls(jurisdiction, entries, head_sha256, stamp, signature)

    def to_proto(self) -> node_pb2.AuditHead:
        return node_pb2.AuditHead(
            jurisdiction=self.jurisdiction,
            entries=self.entries,
            head_sha256=self.head_sha256,
            timestamp_unix_ms=self.timestamp_unix_ms,
            signature=self.signature,
        )

    @classmethod
    def from_proto(cls, message: node_pb2.AuditHead) -> SignedHead:
        return cls(
            jurisdiction=message.jurisdiction,
            entries=int(message.entries),
            head_sha256=bytes(message.head_sha256),
            timestamp_unix_ms=int(message.timestamp_unix_ms),
            signature=bytes(message.signature),
        )


def sign_head(
    key_pem: bytes, jurisdiction: str, entries: int, head_sha256: bytes, timestamp_unix_ms: int
) -> SignedHead:
    """A head signed with the node's certificate key."""
    statement = head_statement(jurisdiction, entries, head_sha256, timestamp_unix_ms)
    return SignedHead(
        jurisdiction, entries, head_sha256, timestamp_unix_ms, sign(key_pem, statement)
    )

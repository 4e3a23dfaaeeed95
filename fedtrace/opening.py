"""Sealed openings: what an investigator's client commits to, readable only by a named monitor.

With every match or aggregate query under a grant that names a monitor (a data-protection
supervisor), the client signs a *statement* (canonical JSON: who asked whom, for what, and
SHA-256 digests of the exact points or indicator ciphertexts sent) and encrypts an *opening*
(canonical JSON: the items as hashed to the group and the blinding that hid them, or for the
aggregate's second round the HE secret key and the indicator) to the monitor's P-256 key with
HPKE (RFC 9180, base mode). The node checks the form and the signature, binds the sealed
opening to its audit trail and stores it; it cannot open it. The monitor later opens it and
recomputes what an honest client would have sent.

HPKE here is single-shot (``cryptography``'s ``hpke.Suite``), which takes no associated data,
so the statement is bound through HPKE's ``info``: ``b"fedtrace-opening-v1" ‖ SHA-256(statement)``.
The wire's ``enc`` is the 65-byte encapsulated key (uncompressed P-256 point) and
``ciphertext`` the AEAD output that follows it. docs/accountability.md ("Formats") is
the byte-level contract.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec

from fedtrace.canonical import canonical_json
from fedtrace.errors import FedtraceError
from fedtrace.pki import PkiError, sign, verify_signature
from fedtrace.v1 import node_pb2

SUITE = "P256-SHA256-AES128GCM"
INFO = b"fedtrace-opening-v1"
VERSION = 1

KIND_MATCH = "match"
KIND_AGGREGATE_POINTS = "aggregate-points"
KIND_AGGREGATE_INDICATOR = "aggregate-indicator"
KINDS = (KIND_MATCH, KIND_AGGREGATE_POINTS, KIND_AGGREGATE_INDICATOR)

MODE_MULTIPLICATIVE = "multiplicative"
MODE_ADDITIVE = "additive"

#: An uncompressed P-256 point: HPKE's encapsulated key for DHKEM(P-256).
ENC_BYTES = 65
MAX_STATEMENT_BYTES = 4096
#: A DER ECDSA P-256 signature is at most 72 bytes.
MAX_SIGNATURE_BYTES = 80
#: Ciphertext bounds (plaintext plus the 16-byte AEAD tag): a fixed allowance for the
#: JSON frame, then per point an item of up to 220 bytes in hex and one hex scalar.
CIPHERTEXT_BASE_BYTES = 1024
CIPHERTEXT_BYTES_PER_ITEM = 512
#: The HE secret key (SEAL's serialisation at the fixed parameter set, about 787 kB) in hex.
MAX_HE_SECRET_HEX_BYTES = 2 * 900_000
#: Per matched position in an aggregate-indicator opening: up to 10 digits and a comma.
CIPHERTEXT_BYTES_PER_POSITION = 12

_SHA256_BYTES = 32
_NONCE_MAX_BYTES = 64
_HEX = re.compile(r"^(?:[0-9a-f]{2})*$")
_SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)

_STATEMENT_KEYS = frozenset(
    {
        "v",
        "kind",
        "monitor",
        "node",
        "dataset",
        "epoch_id",
        "case_ref",
        "legal_basis",
        "investigator",
        "nonce",
        "timestamp_unix_ms",
        "item_count",
        "points_sha256",
        "indicator_sha256",
        "query_id",
        "opening_sha256",
    }
)
_POINTS_OPENING_KEYS = frozenset({"v", "kind", "items", "blinding"})
_INDICATOR_OPENING_KEYS = frozenset(
    {"v", "kind", "he_secret_context", "indicator", "row_count", "positions"}
)


class OpeningError(FedtraceError):
    """A sealed opening is malformed, oversized, wrongly signed, bound to something else,
    or does not open under the monitor's key."""


# --- digests ------------------------------------------------------------------------


def points_digest(points: Iterable[bytes]) -> bytes:
    """SHA-256 over the concatenated 32-byte points exactly as sent, in order."""
    digest = hashlib.sha256()
    for point in points:
        digest.update(point)
    return digest.digest()


def indicator_digest(ciphertexts: Iterable[bytes]) -> bytes:
    """SHA-256 over ``len(c)`` (8 bytes, big-endian) ‖ ``c`` for each indicator ciphertext."""
    digest = hashlib.sha256()
    for blob in ciphertexts:
        digest.update(len(blob).to_bytes(8, "big"))
        digest.update(blob)
    return digest.digest()


def indicator_bitmap(row_count: int, positions: Iterable[int]) -> bytes:
    """The indicator as a bitmap: row ``i`` is bit ``7 - i % 8`` of byte ``i // 8`` (MSB first)."""
    bitmap = bytearray((row_count + 7) // 8)
    for position in positions:
        if not 0 <= position < row_count:
            raise OpeningError(f"position {position} outside a table of {row_count} rows")
        bitmap[position // 8] |= 0x80 >> (position % 8)
    return bytes(bitmap)


def bitmap_positions(bitmap: bytes, row_count: int) -> list[int]:
    """The rows whose bit is set in an ``indicator_bitmap``."""
    return [i for i in range(row_count) if bitmap[i // 8] & (0x80 >> (i % 8))]


def max_ciphertext_bytes(kind: str, item_count: int, row_count: int = 0) -> int:
    """The largest ciphertext a node accepts for an opening of ``kind`` over these counts."""
    if kind == KIND_AGGREGATE_INDICATOR:
        return (
            CIPHERTEXT_BASE_BYTES
            + MAX_HE_SECRET_HEX_BYTES
            + 2 * ((row_count + 7) // 8)
            + CIPHERTEXT_BYTES_PER_POSITION * max(item_count, 0)
        )
    return CIPHERTEXT_BASE_BYTES + CIPHERTEXT_BYTES_PER_ITEM * max(item_count, 0)


# --- strict JSON helpers ------------------------------------------------------------


def _parse(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise OpeningError(f"the {what} is not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise OpeningError(f"the {what} is not a JSON object")
    if canonical_json(document) != data:
        raise OpeningError(f"the {what} is not in canonical (RFC 8785) form")
    return document


def _keys(document: dict[str, Any], expected: frozenset[str], what: str) -> None:
    if set(document) != expected:
        missing = sorted(expected - set(document))
        extra = sorted(set(document) - expected)
        raise OpeningError(f"the {what} has missing keys {missing} or unknown keys {extra}")


def _text(document: dict[str, Any], key: str, what: str) -> str:
    value = document[key]
    if not isinstance(value, str):
        raise OpeningError(f"the {what}'s {key} is not a string")
    return value


def _int(document: dict[str, Any], key: str, what: str) -> int:
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OpeningError(f"the {what}'s {key} is not a non-negative integer")
    return value


def _unhex(value: Any, key: str, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str) or not _HEX.match(value):
        raise OpeningError(f"the {what}'s {key} is not lowercase hex")
    data = bytes.fromhex(value)
    if size is not None and len(data) != size:
        raise OpeningError(f"the {what}'s {key} holds {len(data)} bytes, not {size}")
    return data


def _optional_digest(value: Any, key: str, what: str) -> bytes:
    data = _unhex(value, key, what)
    if len(data) not in (0, _SHA256_BYTES):
        raise OpeningError(f"the {what}'s {key} is neither empty nor a SHA-256 digest")
    return data


# --- the statement ------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """What the investigator signs: the query and digests of exactly what it sent."""

    kind: str
    monitor: str
    node: str
    dataset: str
    epoch_id: str
    case_ref: str
    legal_basis: str
    investigator: str
    nonce: bytes  # QueryContext.nonce (for aggregate-indicator: round 1's)
    timestamp_unix_ms: int
    item_count: int
    points_sha256: bytes  # points_digest of the (round-1) points sent
    indicator_sha256: bytes = b""  # indicator_digest, aggregate-indicator only
    query_id: bytes = b""  # the node's round-1 query id, aggregate-indicator only
    opening_sha256: bytes = b""  # SHA-256 of the opening's canonical plaintext

    def as_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "kind": self.kind,
            "monitor": self.monitor,
            "node": self.node,
            "dataset": self.dataset,
            "epoch_id": self.epoch_id,
            "case_ref": self.case_ref,
            "legal_basis": self.legal_basis,
            "investigator": self.investigator,
            "nonce": self.nonce.hex(),
            "timestamp_unix_ms": self.timestamp_unix_ms,
            "item_count": self.item_count,
            "points_sha256": self.points_sha256.hex(),
            "indicator_sha256": self.indicator_sha256.hex(),
            "query_id": self.query_id.hex(),
            "opening_sha256": self.opening_sha256.hex(),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.as_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> Statement:
        """Parse a statement, refusing anything but its exact canonical form."""
        what = "statement"
        if len(data) > MAX_STATEMENT_BYTES:
            raise OpeningError(f"the statement is {len(data)} bytes; at most {MAX_STATEMENT_BYTES}")
        document = _parse(data, what)
        _keys(document, _STATEMENT_KEYS, what)
        if document["v"] != VERSION or isinstance(document["v"], bool):
            raise OpeningError(f"the statement's version {document['v']!r} is not {VERSION}")
        kind = _text(document, "kind", what)
        if kind not in KINDS:
            raise OpeningError(f"the statement's kind {kind!r} is not one of {', '.join(KINDS)}")
        nonce = _unhex(document["nonce"], "nonce", what)
        if not nonce or len(nonce) > _NONCE_MAX_BYTES:
            raise OpeningError(f"the statement's nonce must be 1 to {_NONCE_MAX_BYTES} bytes")
        statement = cls(
            kind=kind,
            monitor=_text(document, "monitor", what),
            node=_text(document, "node", what),
            dataset=_text(document, "dataset", what),
            epoch_id=_text(document, "epoch_id", what),
            case_ref=_text(document, "case_ref", what),
            legal_basis=_text(document, "legal_basis", what),
            investigator=_text(document, "investigator", what),
            nonce=nonce,
            timestamp_unix_ms=_int(document, "timestamp_unix_ms", what),
            item_count=_int(document, "item_count", what),
            points_sha256=_unhex(document["points_sha256"], "points_sha256", what, _SHA256_BYTES),
            indicator_sha256=_optional_digest(
                document["indicator_sha256"], "indicator_sha256", what
            ),
            query_id=_unhex(document["query_id"], "query_id", what),
            opening_sha256=_unhex(
                document["opening_sha256"], "opening_sha256", what, _SHA256_BYTES
            ),
        )
        indicator = statement.kind == KIND_AGGREGATE_INDICATOR
        if indicator != bool(statement.indicator_sha256) or indicator != bool(statement.query_id):
            raise OpeningError(
                "the statement's indicator_sha256 and query_id are set exactly for "
                "aggregate-indicator"
            )
        return statement

    def differences(self, expected: Statement) -> list[str]:
        """Names of the fields (other than opening_sha256) in which this differs from `expected`."""
        return [
            field.name
            for field in dataclasses.fields(self)
            if field.name != "opening_sha256"
            and getattr(self, field.name) != getattr(expected, field.name)
        ]


# --- the opening --------------------------------------------------------------------


@dataclass(frozen=True)
class Blinding:
    """How the points were blinded: one scalar ``a`` for the whole query (multiplicative,
    ``H(x)^a``), or per point ``H(x) + r·C`` with the node's blinding point ``C`` (additive)."""

    mode: str
    scalar: bytes = dataclasses.field(default=b"", repr=False)
    blinding_point: bytes = b""
    r: tuple[bytes, ...] = dataclasses.field(default=(), repr=False)

    def as_json(self) -> dict[str, Any]:
        if self.mode == MODE_MULTIPLICATIVE:
            return {"mode": self.mode, "scalar": self.scalar.hex()}
        return {
            "mode": self.mode,
            "blinding_point": self.blinding_point.hex(),
            "r": [value.hex() for value in self.r],
        }

    @classmethod
    def from_json(cls, value: Any) -> Blinding:
        what = "opening's blinding"
        if not isinstance(value, dict):
            raise OpeningError(f"the {what} is not an object")
        mode = value.get("mode")
        if mode == MODE_MULTIPLICATIVE:
            _keys(value, frozenset({"mode", "scalar"}), what)
            return cls(mode, scalar=_unhex(value["scalar"], "scalar", what, 32))
        if mode == MODE_ADDITIVE:
            _keys(value, frozenset({"mode", "blinding_point", "r"}), what)
            masks = value["r"]
            if not isinstance(masks, list):
                raise OpeningError(f"the {what}'s r is not a list")
            return cls(
                mode,
                blinding_point=_unhex(value["blinding_point"], "blinding_point", what, 32),
                r=tuple(_unhex(mask, "r", what, 32) for mask in masks),
            )
        raise OpeningError(f"the {what}'s mode {mode!r} is neither multiplicative nor additive")


@dataclass(frozen=True)
class Opening:
    """The secrets behind one statement; only the monitor ever reads them.

    ``match`` and ``aggregate-points``: ``items`` (each item's bytes exactly as hashed
    to the group, in the order of the points) and ``blinding``. ``aggregate-indicator``:
    ``he_secret_context`` (``SecretHeContext.secret_key_bytes``), ``indicator`` (an
    ``indicator_bitmap`` of what was encrypted), ``row_count`` and ``positions`` (the
    rows the client derived from round 1).
    """

    kind: str
    items: tuple[bytes, ...] = ()
    blinding: Blinding | None = None
    he_secret_context: bytes = dataclasses.field(default=b"", repr=False)
    indicator: bytes = b""
    row_count: int = 0
    positions: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        if self.kind == KIND_AGGREGATE_INDICATOR:
            return {
                "v": VERSION,
                "kind": self.kind,
                "he_secret_context": self.he_secret_context.hex(),
                "indicator": self.indicator.hex(),
                "row_count": self.row_count,
                "positions": list(self.positions),
            }
        if self.blinding is None:
            raise OpeningError(f"a {self.kind} opening needs its blinding")
        return {
            "v": VERSION,
            "kind": self.kind,
            "items": [item.hex() for item in self.items],
            "blinding": self.blinding.as_json(),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.as_json())

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Opening:
        """Parse an opening's plaintext, refusing anything but its exact canonical form."""
        what = "opening"
        document = _parse(data, what)
        kind = document.get("kind")
        if document.get("v") != VERSION or isinstance(document.get("v"), bool):
            raise OpeningError(f"the opening's version {document.get('v')!r} is not {VERSION}")
        if kind == KIND_AGGREGATE_INDICATOR:
            _keys(document, _INDICATOR_OPENING_KEYS, what)
            row_count = _int(document, "row_count", what)
            positions = document["positions"]
            if not isinstance(positions, list) or any(
                isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in positions
            ):
                raise OpeningError("the opening's positions are not non-negative integers")
            bitmap = _unhex(document["indicator"], "indicator", what, (row_count + 7) // 8)
            return cls(
                kind,
                he_secret_context=_unhex(document["he_secret_context"], "he_secret_context", what),
                indicator=bitmap,
                row_count=row_count,
                positions=tuple(positions),
            )
        if kind in (KIND_MATCH, KIND_AGGREGATE_POINTS):
            _keys(document, _POINTS_OPENING_KEYS, what)
            items = document["items"]
            if not isinstance(items, list):
                raise OpeningError("the opening's items are not a list")
            return cls(
                kind,
                items=tuple(_unhex(item, "items", what) for item in items),
                blinding=Blinding.from_json(document["blinding"]),
            )
        raise OpeningError(f"the opening's kind {kind!r} is not one of {', '.join(KINDS)}")


# --- sealing, checking, opening ----------------------------------------------------


@dataclass(frozen=True)
class SealedOpening:
    """One opening sealed to one monitor, as it travels (``fedtrace.v1.SealedOpening``)."""

    monitor: str
    suite: str
    enc: bytes
    ciphertext: bytes = dataclasses.field(repr=False)
    statement: bytes
    signature: bytes

    def to_proto(self) -> node_pb2.SealedOpening:
        return node_pb2.SealedOpening(
            monitor=self.monitor,
            suite=self.suite,
            enc=self.enc,
            ciphertext=self.ciphertext,
            statement=self.statement,
            signature=self.signature,
        )

    @classmethod
    def from_proto(cls, message: node_pb2.SealedOpening) -> SealedOpening:
        return cls(
            monitor=message.monitor,
            suite=message.suite,
            enc=bytes(message.enc),
            ciphertext=bytes(message.ciphertext),
            statement=bytes(message.statement),
            signature=bytes(message.signature),
        )

    def digest(self) -> bytes:
        """What the node's audit entry binds (``opening_sha256``): SHA-256 over each field
        (monitor, suite, enc, ciphertext, statement, signature; text as UTF-8), each
        prefixed by its length as 8 bytes big-endian."""
        return indicator_digest(
            (
                self.monitor.encode(),
                self.suite.encode(),
                self.enc,
                self.ciphertext,
                self.statement,
                self.signature,
            )
        )


def _info(statement: bytes) -> bytes:
    return INFO + hashlib.sha256(statement).digest()


def monitor_public_key(certificate_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a monitor's certificate (check the certificate first)."""
    key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise OpeningError("the monitor's certificate does not hold a P-256 key")
    return key


def seal(
    statement: Statement,
    opening: Opening,
    monitor_key: ec.EllipticCurvePublicKey,
    investigator_key_pem: bytes,
) -> SealedOpening:
    """Seal `opening` to the monitor and sign `statement` (its opening_sha256 filled in here)."""
    if statement.kind != opening.kind:
        raise OpeningError(f"a {statement.kind} statement cannot carry a {opening.kind} opening")
    plaintext = opening.to_bytes()
    bound = max_ciphertext_bytes(opening.kind, statement.item_count, opening.row_count)
    if len(plaintext) + 16 > bound:
        raise OpeningError(
            f"the opening is {len(plaintext):,} bytes; nodes accept at most {bound:,} for "
            f"{statement.item_count} items (an identifier longer than 220 bytes?)"
        )
    signed = dataclasses.replace(statement, opening_sha256=hashlib.sha256(plaintext).digest())
    statement_bytes = signed.to_bytes()
    if len(statement_bytes) > MAX_STATEMENT_BYTES:
        raise OpeningError(f"the statement is over {MAX_STATEMENT_BYTES} bytes (long names?)")
    sealed = _SUITE.encrypt(plaintext, monitor_key, info=_info(statement_bytes))
    return SealedOpening(
        monitor=statement.monitor,
        suite=SUITE,
        enc=sealed[:ENC_BYTES],
        ciphertext=sealed[ENC_BYTES:],
        statement=statement_bytes,
        signature=sign(investigator_key_pem, statement_bytes),
    )


def check_form(
    sealed: SealedOpening,
    *,
    kind: str,
    item_count: int,
    signer_certificate_pem: bytes,
    row_count: int = 0,
) -> Statement:
    """Sizes, suite, the statement's strict form and the signature under the signer's key.

    Sizes are checked before anything is parsed. Returns the statement; the caller
    compares it with what it knows (``Statement.differences``).
    """
    if sealed.suite != SUITE:
        raise OpeningError(f"sealed opening suite {sealed.suite!r} is not {SUITE}")
    if len(sealed.enc) != ENC_BYTES:
        raise OpeningError(f"the encapsulated key is {len(sealed.enc)} bytes, not {ENC_BYTES}")
    bound = max_ciphertext_bytes(kind, item_count, row_count)
    if not 16 <= len(sealed.ciphertext) <= bound:
        raise OpeningError(
            f"the sealed ciphertext is {len(sealed.ciphertext):,} bytes; "
            f"{kind} over {item_count} items allows 16 to {bound:,}"
        )
    if len(sealed.statement) > MAX_STATEMENT_BYTES:
        raise OpeningError(
            f"the statement is {len(sealed.statement):,} bytes; at most {MAX_STATEMENT_BYTES}"
        )
    if not 0 < len(sealed.signature) <= MAX_SIGNATURE_BYTES:
        raise OpeningError(f"the signature is {len(sealed.signature)} bytes; at most 80")
    statement = Statement.from_bytes(sealed.statement)
    if statement.kind != kind or statement.monitor != sealed.monitor:
        raise OpeningError(
            f"the statement is a {statement.kind} for monitor {statement.monitor}, "
            f"sent as a {kind} for monitor {sealed.monitor}"
        )
    if statement.item_count != item_count:
        raise OpeningError(
            f"the statement names {statement.item_count} items; the query has {item_count}"
        )
    try:
        signed = verify_signature(signer_certificate_pem, sealed.statement, sealed.signature)
    except PkiError as exc:
        raise OpeningError(f"the signer's certificate is unusable: {exc}") from None
    if not signed:
        raise OpeningError("the statement's signature is not the caller's")
    return statement


def open_sealed(sealed: SealedOpening, monitor_private_key: ec.EllipticCurvePrivateKey) -> Opening:
    """Decrypt with the monitor's key; the plaintext must be the one the statement names."""
    statement = Statement.from_bytes(sealed.statement)
    if sealed.suite != SUITE:
        raise OpeningError(f"sealed opening suite {sealed.suite!r} is not {SUITE}")
    try:
        plaintext = _SUITE.decrypt(
            sealed.enc + sealed.ciphertext, monitor_private_key, info=_info(sealed.statement)
        )
    except Exception:  # noqa: BLE001 - any HPKE failure means: not for this key or tampered
        raise OpeningError(
            f"the sealed opening does not decrypt under this key (not sealed for "
            f"monitor {sealed.monitor}'s key, or its ciphertext or statement was altered)"
        ) from None
    if hashlib.sha256(plaintext).digest() != statement.opening_sha256:
        raise OpeningError("the opened plaintext is not the one the statement's signature binds")
    opening = Opening.from_bytes(plaintext)
    if opening.kind != statement.kind:
        raise OpeningError(f"a {statement.kind} statement opened to a {opening.kind} opening")
    return opening


def sealed_for(openings: Sequence[SealedOpening], monitor: str) -> SealedOpening | None:
    """The opening sealed for `monitor`, if any."""
    return next((sealed for sealed in openings if sealed.monitor == monitor), None)

"""What overlap participants sign for each other: a join, and a commitment to an initial set.

A node relays points only for an overlap whose every roster member joined, and
only the points an origin committed to:

* ``JoinProof`` — a node's signature, at join, over (overlap id, its
  jurisdiction, its set size, the investigator certificate that asked). The
  coordinator forwards every member's proof at Open; each node checks every
  one against the federation CA, the member's name and the revocation list
  (``verify_join``), so a roster cannot name a member that never joined, nor
  one that joined with a different size or for another overlap.
* ``Commitment`` — an origin's signature, at Open, over (overlap id, origin,
  set size, SHA-256 of its initial batches concatenated). The coordinator
  forwards it with every Relay header for that origin's set; the first hop
  checks the digest of what it is asked to relay before anything leaves.

Signatures are ECDSA P-256 / SHA-256 (DER) by the node certificate key, over a
domain-separated canonical JSON statement. No point and no identifier is signed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from fedtrace.pki import ROLE_NODE, Identity, PkiError, sign, verify_issued_by, verify_signature

JOIN_DOMAIN = b"fedtrace-overlap-join-v1\x00"
COMMITMENT_DOMAIN = b"fedtrace-overlap-commitment-v1\x00"


class CommitmentError(ValueError):
    """A join proof or set commitment that does not verify."""


def _statement(domain: bytes, fields: dict[str, object]) -> bytes:
    return domain + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def join_statement(
    overlap_id: str, jurisdiction: str, set_size: int, investigator_fingerprint: str
) -> bytes:
    """The bytes a node signs when it joins an overlap."""
    return _statement(
        JOIN_DOMAIN,
        {
            "overlap_id": overlap_id,
            "jurisdiction": jurisdiction,
            "set_size": set_size,
            "investigator_fingerprint_sha256": investigator_fingerprint,
        },
    )


@dataclass(frozen=True)
class JoinProof:
    """One member's signed join, as the coordinator forwards it."""

    jurisdiction: str
    set_size: int
    certificate_pem: bytes
    signature: bytes

    @classmethod
    def signed(
        cls,
        key_pem: bytes,
        certificate_pem: bytes,
        *,
        overlap_id: str,
        jurisdiction: str,
        set_size: int,
        investigator_fingerprint: str,
    ) -> JoinProof:
        statement = join_statement(overlap_id, jurisdiction, set_size, investigator_fingerprint)
        return cls(jurisdiction, set_size, certificate_pem, sign(key_pem, statement))


def verify_join(
    proof: JoinProof,
    *,
    overlap_id: str,
    investigator_fingerprint: str,
    ca_pem: bytes,
    is_revoked: Callable[[Identity], bool],
) -> Identity:
    """Check one member's join: a live node certificate of this federation, named as the member,
    whose key signed this overlap's join with this size for this investigator."""
    try:
        identity = verify_issued_by(proof.certificate_pem, ca_pem)
    except (PkiError, ValueError) as exc:
        raise CommitmentError(f"{proof.jurisdiction}'s join certificate: {exc}") from None
    if identity.role != ROLE_NODE or identity.jurisdiction != proof.jurisdiction:
        raise CommitmentError(
            f"the join for {proof.jurisdiction} is signed by {identity.describe()}, "
            f"not by node {proof.jurisdiction}"
        )
    if is_revoked(identity):
        raise CommitmentError(f"{identity.describe()} is revoked; it cannot take part")
    statement = join_statement(
        overlap_id, proof.jurisdiction, proof.set_size, investigator_fingerprint
    )
    if not verify_signature(proof.certificate_pem, statement, proof.signature):
        raise CommitmentError(
            f"{proof.jurisdiction}'s join signature does not verify for overlap {overlap_id}, "
            f"{proof.set_size} items and this investigator"
        )
    return identity


def commitment_statement(
    overlap_id: str, origin: str, set_size: int, initial_sha256: bytes
) -> bytes:
    """The bytes an origin signs over its initial set."""
    return _statement(
        COMMITMENT_DOMAIN,
        {
            "overlap_id": overlap_id,
            "origin": origin,
            "set_size": set_size,
            "initial_sha256": initial_sha256.hex(),
        },
    )


@dataclass(frozen=True)
class Commitment:
    """An origin's signed commitment to its initial set in one overlap."""

    origin: str
    set_size: int
    initial_sha256: bytes
    signature: bytes

    @classmethod
    def signed(
        cls, key_pem: bytes, *, overlap_id: str, origin: str, set_size: int, initial_sha256: bytes
    ) -> Commitment:
        statement = commitment_statement(overlap_id, origin, set_size, initial_sha256)
        return cls(origin, set_size, initial_sha256, sign(key_pem, statement))

    def verify(self, overlap_id: str, certificate_pem: bytes) -> None:
        """Raise CommitmentError unless the origin's certificate key signed this commitment."""
        if len(self.initial_sha256) != 32:
            raise CommitmentError(f"{self.origin}'s commitment carries no SHA-256 digest")
        statement = commitment_statement(
            overlap_id, self.origin, self.set_size, self.initial_sha256
        )
        if not verify_signature(certificate_pem, statement, self.signature):
            raise CommitmentError(
                f"{self.origin}'s commitment to its initial set does not verify "
                f"for overlap {overlap_id}"
            )

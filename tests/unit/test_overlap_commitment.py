"""Signed joins and set commitments: what verifies, and every field that breaks it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtrace.overlap_commitment import Commitment, CommitmentError, JoinProof, verify_join
from fedtrace.pki import ROLE_INVESTIGATOR, ROLE_NODE, Identity, init_ca, issue

OVERLAP = "ab" * 16
INVESTIGATOR = "cd" * 32


def _keys(root: Path, ca: str, code: str, role: str = ROLE_NODE) -> tuple[bytes, bytes]:
    issue(root / ca, root / f"{ca}-{code}", name=code, role=role)
    return (root / f"{ca}-{code}" / "cert.pem").read_bytes(), (
        root / f"{ca}-{code}" / "key.pem"
    ).read_bytes()


def _never(identity: Identity) -> bool:
    return False


def test_a_join_verifies_only_for_its_overlap_member_size_and_investigator(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    init_ca(tmp_path / "other")
    ca_pem = (tmp_path / "ca" / "ca.pem").read_bytes()
    cert, key = _keys(tmp_path, "ca", "EE")
    proof = JoinProof.signed(
        key,
        cert,
        overlap_id=OVERLAP,
        jurisdiction="EE",
        set_size=40,
        investigator_fingerprint=INVESTIGATOR,
    )
    identity = verify_join(
        proof,
        overlap_id=OVERLAP,
        investigator_fingerprint=INVESTIGATOR,
        ca_pem=ca_pem,
        is_revoked=_never,
    )
    assert identity.jurisdiction == "EE" and identity.role == ROLE_NODE

    wrong = [
        (proof, "cd" * 16, INVESTIGATOR, "does not verify"),
        (proof, OVERLAP, "ef" * 32, "does not verify"),
        (JoinProof("EE", 41, cert, proof.signature), OVERLAP, INVESTIGATOR, "does not verify"),
        (JoinProof("LT", 40, cert, proof.signature), OVERLAP, INVESTIGATOR, "not by node LT"),
    ]
    outsider_cert, outsider_key = _keys(tmp_path, "other", "EE")
    outsider = JoinProof.signed(
        outsider_key,
        outsider_cert,
        overlap_id=OVERLAP,
        jurisdiction="EE",
        set_size=40,
        investigator_fingerprint=INVESTIGATOR,
    )
    wrong.append((outsider, OVERLAP, INVESTIGATOR, "not signed by the federation CA"))
    fr_cert, fr_key = _keys(tmp_path, "ca", "FR", ROLE_INVESTIGATOR)
    investigator = JoinProof.signed(
        fr_key,
        fr_cert,
        overlap_id=OVERLAP,
        jurisdiction="FR",
        set_size=40,
        investigator_fingerprint=INVESTIGATOR,
    )
    wrong.append((investigator, OVERLAP, INVESTIGATOR, "not by node FR"))
    for bad, overlap_id, fingerprint, message in wrong:
        with pytest.raises(CommitmentError, match=message):
            verify_join(
                bad,
                overlap_id=overlap_id,
                investigator_fingerprint=fingerprint,
                ca_pem=ca_pem,
                is_revoked=_never,
            )
    with pytest.raises(CommitmentError, match="revoked"):
        verify_join(
            proof,
            overlap_id=OVERLAP,
            investigator_fingerprint=INVESTIGATOR,
            ca_pem=ca_pem,
            is_revoked=lambda identity: True,
        )


def test_a_commitment_binds_overlap_origin_size_and_digest(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    cert, key = _keys(tmp_path, "ca", "EE")
    other_cert, _ = _keys(tmp_path, "ca", "LT")
    digest = bytes(range(32))
    commitment = Commitment.signed(
        key, overlap_id=OVERLAP, origin="EE", set_size=40, initial_sha256=digest
    )
    commitment.verify(OVERLAP, cert)
    for bad, overlap_id, signer in [
        (commitment, "cd" * 16, cert),
        (commitment, OVERLAP, other_cert),
        (Commitment("EE", 41, digest, commitment.signature), OVERLAP, cert),
        (Commitment("EE", 40, bytes(32), commitment.signature), OVERLAP, cert),
        (Commitment("EE", 40, b"", commitment.signature), OVERLAP, cert),
    ]:
        with pytest.raises(CommitmentError):
            bad.verify(overlap_id, signer)

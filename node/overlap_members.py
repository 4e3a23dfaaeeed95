"""Who may take part in a node's overlap: verified member joins and origin commitments.

`node.overlap` opens an overlap only when `verify_members` accepts a signed join
(`fedtrace.overlap_commitment`) for every roster member, and relays a set only
when `check_commitment` accepts its origin's signed commitment. Plain functions:
refusals are `QueryRefused` with the status code the servicer returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from fedtrace.overlap_commitment import Commitment, CommitmentError, JoinProof, verify_join
from fedtrace.pki import Identity
from node.gate import QueryRefused


@dataclass(frozen=True)
class MemberTrust:
    """What a node checks other members' joins against: the federation CA and revocations."""

    ca_pem: bytes
    is_revoked: Callable[[Identity], bool]


def verify_members(
    overlap_id: str,
    investigator: Identity,
    roster: Sequence[str],
    sizes: dict[str, int],
    joins: Sequence[JoinProof],
    trust: MemberTrust,
) -> dict[str, bytes]:
    """Every roster member's signed join, verified: member -> its node certificate."""
    proofs: dict[str, JoinProof] = {}
    for proof in joins:
        if proof.jurisdiction in proofs:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"two joins for {proof.jurisdiction}"
            )
        proofs[proof.jurisdiction] = proof
    missing = [code for code in roster if code not in proofs]
    if missing or len(proofs) != len(roster):
        raise QueryRefused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"overlap {overlap_id}: no signed join for {', '.join(missing) or 'some'} "
            "of the roster, or a join for a node outside it; every member must have joined",
        )
    members: dict[str, bytes] = {}
    for code in roster:
        proof = proofs[code]
        if proof.set_size != sizes[code]:
            raise QueryRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{code} joined with {proof.set_size} items; the plan announces {sizes[code]}",
            )
        try:
            verify_join(
                proof,
                overlap_id=overlap_id,
                investigator_fingerprint=investigator.fingerprint_sha256,
                ca_pem=trust.ca_pem,
                is_revoked=trust.is_revoked,
            )
        except CommitmentError as exc:
            raise QueryRefused(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        members[code] = proof.certificate_pem
    return members


def check_commitment(
    overlap_id: str,
    members: dict[str, bytes],
    origin: str,
    expected_points: int,
    commitment: Commitment | None,
) -> None:
    """The origin's commitment: present, for this origin and size, signed by its node key."""
    if commitment is None or not commitment.signature:
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"a relay of {origin}'s set needs {origin}'s signed commitment to it",
        )
    if commitment.origin != origin or commitment.set_size != expected_points:
        raise QueryRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the commitment is {commitment.origin}'s to {commitment.set_size} points, "
            f"not {origin}'s to {expected_points}",
        )
    try:
        commitment.verify(overlap_id, members[origin])
    except CommitmentError as exc:
        raise QueryRefused(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None

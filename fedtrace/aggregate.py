"""Encrypted aggregates (disclosure level 2) as pure functions: bytes and typed values in and out.

Coordinator                                         Node (epoch table T, shuffled {H(y)^b})
  blinded watchlist H(x)^a            ------->        shuffled(H(x)^ab)   (order hidden)
  unblind -> {H(x)^b}                 <-------        position_tags(T)    (8 B/row, per epoch)
  match_positions(tags, {H(x)^b})
  indicator over T's rows, encrypted  ------->        node_aggregate: per column
  (SecretHeContext.encrypt_indicator)                 Enc(ind ⊙ col + mask), mask sums to noise
  decrypt_sum -> Σ col[matched] + noise <-----

See docs/aggregates.md for what each side learns and the measured cost.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedtrace.he import PLAIN_MODULUS, SLOT_COUNT, PublicHeContext, SecretHeContext

TAG_BYTES = 8
_TAG_PERSON = b"fedtrace-aggtag1"
_MASK_INFO = b"fedtrace-v2 total-only pairwise mask"
_AGREEMENT_DOMAIN = b"fedtrace-v1 total-only agreement key"
_SET_DOMAIN = b"fedtrace-v1 total-only answering set\x00"
SALT_BYTES = 16
#: A total needs two answering nodes, never counting the investigator's own (whose node
#: would share the investigator's knowledge). With exactly two, either one colluding with
#: the investigator can remove the other's mask and learn that node's share with that
#: node's own DP noise, which is what a per-node answer discloses; with three or more it
#: takes every other member (docs/aggregates.md, "What still leaks").
MIN_ANSWERING_SET = 2
COUNT_COLUMN = "match_count"


def position_tags(table: Sequence[bytes]) -> bytes:
    """Short tags of the epoch table's points, in T's order: ``TAG_BYTES`` per row."""
    return b"".join(
        hashlib.blake2b(point, digest_size=TAG_BYTES, person=_TAG_PERSON).digest()
        for point in table
    )


def match_positions(tags: bytes, unblinded_points: Sequence[bytes]) -> list[int]:
    """Rows of T whose tag equals the tag of one of the (shuffled) unblinded points, ascending."""
    if len(tags) % TAG_BYTES:
        raise ValueError(f"tag list of {len(tags)} bytes is not a multiple of {TAG_BYTES}")
    joined = position_tags(unblinded_points)
    wanted = {joined[i : i + TAG_BYTES] for i in range(0, len(joined), TAG_BYTES)}
    # 64-bit tags: a false row appears with probability about |X|·|T|/2^64.
    return [
        row
        for row in range(len(tags) // TAG_BYTES)
        if tags[row * TAG_BYTES : (row + 1) * TAG_BYTES] in wanted
    ]


def indicator(rows: int, positions: Sequence[int]) -> list[int]:
    """The 0/1 vector over T's rows with ones at ``positions``."""
    bits = [0] * rows
    for position in positions:
        if not 0 <= position < rows:
            raise ValueError(f"position {position} outside a table of {rows} rows")
        bits[position] = 1
    return bits


def clip(values: Sequence[int], lo: int, hi: int) -> list[int]:
    """Clip a column to its policy bounds, as integers (money in cents)."""
    return [min(max(int(v), lo), hi) for v in values]


def slot_mask(total: int) -> list[int]:
    """``SLOT_COUNT`` uniform residues mod t that sum to ``total`` mod t."""
    mask = [secrets.randbelow(PLAIN_MODULUS) for _ in range(SLOT_COUNT - 1)]
    mask.append((total - sum(mask)) % PLAIN_MODULUS)
    return mask


def node_aggregate(
    public: PublicHeContext,
    indicator_cts: Sequence[bytes],
    columns: Mapping[str, Sequence[int]],
    noise: Mapping[str, int],
    extra_mask: Mapping[str, int] | None = None,
) -> dict[str, bytes]:
    """The node's step: one answer ciphertext per column, whose slots sum to Σ + noise + extra.

    ``columns`` are already clipped integers in T's row order; include
    ``COUNT_COLUMN`` (all ones) for the match count. ``noise`` comes from
    ``fedtrace.dp.sample_noise``; ``extra_mask`` is the total-only pairwise mask.
    """
    extra_mask = extra_mask or {}
    batch = public.load_indicators(indicator_cts)
    answers = {}
    for name, values in columns.items():
        if len(values) > len(batch) * SLOT_COUNT:
            raise ValueError(f"column {name!r} has more rows than the indicator covers")
        offset = noise.get(name, 0) + extra_mask.get(name, 0)
        answers[name] = public.masked_dot(batch, values, slot_mask(offset))
    return answers


def decrypt_aggregate(secret: SecretHeContext, answers: Mapping[str, bytes]) -> dict[str, int]:
    """The coordinator's step: each column's noisy total, signed."""
    return {name: secret.decrypt_sum(blob) for name, blob in answers.items()}


@dataclass(frozen=True)
class MaskMember:
    """One member of a total-only answering set, as its signed round-1 summary stated it."""

    code: str
    query_id: bytes
    salt: bytes  # the member's own randomness for the mask nonce
    agreement_key: bytes  # X25519 public key, for this query only


def new_agreement_key() -> tuple[X25519PrivateKey, bytes, bytes]:
    """A fresh X25519 key for one total-only query (never the certificate key) and a salt."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, public, secrets.token_bytes(SALT_BYTES)


def agreement_statement(member: MaskMember, investigator: str) -> bytes:
    """What a node signs in round 1 so other members can check its key and salt."""
    parts = (
        _AGREEMENT_DOMAIN,
        member.code.encode(),
        investigator.encode(),
        member.query_id,
        member.salt,
        member.agreement_key,
    )
    return hashlib.sha256(b"".join(len(p).to_bytes(4, "big") + p for p in parts)).digest()


def answering_set_digest(total_nonce: bytes, members: Sequence[MaskMember]) -> bytes:
    """SHA-256 over the coordinator's nonce and every member's code, query id, salt and key.

    The pairwise masks are keyed by it: members that were shown different sets, or a
    set without their own fresh salt, derive masks that do not cancel.
    """
    digest = hashlib.sha256(_SET_DOMAIN + len(total_nonce).to_bytes(4, "big") + total_nonce)
    for member in sorted(members, key=lambda m: m.code):
        for part in (member.code.encode(), member.query_id, member.salt, member.agreement_key):
            digest.update(len(part).to_bytes(4, "big") + part)
    return digest.digest()


def pairwise_mask(
    own_key: X25519PrivateKey,
    own_code: str,
    members: Sequence[MaskMember],
    total_nonce: bytes,
    columns: Sequence[str],
) -> dict[str, int]:
    """Σ_j ±PRF(k_ij, set, column) mod t over the other answering nodes; cancels in the sum.

    ``k_ij`` is X25519 between the members' per-query agreement keys (never their
    certificate keys), expanded by HKDF-SHA256 with the answering set's digest as salt
    (the coordinator's nonce plus every member's own salt) and both codes as info;
    the lower code adds, the higher subtracts.
    """
    if len(total_nonce) < 16:
        raise ValueError("the query nonce must be at least 16 bytes")
    codes = [m.code for m in members]
    if len(set(codes)) != len(codes):
        raise ValueError("the answering set names a node twice")
    set_digest = answering_set_digest(total_nonce, members)
    masks = dict.fromkeys(columns, 0)
    for member in sorted(members, key=lambda m: m.code):
        if member.code == own_code:
            continue
        try:
            peer_key = X25519PublicKey.from_public_bytes(member.agreement_key)
        except ValueError:
            raise ValueError(f"peer {member.code}'s agreement key is not an X25519 key") from None
        shared = own_key.exchange(peer_key)
        low, high = sorted((own_code, member.code))
        sign = 1 if own_code == low else -1
        for column in columns:
            info = b"\x00".join((_MASK_INFO, low.encode(), high.encode(), column.encode()))
            stream = HKDF(algorithm=hashes.SHA256(), length=32, salt=set_digest, info=info).derive(
                shared
            )
            masks[column] = (masks[column] + sign * int.from_bytes(stream, "big")) % PLAIN_MODULUS
    return masks

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

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedtrace.he import PLAIN_MODULUS, SLOT_COUNT, PublicHeContext, SecretHeContext

TAG_BYTES = 8
_TAG_PERSON = b"fedtrace-aggtag1"
_MASK_INFO = b"fedtrace-v1 total-only pairwise mask"
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


def pairwise_mask(
    own_key_pem: bytes,
    peer_cert_pems: Mapping[str, bytes],
    own_code: str,
    query_nonce: bytes,
    columns: Sequence[str],
) -> dict[str, int]:
    """Σ_j ±PRF(k_ij, nonce, column) mod t over the other answering nodes; cancels in the sum.

    ``k_ij`` is ECDH (P-256) between this node's certificate key and peer j's
    certificate key, expanded by HKDF-SHA256 with the query nonce and both
    codes; the lower code adds, the higher subtracts.
    """
    from cryptography import x509

    if len(query_nonce) < 16:
        raise ValueError("the query nonce must be at least 16 bytes")
    key = serialization.load_pem_private_key(own_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the node key is not an EC key")
    masks = dict.fromkeys(columns, 0)
    for code, cert_pem in sorted(peer_cert_pems.items()):
        if code == own_code:
            continue
        peer_key = x509.load_pem_x509_certificate(cert_pem).public_key()
        if not isinstance(peer_key, ec.EllipticCurvePublicKey):
            raise ValueError(f"peer {code}'s certificate has no EC key")
        shared = key.exchange(ec.ECDH(), peer_key)
        low, high = sorted((own_code, code))
        sign = 1 if own_code == low else -1
        for column in columns:
            info = b"\x00".join((_MASK_INFO, low.encode(), high.encode(), column.encode()))
            stream = HKDF(algorithm=hashes.SHA256(), length=32, salt=query_nonce, info=info).derive(
                shared
            )
            masks[column] = (masks[column] + sign * int.from_bytes(stream, "big")) % PLAIN_MODULUS
    return masks

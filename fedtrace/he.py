"""BFV homomorphic encryption for aggregate answers: a narrow typed wrapper over TenSEAL's SEAL API.

The investigator holds a ``SecretHeContext``; the node gets only a
``PublicHeContext`` (encryption parameters and a public key; no secret key, no
Galois or relinearisation keys). They are different types with no common base,
so a secret key has no path into a message. The secret key is never serialised.

Parameters are fixed (``PARAMETER_SET``): N = 16384 slots, plaintext modulus t a
55-bit batching prime (sums are exact in (-t/2, t/2), about ±1.8·10^16), data
modulus 4 × 50 bits plus a 60-bit special prime, 128-bit security per the HE
standard. Indicators are encrypted symmetrically and serialised *seeded* (the
uniform half is a PRNG seed), so they cost ~29 bytes per slot. Answers are
switched down to ``ANSWER_PRIMES`` primes after smudging and masking (~471 KB
each). SEAL compresses every serialised object with zstd.

TenSEAL's SEAL bindings (``tenseal.sealapi``) serialise only to files; the
wrapper round-trips through a private scratch directory. Nothing secret is
ever written there: only ciphertexts, parameters and the public key.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import struct
import tempfile
from collections.abc import Sequence
from typing import Any

import tenseal.sealapi as seal

POLY_MODULUS_DEGREE = 16384
SLOT_COUNT = POLY_MODULUS_DEGREE
PLAIN_MODULUS_BITS = 55
COEFF_MODULUS_BITS = (50, 50, 50, 50, 60)
#: Levels (primes) an answer ciphertext keeps after modulus switching: the lowest level
#: whose modulus (2 × 50 bits) still exceeds t. Switching scales the smudged noise down with
#: the modulus, so the budget stays ~30 bits; the rounding adds t·(1+‖s‖₁)/(2q') ≈ 2^-32.6.
ANSWER_PRIMES = 2
PARAMETER_SET = "bfv-16384-t55-q200-v1"
#: Flooding plaintext coefficients are drawn below 2**FLOOD_BITS (see ``_flood``).
FLOOD_BITS = 40
#: A public context is ~1.2 MB; refuse anything much larger before parsing it.
MAX_PUBLIC_CONTEXT_BYTES = 2 * 1024 * 1024
MAX_CIPHERTEXT_BYTES = 2 * 1024 * 1024

_MAGIC = b"FTHE\x01"
_scratch = tempfile.mkdtemp(prefix="fedtrace-he-")
atexit.register(shutil.rmtree, _scratch, True)


class HeError(ValueError):
    """A received HE object is malformed or not under the expected parameters."""


def _save(obj: Any) -> bytes:
    path = os.path.join(_scratch, secrets.token_hex(12))
    try:
        obj.save(path)
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _load(kind: Any, context: Any, blob: bytes) -> Any:
    path = os.path.join(_scratch, secrets.token_hex(12))
    try:
        with open(path, "wb") as handle:
            handle.write(blob)
        obj = kind(seal.SCHEME_TYPE.BFV) if kind is seal.EncryptionParameters else kind()
        try:
            if context is None:
                obj.load(path)
            else:
                obj.load(context, path)
        except Exception as exc:  # SEAL raises plain RuntimeError/ValueError
            raise HeError(f"cannot load {kind.__name__}: {exc}") from None
        return obj
    finally:
        os.unlink(path)


def _parameters() -> Any:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(POLY_MODULUS_DEGREE)
    parms.set_plain_modulus(seal.PlainModulus.Batching(POLY_MODULUS_DEGREE, PLAIN_MODULUS_BITS))
    parms.set_coeff_modulus(seal.CoeffModulus.Create(POLY_MODULUS_DEGREE, list(COEFF_MODULUS_BITS)))
    return parms


def _signature(parms: Any) -> tuple[int, int, tuple[int, ...]]:
    return (
        int(parms.poly_modulus_degree()),
        int(parms.plain_modulus().value()),
        tuple(int(m.value()) for m in parms.coeff_modulus()),
    )


_EXPECTED = _signature(_parameters())
PLAIN_MODULUS = _EXPECTED[1]


def _context(parms: Any) -> Any:
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise HeError(f"encryption parameters rejected: {context.parameters_error_message()}")
    return context


def chunk_count(records: int) -> int:
    """Indicator ciphertexts needed for a table of ``records`` rows."""
    return -(-records // SLOT_COUNT)


def signed(value: int) -> int:
    """Map a residue mod t to the signed range (-t/2, t/2]."""
    value %= PLAIN_MODULUS
    return value - PLAIN_MODULUS if value > PLAIN_MODULUS // 2 else value


class IndicatorBatch:
    """The investigator's encrypted 0/1 indicator, loaded once and reused for every column."""

    def __init__(self, ciphertexts: list[Any]) -> None:
        self._ciphertexts = ciphertexts

    def __len__(self) -> int:
        return len(self._ciphertexts)

    def ciphertexts(self) -> list[Any]:
        return self._ciphertexts


class PublicHeContext:
    """What the node holds: parameters and the investigator's public key, nothing secret."""

    def __init__(self, parms_blob: bytes, public_key_blob: bytes) -> None:
        parms = _load(seal.EncryptionParameters, None, parms_blob)
        if _signature(parms) != _EXPECTED:
            raise HeError(f"HE parameters differ from {PARAMETER_SET}")
        self._context = _context(parms)
        self._public_key = _load(seal.PublicKey, self._context, public_key_blob)
        if not seal.is_valid_for(self._public_key, self._context):
            raise HeError("the public key is not valid for the HE parameters")
        self._blobs = (parms_blob, public_key_blob)
        self._encoder = seal.BatchEncoder(self._context)
        self._evaluator = seal.Evaluator(self._context)
        self._encryptor = seal.Encryptor(self._context, self._public_key)

    def __repr__(self) -> str:
        return f"PublicHeContext({PARAMETER_SET})"

    @property
    def plain_modulus(self) -> int:
        return PLAIN_MODULUS

    @property
    def slot_count(self) -> int:
        return SLOT_COUNT

    def serialize(self) -> bytes:
        parms_blob, key_blob = self._blobs
        return _MAGIC + struct.pack(">I", len(parms_blob)) + parms_blob + key_blob

    @classmethod
    def from_bytes(cls, blob: bytes) -> PublicHeContext:
        """Parse and validate; the format has no place for a secret, Galois or relin key."""
        if len(blob) > MAX_PUBLIC_CONTEXT_BYTES:
            raise HeError(f"public HE context of {len(blob)} bytes exceeds the bound")
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 4:
            raise HeError("not a fedtrace public HE context")
        (parms_len,) = struct.unpack(">I", blob[len(_MAGIC) : len(_MAGIC) + 4])
        start = len(_MAGIC) + 4
        if parms_len > 4096 or start + parms_len >= len(blob):
            raise HeError("public HE context is truncated")
        return cls(blob[start : start + parms_len], blob[start + parms_len :])

    def load_indicators(self, ciphertexts: Sequence[bytes]) -> IndicatorBatch:
        """Load and check the investigator's indicator ciphertexts (fresh, two components)."""
        loaded = []
        first = self._context.first_parms_id()
        for index, blob in enumerate(ciphertexts):
            if len(blob) > MAX_CIPHERTEXT_BYTES:
                raise HeError(f"indicator ciphertext {index} is too large")
            ciphertext = _load(seal.Ciphertext, self._context, blob)
            if ciphertext.size() != 2 or ciphertext.parms_id() != first:
                raise HeError(f"indicator ciphertext {index} is not a fresh ciphertext")
            loaded.append(ciphertext)
        return IndicatorBatch(loaded)

    def _encode(self, values: Sequence[int]) -> Any:
        plain = seal.Plaintext()
        self._encoder.encode([v % PLAIN_MODULUS for v in values], plain)
        return plain

    def _flood(self) -> Any:
        """A fresh encryption of zero whose noise is wide and unknown to the investigator.

        ``Enc_pk(0) * P1 * P2`` with P1 uniform mod t and P2 with coefficients
        below 2**FLOOD_BITS: it re-randomises the answer's second component
        (otherwise a linear function of the node's columns) and smudges the
        noise that multiplying by the columns leaves. See docs/aggregates.md.
        """
        zero = seal.Ciphertext()
        self._encryptor.encrypt_zero(zero)
        uniform = self._encode([secrets.randbelow(PLAIN_MODULUS) for _ in range(SLOT_COUNT)])
        bounded = seal.Plaintext(
            " + ".join(
                f"{secrets.randbits(FLOOD_BITS):X}x^{power}"
                if power
                else f"{secrets.randbits(FLOOD_BITS) | 1:X}"
                for power in range(POLY_MODULUS_DEGREE - 1, -1, -1)
            )
        )
        self._evaluator.multiply_plain_inplace(zero, uniform)
        self._evaluator.multiply_plain_inplace(zero, bounded)
        return zero

    def masked_dot(
        self, batch: IndicatorBatch, column: Sequence[int], slot_mask: Sequence[int]
    ) -> bytes:
        """``Enc(indicator ⊙ column + slot_mask)``, re-randomised, smudged, switched down.

        ``column`` has one integer per table row (any length up to the batch's
        slots); ``slot_mask`` has ``SLOT_COUNT`` residues mod t.
        """
        if len(column) > len(batch) * SLOT_COUNT:
            raise ValueError(f"{len(column)} column values for {len(batch)} indicator chunks")
        if len(slot_mask) != SLOT_COUNT:
            raise ValueError(f"the slot mask must have {SLOT_COUNT} entries")
        total: Any = None
        for index, indicator in enumerate(batch.ciphertexts()):
            chunk = column[index * SLOT_COUNT : (index + 1) * SLOT_COUNT]
            if not any(chunk):
                continue
            product = seal.Ciphertext()
            self._evaluator.multiply_plain(indicator, self._encode(chunk), product)
            if total is None:
                total = product
            else:
                self._evaluator.add_inplace(total, product)
        flood = self._flood()
        if total is None:
            total = flood
        else:
            self._evaluator.add_inplace(total, flood)
        self._evaluator.add_plain_inplace(total, self._encode(slot_mask))
        while total.coeff_modulus_size() > ANSWER_PRIMES:
            self._evaluator.mod_switch_to_next_inplace(total)
        return _save(total)


class SecretHeContext:
    """The investigator's key pair for one query (or session); the secret key stays in memory."""

    def __init__(self) -> None:
        parms = _parameters()
        self._parms_blob = _save(parms)
        self._context = _context(parms)
        keys = seal.KeyGenerator(self._context)
        self._secret_key = keys.secret_key()
        public_key = seal.PublicKey()
        keys.create_public_key(public_key)
        self._public_blob = _save(public_key)
        self._encoder = seal.BatchEncoder(self._context)
        self._encryptor = seal.Encryptor(self._context, self._secret_key)
        self._decryptor = seal.Decryptor(self._context, self._secret_key)

    def __repr__(self) -> str:
        return f"SecretHeContext({PARAMETER_SET}, <secret key>)"

    @classmethod
    def generate(cls) -> SecretHeContext:
        return cls()

    @property
    def plain_modulus(self) -> int:
        return PLAIN_MODULUS

    def public(self) -> PublicHeContext:
        return PublicHeContext(self._parms_blob, self._public_blob)

    def public_bytes(self) -> bytes:
        return self.public().serialize()

    def encrypt_indicator(self, bits: Sequence[int]) -> list[bytes]:
        """Seeded symmetric encryptions of the 0/1 vector, ``SLOT_COUNT`` rows per ciphertext."""
        if any(bit not in (0, 1) for bit in bits):
            raise ValueError("an indicator holds only 0 and 1")
        out = []
        for start in range(0, max(len(bits), 1), SLOT_COUNT):
            chunk = list(bits[start : start + SLOT_COUNT])
            chunk += [0] * (SLOT_COUNT - len(chunk))
            plain = seal.Plaintext()
            self._encoder.encode(chunk, plain)
            out.append(_save(self._encryptor.encrypt_symmetric(plain)))
        return out

    def _decrypt(self, blob: bytes) -> Any:
        if len(blob) > MAX_CIPHERTEXT_BYTES:
            raise HeError("answer ciphertext is too large")
        ciphertext = _load(seal.Ciphertext, self._context, blob)
        if not seal.is_valid_for(ciphertext, self._context) or ciphertext.size() != 2:
            raise HeError("answer ciphertext is not valid for the HE parameters")
        if self._decryptor.invariant_noise_budget(ciphertext) <= 0:
            raise HeError("answer ciphertext has no noise budget left; it cannot be trusted")
        plain = seal.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        return plain

    def decrypt_slots(self, blob: bytes) -> list[int]:
        """Every slot, as residues mod t (for tests; reports use ``decrypt_sum``)."""
        return [int(v) for v in self._encoder.decode_uint64(self._decrypt(blob))]

    def decrypt_sum(self, blob: bytes) -> int:
        """The sum of all slots mod t, in the signed range."""
        return signed(sum(self.decrypt_slots(blob)))

    def primes(self, blob: bytes) -> int:
        """How many coefficient-modulus primes a ciphertext carries (its level; for tests)."""
        return int(_load(seal.Ciphertext, self._context, blob).coeff_modulus_size())

    def noise_budget(self, blob: bytes) -> int:
        """Bits of noise budget left in an answer (for tests and parameter checks)."""
        return int(
            self._decryptor.invariant_noise_budget(_load(seal.Ciphertext, self._context, blob))
        )

"""BFV homomorphic encryption for aggregate answers: circuit-private, with an indicator check.

The investigator holds a ``SecretHeContext``; the node gets only a
``PublicHeContext`` (parameters, public key and relinearisation keys; no secret
key). They are different types with no common base, so a secret key has no path
into a message. The secret key is serialised only into a sealed opening, encrypted
to a monitor (``SecretHeContext.secret_key_bytes``).

The node's answer per figure is ``Σ_chunks ind ⊙ column + r ⊙ (ind² − ind)``:

- **Indicator check.** For each 16,384-row chunk the node squares the
  investigator's indicator once and relinearises it, giving the *defect*
  ``ind² − ind`` (zero in a slot exactly when that slot holds 0 or 1, since t is
  prime). Every answer adds ``r ⊙ defect`` with a fresh uniform ``r`` per slot,
  chunk and figure, so a slot holding anything but 0 or 1 contributes a uniform
  residue mod t and the slot sum is uniform.
- **Noise flooding.** Before the final modulus switch the node adds a fresh
  public-key encryption of zero (re-randomising ``c1``) and a ciphertext
  ``(E, 0)`` whose ``E`` has coefficients uniform in ``[-FLOOD_BOUND, FLOOD_BOUND]``.
  That bound exceeds the worst-case computation noise by more than
  ``2^(40 + log2 N)`` (``fedtrace.he_flood`` bounds and measures it), so by the
  smudging lemma the answer's noise is within statistical distance ``2^-40`` of
  noise that does not depend on the node's columns.

Parameters are fixed (``PARAMETER_SET``): N = 16384 slots, t a 55-bit batching
prime (sums exact in (-t/2, t/2), about ±1.8·10^16), five 60-bit data primes and
a 60-bit special prime (360 bits; the HE standard allows 438 for 128-bit
security). Indicators are symmetric and serialised *seeded*. Answers are switched
down to ``ANSWER_PRIMES`` primes after flooding and masking.

TenSEAL's SEAL bindings expose no writable coefficients, so ``(E, 0)`` is
written directly in SEAL's uncompressed ciphertext format and loaded, which SEAL
validates (every residue below its prime). The bindings serialise only to files,
through a private scratch directory; nothing secret is ever written there.
See docs/aggregates.md for the argument, the margin and the costs.
"""

from __future__ import annotations

import atexit
import math
import os
import secrets
import shutil
import struct
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenseal.sealapi as seal

POLY_MODULUS_DEGREE = 16384
SLOT_COUNT = POLY_MODULUS_DEGREE
PLAIN_MODULUS_BITS = 55
#: Five 60-bit data primes (q ≈ 2^300) and a 60-bit special prime for key switching:
#: 360 bits, inside the HE standard's 438-bit bound for 128-bit security at N = 16384.
COEFF_MODULUS_BITS = (60, 60, 60, 60, 60, 60)
#: Levels (primes) an answer keeps after modulus switching (the switch is public and
#: deterministic; its rounding adds at most t·(1+‖s‖₁)/(2q') ≈ 2^-53.6 invariant noise).
ANSWER_PRIMES = 2
PARAMETER_SET = "bfv-16384-t55-q300-flood-v1"
#: Statistical distance between the flooded noise of any two computations: ≤ 2^-40.
STATISTICAL_SECURITY_BITS = 40
#: Smudging one coefficient costs |e|/B; N coefficients need B ≥ 2^(40 + log2 N)·|e|.
REQUIRED_MARGIN_BITS = STATISTICAL_SECURITY_BITS + POLY_MODULUS_DEGREE.bit_length() - 1
#: The flood is bounded by q/(t·2^FLOOD_HEADROOM_BITS): invariant noise ≤ 2^-8 after it.
FLOOD_HEADROOM_BITS = 8
#: SEAL samples fresh errors from a centred binomial distribution on [-21, 21].
FRESH_ERROR_BOUND = 21
#: Tables up to 256 chunks (4,194,304 rows); the worst-case margin is proved up to here.
MAX_CHUNKS = 256
#: Public key ≈ 1.6 MB and relinearisation keys ≈ 7.9 MB (unseeded; see ``SecretHeContext``).
#: Larger than one gRPC message: it travels in ``fedtrace.wire.CHUNK_BYTES`` parts.
MAX_PUBLIC_CONTEXT_BYTES = 12 * 1024 * 1024
MAX_CIPHERTEXT_BYTES = 2 * 1024 * 1024

_MAGIC = b"FTHF\x01"
_SEAL_MAGIC = 0xA15E
_COMPR_NONE = 0
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


_PARMS_BLOB = _save(_parameters())
_EXPECTED = _signature(_parameters())
PLAIN_MODULUS = _EXPECTED[1]
#: The data primes (all but the special prime) and their product q.
DATA_PRIMES = _EXPECTED[2][:-1]
DATA_MODULUS = math.prod(DATA_PRIMES)
#: Flood coefficients are uniform in [-FLOOD_BOUND, FLOOD_BOUND].
FLOOD_BOUND = DATA_MODULUS // (PLAIN_MODULUS << FLOOD_HEADROOM_BITS)
#: SEAL's serialisation version, copied into the headers written by ``flood_term``.
_SEAL_VERSION = _PARMS_BLOB[3:5]


def _context(parms: Any) -> Any:
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise HeError(f"encryption parameters rejected: {context.parameters_error_message()}")
    return context


def chunk_count(records: int) -> int:
    """Indicator ciphertexts needed for a table of ``records`` rows."""
    return -(-max(records, 1) // SLOT_COUNT)


def signed(value: int) -> int:
    """Map a residue mod t to the signed range (-t/2, t/2]."""
    value %= PLAIN_MODULUS
    return value - PLAIN_MODULUS if value > PLAIN_MODULUS // 2 else value


def uniform_residues(count: int = SLOT_COUNT) -> list[int]:
    """``count`` independent uniform residues mod t from the OS CSPRNG (rejection sampling)."""
    width = PLAIN_MODULUS.bit_length()
    out: list[int] = []
    while len(out) < count:
        words = np.frombuffer(secrets.token_bytes(8 * (count - len(out) + 64)), dtype=np.uint64)
        words = words & np.uint64((1 << width) - 1)
        out.extend(words[words < np.uint64(PLAIN_MODULUS)].tolist())
    return out[:count]


class IndicatorBatch:
    """The investigator's indicator chunks and their defects ``ind² − ind``, loaded once."""

    def __init__(self, indicators: list[Any], defects: list[Any]) -> None:
        self._indicators = indicators
        self._defects = defects

    def __len__(self) -> int:
        return len(self._indicators)

    def chunks(self) -> list[tuple[Any, Any]]:
        return list(zip(self._indicators, self._defects, strict=True))


class PublicHeContext:
    """What the node holds: parameters, public key and relinearisation keys; nothing secret."""

    def __init__(self, public_key_blob: bytes, relin_keys_blob: bytes) -> None:
        self._context = _context(_parameters())
        self._public_key = _load(seal.PublicKey, self._context, public_key_blob)
        if not seal.is_valid_for(self._public_key, self._context):
            raise HeError("the public key is not valid for the HE parameters")
        self._relin_keys = _load(seal.RelinKeys, self._context, relin_keys_blob)
        if not seal.is_valid_for(self._relin_keys, self._context):
            raise HeError("the relinearisation keys are not valid for the HE parameters")
        self._blobs = (public_key_blob, relin_keys_blob)
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
        """Magic, the parameter blob, the public key, the relinearisation keys (length-prefixed)."""
        parts = (_PARMS_BLOB, *self._blobs)
        return _MAGIC + b"".join(struct.pack(">I", len(p)) + p for p in parts)

    @classmethod
    def from_bytes(cls, blob: bytes) -> PublicHeContext:
        """Parse and validate; the format has no place for a secret or Galois key."""
        if len(blob) > MAX_PUBLIC_CONTEXT_BYTES:
            raise HeError(f"public HE context of {len(blob)} bytes exceeds the bound")
        if not blob.startswith(_MAGIC):
            raise HeError(f"not a fedtrace public HE context of {PARAMETER_SET}")
        parts, offset = [], len(_MAGIC)
        for _ in range(3):
            if offset + 4 > len(blob):
                raise HeError("public HE context is truncated")
            (length,) = struct.unpack(">I", blob[offset : offset + 4])
            if offset + 4 + length > len(blob):
                raise HeError("public HE context is truncated")
            parts.append(blob[offset + 4 : offset + 4 + length])
            offset += 4 + length
        if offset != len(blob):
            raise HeError("public HE context has trailing bytes")
        if len(parts[0]) > 4096:
            raise HeError("public HE context carries oversized parameters")
        if _signature(_load(seal.EncryptionParameters, None, parts[0])) != _EXPECTED:
            raise HeError(f"HE parameters differ from {PARAMETER_SET}")
        return cls(parts[1], parts[2])

    def load_indicators(self, ciphertexts: Sequence[bytes]) -> IndicatorBatch:
        """Load fresh two-component indicator ciphertexts and compute each chunk's defect."""
        if not 0 < len(ciphertexts) <= MAX_CHUNKS:
            raise HeError(f"{len(ciphertexts)} indicator chunks; 1 to {MAX_CHUNKS} are allowed")
        first = self._context.first_parms_id()
        indicators, defects = [], []
        for index, blob in enumerate(ciphertexts):
            if len(blob) > MAX_CIPHERTEXT_BYTES:
                raise HeError(f"indicator ciphertext {index} is too large")
            indicator = _load(seal.Ciphertext, self._context, blob)
            if indicator.size() != 2 or indicator.parms_id() != first:
                raise HeError(f"indicator ciphertext {index} is not a fresh ciphertext")
            defect = seal.Ciphertext()
            self._evaluator.square(indicator, defect)
            self._evaluator.relinearize_inplace(defect, self._relin_keys)
            self._evaluator.sub_inplace(defect, indicator)
            indicators.append(indicator)
            defects.append(defect)
        return IndicatorBatch(indicators, defects)

    def _encode(self, values: Sequence[int]) -> Any:
        plain = seal.Plaintext()
        self._encoder.encode([v % PLAIN_MODULUS for v in values], plain)
        return plain

    def evaluate_unflooded(self, batch: IndicatorBatch, column: Sequence[int]) -> Any:
        """``Σ_chunks ind ⊙ column + r ⊙ (ind² − ind)``, unflooded, at the top level.

        Never sent as it is: ``masked_dot`` floods it; ``fedtrace.he_flood`` measures it.
        """
        if len(column) > len(batch) * SLOT_COUNT:
            raise ValueError(f"{len(column)} column values for {len(batch)} indicator chunks")
        total: Any = None
        for index, (indicator, defect) in enumerate(batch.chunks()):
            term = seal.Ciphertext()
            self._evaluator.multiply_plain(defect, self._encode(uniform_residues()), term)
            chunk = column[index * SLOT_COUNT : (index + 1) * SLOT_COUNT]
            if any(chunk):
                product = seal.Ciphertext()
                self._evaluator.multiply_plain(indicator, self._encode(chunk), product)
                self._evaluator.add_inplace(term, product)
            if total is None:
                total = term
            else:
                self._evaluator.add_inplace(total, term)
        return total

    def flood_term(self) -> Any:
        """``Enc_pk(0) + (E, 0)`` with E uniform in [-FLOOD_BOUND, FLOOD_BOUND]^N."""
        width = 2 * FLOOD_BOUND + 1
        flood = [secrets.randbelow(width) - FLOOD_BOUND for _ in range(POLY_MODULUS_DEGREE)]
        residues = np.zeros((2, len(DATA_PRIMES), POLY_MODULUS_DEGREE), dtype=np.uint64)
        for row, prime in enumerate(DATA_PRIMES):
            residues[0, row] = [e % prime for e in flood]
        raw = residues.tobytes()  # component-major, then prime, then coefficient
        array = struct.pack("<Q", residues.size) + raw
        members = (
            struct.pack("<4Q", *self._context.first_parms_id())
            + b"\x00"  # not in NTT form
            + struct.pack("<QQQdQ", 2, POLY_MODULUS_DEGREE, len(DATA_PRIMES), 1.0, 1)
            + _seal_header(len(array))
            + array
        )
        wide = _load(seal.Ciphertext, self._context, _seal_header(len(members)) + members)
        zero = seal.Ciphertext()
        self._encryptor.encrypt_zero(zero)
        self._evaluator.add_inplace(wide, zero)
        return wide

    def masked_dot(
        self, batch: IndicatorBatch, column: Sequence[int], slot_mask: Sequence[int]
    ) -> bytes:
        """``Enc(ind ⊙ column + r ⊙ (ind² − ind) + slot_mask)``, flooded, switched down.

        ``column`` has one integer per table row (any length up to the batch's
        slots); ``slot_mask`` has ``SLOT_COUNT`` residues mod t (uniform, summing
        to the DP noise and any total-only mask, as in ``fedtrace.aggregate``).
        """
        if len(slot_mask) != SLOT_COUNT:
            raise ValueError(f"the slot mask must have {SLOT_COUNT} entries")
        total = self.evaluate_unflooded(batch, column)
        self._evaluator.add_inplace(total, self.flood_term())
        self._evaluator.add_plain_inplace(total, self._encode(slot_mask))
        while total.coeff_modulus_size() > ANSWER_PRIMES:
            self._evaluator.mod_switch_to_next_inplace(total)
        return _save(total)


def _seal_header(size_after: int) -> bytes:
    """SEAL's 16-byte serialisation header for an uncompressed object of ``size_after`` bytes."""
    return (
        struct.pack("<HB", _SEAL_MAGIC, 16)
        + _SEAL_VERSION
        + struct.pack("<BHQ", _COMPR_NONE, 0, 16 + size_after)
    )


class SecretHeContext:
    """The investigator's key pair for one query (or session); the secret key stays in memory."""

    def __init__(self, secret_key_blob: bytes = b"") -> None:
        self._context = _context(_parameters())
        keys = (
            seal.KeyGenerator(self._context, _load(seal.SecretKey, self._context, secret_key_blob))
            if secret_key_blob
            else seal.KeyGenerator(self._context)
        )
        self._secret_key = keys.secret_key()
        # TenSEAL binds no Serializable<PublicKey/RelinKeys>, so the keys go out unseeded.
        public_key, relin_keys = seal.PublicKey(), seal.RelinKeys()
        keys.create_public_key(public_key)
        keys.create_relin_keys(relin_keys)
        self._public_blob = _save(public_key)
        self._relin_blob = _save(relin_keys)
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

    def secret_key_bytes(self) -> bytes:
        """SEAL's serialisation of the secret key, only for a sealed opening to a monitor
        (``fedtrace.opening``); ``from_secret_key`` rebuilds a context that decrypts."""
        return _save(self._secret_key)

    @classmethod
    def from_secret_key(cls, blob: bytes) -> SecretHeContext:
        """The context of a ``secret_key_bytes`` blob (fresh public keys, same decryption)."""
        if not blob:
            raise HeError("an empty HE secret key")
        return cls(blob)

    def public(self) -> PublicHeContext:
        return PublicHeContext(self._public_blob, self._relin_blob)

    def public_bytes(self) -> bytes:
        return self.public().serialize()

    def encrypt_indicator(self, bits: Sequence[int]) -> list[bytes]:
        """Seeded symmetric encryptions of the 0/1 vector, ``SLOT_COUNT`` rows per ciphertext."""
        if any(bit not in (0, 1) for bit in bits):
            raise ValueError("an indicator holds only 0 and 1")
        return self.encrypt_slots(bits)

    def encrypt_slots(self, values: Sequence[int]) -> list[bytes]:
        """Encrypt any residues, without the 0/1 check (what a cheating investigator sends)."""
        out = []
        for start in range(0, max(len(values), 1), SLOT_COUNT):
            chunk = [v % PLAIN_MODULUS for v in values[start : start + SLOT_COUNT]]
            chunk += [0] * (SLOT_COUNT - len(chunk))
            plain = seal.Plaintext()
            self._encoder.encode(chunk, plain)
            out.append(_save(self._encryptor.encrypt_symmetric(plain)))
        return out

    def _load_answer(self, blob: bytes) -> Any:
        if len(blob) > MAX_CIPHERTEXT_BYTES:
            raise HeError("answer ciphertext is too large")
        ciphertext = _load(seal.Ciphertext, self._context, blob)
        if not seal.is_valid_for(ciphertext, self._context) or ciphertext.size() != 2:
            raise HeError("answer ciphertext is not valid for the HE parameters")
        return ciphertext

    def decrypt_slots(self, blob: bytes) -> list[int]:
        """Every slot, as residues mod t (for tests; reports use ``decrypt_sum``)."""
        ciphertext = self._load_answer(blob)
        if self._decryptor.invariant_noise_budget(ciphertext) <= 0:
            raise HeError("answer ciphertext has no noise budget left; it cannot be trusted")
        plain = seal.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        return [int(v) for v in self._encoder.decode_uint64(plain)]

    def decrypt_sum(self, blob: bytes) -> int:
        """The sum of all slots mod t, in the signed range."""
        return signed(sum(self.decrypt_slots(blob)))

    def noise_budget(self, blob: bytes) -> int:
        """Bits of invariant noise budget left in an answer (for tests and parameter checks)."""
        return int(self._decryptor.invariant_noise_budget(self._load_answer(blob)))

    def primes(self, blob: bytes) -> int:
        """How many coefficient-modulus primes a ciphertext carries (its level; for tests)."""
        return int(self._load_answer(blob).coeff_modulus_size())

    def budget_of(self, ciphertext: Any) -> int:
        """The invariant noise budget of an in-memory ciphertext (``fedtrace.he_flood``)."""
        return int(self._decryptor.invariant_noise_budget(ciphertext))

"""Candidate groups for the membership exchange, per item, on one core and on every core.

python -m fedtrace.bench.groups_compare [ITEMS]     # default 2,000 items per group; prints a table

For each group the same steps are timed end to end (bytes in, bytes out):

- epoch: hash to the group + multiply by the epoch key + encode (the node's table);
- pool: one entry of an additive-blinding pool, r·C and r·G (coordinator, offline);
- add: hash + add r·C (the coordinator's online step, additive blinding);
- node: validate the received point + multiply + encode (the node's online step);
- sub: validate the answer + subtract r·G (the coordinator's online step, additive);
- mult: hash + multiply, then validate + multiply by a⁻¹ (today's coordinator steps).

Groups: ristretto255 through rbcl/libsodium (``fedtrace.group``); secp256k1
through coincurve/libsecp256k1 with RFC 9380 ``secp256k1_XMD:SHA-256_SSWU_RO_``
written here in Python, and with try-and-increment for comparison; X25519
through ``cryptography``, which exposes only the clamped x-only ladder, so only
the node's multiplication can be timed (see ``_x25519``). A group whose library
is not importable is reported as skipped. "all cores" runs the same work in
every worker process at once and reports the aggregate rate.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rbcl  # rbcl ships no type information (see [tool.mypy] overrides)

from fedtrace import group, parallel

Point = bytes
Scalar = bytes
STEPS = ("epoch", "pool", "add", "node", "sub", "mult")


@dataclass(frozen=True)
class Suite:
    """One group's operations over encoded points and 32-byte scalars."""

    name: str
    hash_to_group: Callable[[bytes], Point]
    multiply: Callable[[Scalar, Point], Point]  # constant time in the secret scalar
    multiply_base: Callable[[Scalar], Point]
    add: Callable[[Point, Point], Point]
    subtract: Callable[[Point, Point], Point]
    validate: Callable[[Point], None]  # raises on anything but a valid non-identity point
    random_scalar: Callable[[], Scalar]
    invert: Callable[[Scalar], Scalar]


def _ristretto255() -> Suite:
    add: Callable[[bytes, bytes], bytes] = rbcl.crypto_core_ristretto255_add
    sub: Callable[[bytes, bytes], bytes] = rbcl.crypto_core_ristretto255_sub
    return Suite(
        name="ristretto255 (rbcl/libsodium)",
        hash_to_group=group.hash_to_group,
        multiply=rbcl.crypto_scalarmult_ristretto255,
        multiply_base=rbcl.crypto_scalarmult_ristretto255_base,
        add=add,
        subtract=sub,
        validate=group.validate_point,
        random_scalar=group.random_scalar,
        invert=group.invert_scalar,
    )


# secp256k1 (SEC 2) and its RFC 9380 hash-to-curve suite, section 8.7 and appendix E.1.
_P = 2**256 - 2**32 - 977
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_ISO_A = 0x3F8731ABDD661ADCA08A5558F0F5D272E953D363CB6F0E5D405447C01A444533
_ISO_B = 1771
_Z = _P - 11
_X_NUM = (
    0x8E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38DAAAAA8C7,
    0x07D3D4C80BC321D5B9F315CEA7FD44C5D595D2FC0BF63B92DFFF1044F17C6581,
    0x534C328D23F234E6E2A413DECA25CAECE4506144037C40314ECBD0B53D9DD262,
    0x8E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38DAAAAA88C,
)
_X_DEN = (
    0xD35771193D94918A9CA34CCBB7B640DD86CD409542F8487D9FE6B745781EB49B,
    0xEDADC6F64383DC1DF7C4B2D51B54225406D36B641F5E41BBC52A56612A8C6D14,
    1,
)
_Y_NUM = (
    0x4BDA12F684BDA12F684BDA12F684BDA12F684BDA12F684BDA12F684B8E38E23C,
    0xC75E0C32D5CB7C0FA9D0A54B12A0A6D5647AB046D686DA6FDFFC90FC201D71A3,
    0x29A6194691F91A73715209EF6512E576722830A201BE2018A765E85A9ECEE931,
    0x2F684BDA12F684BDA12F684BDA12F684BDA12F684BDA12F684BDA12F38E38D84,
)
_Y_DEN = (
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFF93B,
    0x7A06534BB8BDB49FD5E9E6632722C2989467C1BFC8E8D978DFB425D2685C2573,
    0x6484AA716545CA2CF3A70C3FA8FE337E0A3D21162F0D6299A7BF8192BFD2A76F,
    1,
)
SECP256K1_DST = b"FEDTRACE-V1-PSI_XMD:SHA-256_SSWU_RO_"


def expand_message_xmd_sha256(message: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-256 (short DSTs only: enough for a benchmark)."""
    dst_prime = dst + bytes([len(dst)])
    b_0 = hashlib.sha256(
        bytes(64) + message + length.to_bytes(2, "big") + b"\x00" + dst_prime
    ).digest()
    blocks = [hashlib.sha256(b_0 + b"\x01" + dst_prime).digest()]
    for counter in range(2, -(-length // 32) + 1):
        mixed = bytes(x ^ y for x, y in zip(b_0, blocks[-1], strict=True))
        blocks.append(hashlib.sha256(mixed + bytes([counter]) + dst_prime).digest())
    return b"".join(blocks)[:length]


def _polynomial(coefficients: tuple[int, ...], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % _P
    return value


def _sswu_isogenous(u: int) -> tuple[int, int]:
    """Simplified SWU onto E' (RFC 9380 section 6.6.2), then the 3-isogeny to secp256k1.

    Python integers: not constant time (``pow`` and the branches depend on ``u``).
    """
    z_u2 = _Z * u * u % _P
    denominator = (z_u2 * z_u2 + z_u2) % _P
    if denominator == 0:
        x1 = _ISO_B * pow(_Z * _ISO_A, -1, _P) % _P
    else:
        x1 = (-_ISO_B * pow(_ISO_A, -1, _P) * (1 + pow(denominator, -1, _P))) % _P
    gx1 = (x1 * x1 * x1 + _ISO_A * x1 + _ISO_B) % _P
    if pow(gx1, (_P - 1) // 2, _P) in (0, 1):
        x, y = x1, pow(gx1, (_P + 1) // 4, _P)
    else:
        x = z_u2 * x1 % _P
        y = pow((x * x * x + _ISO_A * x + _ISO_B) % _P, (_P + 1) // 4, _P)
    if u % 2 != y % 2:
        y = _P - y
    x_out = _polynomial(_X_NUM, x) * pow(_polynomial(_X_DEN, x), -1, _P) % _P
    y_out = y * _polynomial(_Y_NUM, x) * pow(_polynomial(_Y_DEN, x), -1, _P) % _P
    return x_out, y_out


def _secp_point(x: int, y: int) -> bytes:
    return bytes([2 + (y & 1)]) + x.to_bytes(32, "big")


def _secp256k1(try_and_increment: bool) -> Suite:
    coincurve: Any = importlib.import_module("coincurve")
    public_key = coincurve.PublicKey
    private_key = coincurve.PrivateKey

    def add(left: bytes, right: bytes) -> bytes:
        result: bytes = public_key.combine_keys([public_key(left), public_key(right)]).format()
        return result

    def negate(point: bytes) -> bytes:
        return bytes([point[0] ^ 1]) + point[1:]

    def hash_sswu(item: bytes, dst: bytes = SECP256K1_DST) -> bytes:
        uniform = expand_message_xmd_sha256(item, dst, 96)
        u0 = int.from_bytes(uniform[:48], "big") % _P
        u1 = int.from_bytes(uniform[48:], "big") % _P
        return add(_secp_point(*_sswu_isogenous(u0)), _secp_point(*_sswu_isogenous(u1)))

    def hash_increment(item: bytes) -> bytes:
        # Variable time: the number of rounds depends on the item.
        counter = 0
        while True:
            x = int.from_bytes(hashlib.sha256(item + counter.to_bytes(4, "big")).digest()) % _P
            gx = (x * x * x + 7) % _P
            if gx and pow(gx, (_P - 1) // 2, _P) == 1:
                return _secp_point(x, pow(gx, (_P + 1) // 4, _P))
            counter += 1

    def multiply(scalar: bytes, point: bytes) -> bytes:
        result: bytes = public_key(point).multiply(scalar).format()  # secp256k1_ec_pubkey_tweak_mul
        return result

    def validate(point: bytes) -> None:
        if len(point) != 33 or point[0] not in (2, 3):
            raise ValueError("not a compressed secp256k1 point")
        public_key(point)  # on-curve check; the group has prime order (cofactor 1)

    def random_scalar() -> bytes:
        while True:
            value = int.from_bytes(secrets.token_bytes(32))
            if 0 < value < _N:
                return value.to_bytes(32, "big")

    def multiply_base(scalar: bytes) -> bytes:
        result: bytes = private_key(scalar).public_key.format()
        return result

    return Suite(
        name="secp256k1 (coincurve), "
        + ("try-and-increment" if try_and_increment else "RFC 9380 SSWU in Python"),
        hash_to_group=hash_increment if try_and_increment else hash_sswu,
        multiply=multiply,
        multiply_base=multiply_base,
        add=add,
        subtract=lambda left, right: add(left, negate(right)),
        validate=validate,
        random_scalar=random_scalar,
        invert=lambda scalar: pow(int.from_bytes(scalar), -1, _N).to_bytes(32, "big"),
    )


def _x25519_node_rate(count: int) -> float:
    """Seconds per X25519 ``exchange`` (the clamped Montgomery ladder), u-coordinates only.

    X25519 is not a sound choice here: it clamps every scalar (so a⁻¹ cannot be
    applied and multiplicative unblinding fails), has no point addition (so no
    additive blinding), has cofactor 8 and accepts twist points without
    complaint. The figure is a reference for the ladder's raw speed only.
    """
    x25519: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.x25519")
    key = x25519.X25519PrivateKey.generate()
    peers = [
        x25519.X25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(count)
    ]
    from_bytes = x25519.X25519PublicKey.from_public_bytes
    started = time.perf_counter()
    for peer in peers:
        key.exchange(from_bytes(peer))
    return (time.perf_counter() - started) / count


_SUITES: dict[str, Callable[[], Suite]] = {
    "ristretto255": _ristretto255,
    "secp256k1-sswu": lambda: _secp256k1(try_and_increment=False),
    "secp256k1-increment": lambda: _secp256k1(try_and_increment=True),
}


def _per_item(suite: Suite, count: int) -> dict[str, float]:
    """Seconds per item for every step, run sequentially in this process."""
    items = [f"wallet:0x{index:040x}".encode() for index in range(count)]
    key = suite.random_scalar()
    blinding_point = suite.multiply_base(suite.invert(key))
    timings: dict[str, float] = {}

    def timed(name: str, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = step()
        timings[name] = (time.perf_counter() - started) / count
        return value

    timed("epoch", lambda: [suite.multiply(key, suite.hash_to_group(item)) for item in items])
    scalars = [suite.random_scalar() for _ in range(count)]
    pool = timed(
        "pool",
        lambda: [(suite.multiply(r, blinding_point), suite.multiply_base(r)) for r in scalars],
    )
    sent = timed(
        "add",
        lambda: [
            suite.add(suite.hash_to_group(item), entry[0])
            for item, entry in zip(items, pool, strict=True)
        ],
    )

    def evaluate(points: list[bytes], scalar: bytes) -> list[bytes]:
        out = []
        for point in points:
            suite.validate(point)
            out.append(suite.multiply(scalar, point))
        return out

    answers = timed("node", lambda: evaluate(sent, key))

    def unblind() -> list[bytes]:
        out = []
        for answer, entry in zip(answers, pool, strict=True):
            suite.validate(answer)
            out.append(suite.subtract(answer, entry[1]))
        return out

    results = timed("sub", unblind)
    expected = [suite.multiply(key, suite.hash_to_group(item)) for item in items]
    if results != expected:
        raise AssertionError(f"{suite.name}: additive blinding did not give b·H(x)")
    a = suite.random_scalar()
    started = time.perf_counter()
    blinded = [suite.multiply(a, suite.hash_to_group(item)) for item in items]
    evaluated = evaluate(blinded, key)
    if evaluate(evaluated, suite.invert(a)) != expected:
        raise AssertionError(f"{suite.name}: multiplicative blinding did not give b·H(x)")
    # Only the coordinator's two steps count (the node's evaluate is timed above).
    timings["mult"] = (time.perf_counter() - started) / count - timings["node"]
    return timings


def _measure_chunk(suite_key: str, count: int) -> bytes:
    """Worker task: ``_per_item`` for one suite, as JSON bytes."""
    return json.dumps(_per_item(_SUITES[suite_key](), count)).encode()


def measure(count: int, workers: int | None = None) -> dict[str, Any]:
    """Per-item microseconds on one core and aggregate on ``workers`` cores, per suite."""
    cores = parallel.default_workers(workers)
    report: dict[str, Any] = {"items": count, "cores": cores, "load_average_1m": os.getloadavg()[0]}
    if cores > 1:
        parallel.run_chunks(_measure_chunk, [("ristretto255", 4)] * cores, cores)  # warm workers
    for key, factory in _SUITES.items():
        try:
            suite = factory()
        except ImportError as exc:
            report[key] = {"skipped": f"{exc}"}
            print(f"skipped {key}: {exc}", file=sys.stderr)
            continue
        single = _per_item(suite, count)
        row: dict[str, Any] = {"name": suite.name}
        row["one_core_us"] = {step: single[step] * 1e6 for step in STEPS}
        if cores > 1:
            outputs = parallel.run_chunks(_measure_chunk, [(key, count)] * cores, cores)
            per_worker = [json.loads(output) for output in outputs]
            # All workers ran at once: aggregate per-item time is the slowest worker's / cores.
            row["all_cores_us"] = {
                step: max(worker[step] for worker in per_worker) / cores * 1e6 for step in STEPS
            }
        report[key] = row
    try:
        report["x25519"] = {
            "name": "X25519 (cryptography), ladder only",
            "one_core_us": {"node": _x25519_node_rate(count) * 1e6},
        }
    except ImportError as exc:
        report["x25519"] = {"skipped": f"{exc}"}
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table, microseconds per item."""
    header = f"{'group':<52} {'cores':>5} " + " ".join(f"{step:>8}" for step in STEPS)
    lines = [
        f"{report['items']:,} items per group; load average {report['load_average_1m']:.1f}; "
        "microseconds per item",
        header,
        "-" * len(header),
    ]
    for key, row in report.items():
        if not isinstance(row, dict):
            continue
        if "skipped" in row:
            lines.append(f"{key:<52} skipped: {row['skipped']}")
            continue
        for label, field in (("1", "one_core_us"), (str(report["cores"]), "all_cores_us")):
            values = row.get(field)
            if values is None:
                continue
            cells = " ".join(
                f"{values[step]:>8.1f}" if step in values else f"{'-':>8}" for step in STEPS
            )
            lines.append(f"{row['name'][:52]:<52} {label:>5} {cells}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    count = int(argv[0].replace(",", "").replace("_", "")) if argv else 2_000
    report = measure(count)
    print(format_table(report))
    print(json.dumps(report, indent=2), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover - manual benchmark entry point
    main(sys.argv[1:])

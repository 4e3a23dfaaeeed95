"""What accountable queries cost: bytes and milliseconds a sealed opening adds, per query and item.

python -m fedtrace.bench.sealing [N_ITEMS ...]    # default 1000 10000; prints JSON

For each watchlist size and blinding (multiplicative: one scalar per query;
additive: one pool scalar per point) it measures, in one process and without the
network: the client's sealing (opening and statement as canonical JSON, HPKE to the
monitor, ECDSA signature), the bytes the sealed opening adds to the query header,
the node's check (sizes, strict statement, signature under the caller's key, the
digest of the points received, the trail's digest of the seal) and the monitor's
verification of that one query (signature, HPKE open, every point recomputed). The
aggregate's second round is measured once: sealing the HE secret key and the
indicator bitmap, and the monitor decrypting and judging the indicator.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fedtrace import blinding, group, pki, psi
from fedtrace.aggregate import indicator, match_positions, position_tags
from fedtrace.bench.figures import wallet_items
from fedtrace.he import SecretHeContext
from fedtrace.items import item_bytes
from fedtrace.monitor import MonitorExport, load_monitor_key, verify_export
from fedtrace.monitor.export import ExportedQuery
from fedtrace.monitor.verify import CONSISTENT
from fedtrace.opening import (
    KIND_AGGREGATE_INDICATOR,
    KIND_AGGREGATE_POINTS,
    KIND_MATCH,
    Blinding,
    Opening,
    SealedOpening,
    Statement,
    check_form,
    indicator_bitmap,
    indicator_digest,
    monitor_public_key,
    points_digest,
    seal,
)

DEFAULT_SIZES = (1_000, 10_000)
INDICATOR_ROWS = 20_000
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Parties:
    """An investigator FR and a monitor OVS, issued by a throw-away CA."""

    investigator_key: bytes
    investigator_cert: bytes
    monitor_cert: bytes
    monitor_key_pem: bytes

    @staticmethod
    def create(root: Path) -> Parties:
        pki.init_ca(root / "ca")
        pki.issue(root / "ca", root / "FR", name="FR", role=pki.ROLE_INVESTIGATOR)
        pki.issue(root / "ca", root / "OVS", name="OVS", role=pki.ROLE_MONITOR)
        return Parties(
            pki.read_key_pem(root / "FR" / "key.pem"),
            (root / "FR" / "cert.pem").read_bytes(),
            (root / "OVS" / "cert.pem").read_bytes(),
            pki.read_key_pem(root / "OVS" / "key.pem"),
        )


def _ms(action: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    value = action()
    return (time.perf_counter() - started) * 1000, value


def _statement(kind: str, points: list[bytes], **extra: Any) -> Statement:
    return Statement(
        kind=kind,
        monitor="OVS",
        node="EE",
        dataset="wallets",
        epoch_id="e1",
        case_ref="BENCH-1",
        legal_basis="MLA",
        investigator="FR",
        nonce=os.urandom(16),
        timestamp_unix_ms=int(time.time() * 1000),
        item_count=len(points),
        points_sha256=points_digest(points),
        **extra,
    )


def _exported(
    parties: Parties, sealed: SealedOpening, kind: str, sent: list[bytes], **extra: Any
) -> ExportedQuery:
    values: dict[str, Any] = {
        "audit_seq": 1,
        "time": "2026-11-30T06:00:00Z",
        "partner": "FR",
        "case_ref": "BENCH-1",
        "kind": kind,
        "dataset": "wallets",
        "epoch_id": "e1",
        "statement": sealed.statement,
        "signature": sealed.signature,
        "enc": sealed.enc,
        "ciphertext": sealed.ciphertext,
        "investigator_cert_pem": parties.investigator_cert,
        "received_points": b"".join(sent),
        "answer_points": b"",
        "indicator_ciphertexts": (),
        "blinding_point": b"",
        "node_points_sha256": points_digest(sent).hex(),
        "opening_sha256": sealed.digest().hex(),
    }
    values.update(extra)
    return ExportedQuery(**values)


def _node_check(sealed: SealedOpening, kind: str, sent: list[bytes], cert: bytes) -> None:
    """What the node does before answering, without the database write."""
    statement = check_form(sealed, kind=kind, item_count=len(sent), signer_certificate_pem=cert)
    if statement.points_sha256 != points_digest(sent):
        raise AssertionError("the node would refuse the bench's own opening")
    sealed.digest()


def measure_points(parties: Parties, size: int, mode: str) -> dict[str, float]:
    """One match query of ``size`` items under ``mode`` blinding."""
    items = [item_bytes("wallet", address) for address in wallet_items(size)]
    point_c = b""
    if mode == blinding.MULTIPLICATIVE:
        scalar = group.random_scalar()
        blind_ms, sent = _ms(lambda: group.blind_items(items, scalar))
        claimed = Blinding(mode, scalar=scalar)
    else:
        binding = blinding.PoolBinding(
            "EE", "wallets", "e1", blinding.blinding_point(group.random_scalar())
        )
        pool = blinding.prepare_pool(binding, size)
        blind_ms, (sent, entries) = _ms(lambda: blinding.hash_and_blind(items, pool, binding))
        claimed = Blinding(
            mode, blinding_point=binding.blinding_point, r=tuple(e.scalar for e in entries)
        )
        point_c = binding.blinding_point
    monitor_key = monitor_public_key(parties.monitor_cert)
    statement = _statement(KIND_MATCH, sent)
    seal_ms, sealed = _ms(
        lambda: seal(
            statement,
            Opening(KIND_MATCH, tuple(items), claimed),
            monitor_key,
            parties.investigator_key,
        )
    )
    check_ms, _ = _ms(lambda: _node_check(sealed, KIND_MATCH, sent, parties.investigator_cert))
    export = MonitorExport(
        Path("."),
        "EE",
        "OVS",
        "",
        (_exported(parties, sealed, KIND_MATCH, sent, blinding_point=point_c),),
    )
    key = load_monitor_key(parties.monitor_key_pem)
    verify_ms, report = _ms(lambda: verify_export(export, key))
    if report.verdicts[0].status != CONSISTENT:
        raise AssertionError(f"the bench's honest query is {report.verdicts[0].reason}")
    size_bytes = sealed.to_proto().ByteSize()
    return {
        "items": float(size),
        "blind_ms": blind_ms,
        "seal_ms": seal_ms,
        "seal_ms_per_item": seal_ms / size,
        "opening_bytes": float(size_bytes),
        "opening_bytes_per_item": size_bytes / size,
        "points_bytes": float(32 * size),
        "node_check_ms": check_ms,
        "monitor_verify_ms": verify_ms,
        "monitor_verify_ms_per_item": verify_ms / size,
    }


def measure_indicator(
    parties: Parties, rows: int = INDICATOR_ROWS, watchlist: int = 1_000
) -> dict[str, float]:
    """Aggregate round 2: sealing the HE secret key and indicator, and the monitor's check."""
    table_items = [f"row-{i}".encode() for i in range(rows)]
    node_key = group.random_scalar()
    table = psi.build_table(table_items, node_key)
    tags = position_tags(table)
    items = table_items[: watchlist // 2] + [f"absent-{i}".encode() for i in range(watchlist // 2)]
    scalar = group.random_scalar()
    sent = group.blind_items(items, scalar)
    answer = psi.shuffled(psi.evaluate(sent, node_key))
    positions = match_positions(tags, group.exponentiate(answer, group.invert_scalar(scalar)))
    secret = SecretHeContext.generate()
    cts = secret.encrypt_indicator(indicator(rows, positions))
    monitor_key = monitor_public_key(parties.monitor_cert)
    first_statement = _statement(KIND_AGGREGATE_POINTS, sent)
    first = seal(
        first_statement,
        Opening(
            KIND_AGGREGATE_POINTS, tuple(items), Blinding(blinding.MULTIPLICATIVE, scalar=scalar)
        ),
        monitor_key,
        parties.investigator_key,
    )

    def second() -> SealedOpening:
        opening = Opening(
            KIND_AGGREGATE_INDICATOR,
            he_secret_context=secret.secret_key_bytes(),
            indicator=indicator_bitmap(rows, positions),
            row_count=rows,
            positions=tuple(positions),
        )
        statement = dataclasses.replace(
            first_statement,
            kind=KIND_AGGREGATE_INDICATOR,
            indicator_sha256=indicator_digest(cts),
            query_id=os.urandom(16),
        )
        return seal(statement, opening, monitor_key, parties.investigator_key)

    seal_ms, sealed = _ms(second)
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "tags").mkdir()
        (Path(directory) / "tags" / "wallets-e1.bin").write_bytes(tags)
        export = MonitorExport(
            Path(directory),
            "EE",
            "OVS",
            "",
            (
                _exported(
                    parties, first, KIND_AGGREGATE_POINTS, sent, answer_points=b"".join(answer)
                ),
                _exported(
                    parties,
                    sealed,
                    KIND_AGGREGATE_INDICATOR,
                    sent,
                    indicator_ciphertexts=tuple(cts),
                    received_points=b"",  # round 2 carries the indicator, not points
                ),
            ),
        )
        key = load_monitor_key(parties.monitor_key_pem)
        verify_ms, report = _ms(lambda: verify_export(export, key))
    if [v.status for v in report.verdicts] != [CONSISTENT, CONSISTENT]:
        raise AssertionError(f"the bench's honest aggregate is {report.verdicts[-1].reason}")
    return {
        "rows": float(rows),
        "items": float(watchlist),
        "seal_ms": seal_ms,
        "opening_bytes": float(sealed.to_proto().ByteSize()),
        "indicator_bytes": float(sum(len(c) for c in cts)),
        "monitor_verify_both_rounds_ms": verify_ms,
    }


def measure(sizes: tuple[int, ...] = DEFAULT_SIZES, rows: int = INDICATOR_ROWS) -> dict[str, Any]:
    """Every figure: per size and blinding, and the aggregate's second round."""
    with tempfile.TemporaryDirectory() as directory:
        parties = Parties.create(Path(directory))
    figures: dict[str, Any] = {"points": {}, "indicator": {}}
    for size in sizes:
        for mode in (blinding.MULTIPLICATIVE, blinding.ADDITIVE):
            figures["points"][f"{mode}-{size}"] = measure_points(parties, size, mode)
    figures["indicator"] = measure_indicator(parties, rows)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sizes = tuple(int(arg) for arg in args) or DEFAULT_SIZES
    print(json.dumps(measure(sizes), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

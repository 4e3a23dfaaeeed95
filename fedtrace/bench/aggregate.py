"""Seconds and bytes of one encrypted aggregate query in one process, without the network.

python -m fedtrace.bench.aggregate [N_RECORDS]    # default 100,000; prints JSON
"""

from __future__ import annotations

import json
import secrets
import sys
import time

from fedtrace import group, psi
from fedtrace.aggregate import (
    COUNT_COLUMN,
    TAG_BYTES,
    decrypt_aggregate,
    indicator,
    match_positions,
    node_aggregate,
    position_tags,
)
from fedtrace.he import PublicHeContext, SecretHeContext


def measure(n_records: int, n_columns: int = 3, watchlist: int = 10_000) -> dict[str, float]:
    """Bytes and seconds of one aggregate over a table of ``n_records`` rows (no network)."""
    table = group.blind_items(
        [f"r{i}".encode() for i in range(min(n_records, 20_000))], group.random_scalar(), workers=1
    )
    table = (table * (-(-n_records // len(table))))[:n_records]
    figures: dict[str, float] = {"records": float(n_records), "columns": float(n_columns)}
    started = time.perf_counter()
    tags = position_tags(table)
    figures["node_tags_s"] = time.perf_counter() - started
    positions = sorted(
        secrets.SystemRandom().sample(range(n_records), min(watchlist, n_records) // 10)
    )
    started = time.perf_counter()
    secret = SecretHeContext.generate()
    public_blob = secret.public_bytes()
    cts = secret.encrypt_indicator(indicator(n_records, positions))
    figures["coordinator_encrypt_s"] = time.perf_counter() - started
    columns: dict[str, list[int]] = {COUNT_COLUMN: [1] * n_records}
    for c in range(n_columns):
        columns[f"col{c}"] = [secrets.randbelow(10**9) for _ in range(n_records)]
    started_cpu = time.process_time()
    started = time.perf_counter()
    public = PublicHeContext.from_bytes(public_blob)
    answers = node_aggregate(public, cts, columns, {})
    figures["node_aggregate_s"] = time.perf_counter() - started
    figures["node_aggregate_cpu_s"] = time.process_time() - started_cpu
    started = time.perf_counter()
    totals = decrypt_aggregate(secret, answers)
    figures["coordinator_decrypt_s"] = time.perf_counter() - started
    for name, values in columns.items():
        if totals[name] != sum(values[p] for p in positions):
            raise AssertionError(f"column {name} is not exact")
    answer_bytes = sum(len(b) for b in answers.values())
    indicator_bytes = sum(len(b) for b in cts)
    figures.update(
        tag_bytes_per_record=len(tags) / n_records,
        indicator_bytes_per_record=indicator_bytes / n_records,
        answer_bytes_per_record=answer_bytes / n_records,
        public_context_bytes=float(len(public_blob)),
        public_context_bytes_per_record=len(public_blob) / n_records,
        total_bytes_per_record=(len(tags) + indicator_bytes + answer_bytes + len(public_blob))
        / n_records,
    )
    return figures


def measure_query(n_records: int, watchlist: int = 10_000, n_columns: int = 3) -> dict[str, float]:
    """One whole aggregate query without the network: ``measure`` plus both PSI rounds.

    Coordinator blinds ``watchlist`` items, the node evaluates and shuffles them,
    the coordinator unblinds and finds its positions in the tags, then the HE
    round of ``measure``. ``end_to_end_s`` is the sum of the sequential steps;
    ``node_cpu_s`` the node's CPU for evaluation and the HE answer.
    """
    figures = measure(n_records, n_columns, watchlist)
    items = [f"w{i}".encode() for i in range(watchlist)]
    started = time.perf_counter()
    query = psi.BlindedQuery(items)
    figures["coordinator_blind_s"] = time.perf_counter() - started
    key = group.random_scalar()
    started, started_cpu = time.perf_counter(), time.process_time()
    answer = psi.shuffled(psi.evaluate(query.blinded, key))
    figures["node_evaluate_s"] = time.perf_counter() - started
    figures["node_evaluate_cpu_s"] = time.process_time() - started_cpu
    started = time.perf_counter()
    unblinded = query.unblind(answer)
    # Tags of a table that holds every watchlist item, padded with non-matching rows.
    tags = position_tags(unblinded) + bytes(TAG_BYTES * max(n_records - len(unblinded), 0))
    started_match = time.perf_counter()
    match_positions(tags, unblinded)
    figures["coordinator_match_s"] = time.perf_counter() - started_match
    figures["coordinator_unblind_s"] = started_match - started
    figures["end_to_end_s"] = sum(
        figures[k]
        for k in (
            "coordinator_blind_s",
            "node_evaluate_s",
            "coordinator_unblind_s",
            "coordinator_match_s",
            "coordinator_encrypt_s",
            "node_aggregate_s",
            "coordinator_decrypt_s",
        )
    )
    figures["node_cpu_s"] = figures["node_evaluate_cpu_s"] + figures["node_aggregate_cpu_s"]
    figures["bytes_per_record_per_query"] = (
        figures["indicator_bytes_per_record"]
        + figures["answer_bytes_per_record"]
        + (64 * watchlist) / n_records
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(measure_query(int(args[0]) if args else 100_000), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Smoke test of the benchmark's code paths at toy sizes (not a timed test)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from fedtrace.bench import aggregate as aggregate_bench
from fedtrace.bench import federation as bench_federation
from fedtrace.bench import micro
from fedtrace.bench import run as bench
from fedtrace.bench.__main__ import main
from fedtrace.bench.figures import Bench, render_table, wallet_items


@pytest.fixture
def quiet_bench(monkeypatch: pytest.MonkeyPatch) -> Bench:
    monkeypatch.setattr(micro, "CEILING_ITEMS", 2_000)
    return Bench(lambda text: None)


@pytest.mark.slow  # starts the worker pool and the openmined-psi peer
def test_micro_sections_name_their_methods(quiet_bench: Bench) -> None:
    ceiling = micro.measure_ceiling(quiet_bench)
    assert ceiling > 0
    seconds = micro.measure_blinding(quiet_bench, [1_500], ceiling)
    assert seconds[1_500] > 0
    peer = micro.measure_peer(quiet_bench, [1_500])
    assert set(peer) == {"setup", "request", "bytes_equal_fpr"}
    assert micro.check_message_sizes(quiet_bench)
    names = {figure.name for figure in quiet_bench.figures}
    assert "fedtrace GCS bytes/item, 1,500" in names
    assert all(figure.method for figure in quiet_bench.figures)
    filter_bytes = next(f.value for f in quiet_bench.figures if f.name.startswith("fedtrace GCS b"))
    assert filter_bytes <= peer["bytes_equal_fpr"]
    quiet_bench.target("example", 1.0, "<=", 2.0, "s")
    table = render_table(quiet_bench)
    assert "[ceiling]" in table and "MET" in table


def test_generated_transactions_are_valid_and_touch_each_wallet_once(tmp_path: Path) -> None:
    wallets = wallet_items(10)
    path = tmp_path / "tx.csv"
    assert bench_federation.write_transactions(path, wallets, seed=1) == 5
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    touched = [row["from_address"] for row in rows] + [row["to_address"] for row in rows]
    assert sorted(touched) == sorted(wallets)
    assert all(len(address) == 42 and address == address.lower() for address in touched)


def test_peak_memory_is_read_from_proc() -> None:
    assert bench_federation._vm_hwm(os.getpid()) > 1 << 20
    assert os.getpid() not in bench_federation._descendants(os.getpid())


def test_json_output_is_one_object(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def fake_run(quick: bool, workdir: Path, cold: int, warm: int, say: object) -> Bench:
        result = Bench(lambda text: None)
        result.add("ceiling", "x", 1.0, "items/s", "fake")
        result.target("t", 1.0, ">=", 0.5, "ratio")
        return result

    monkeypatch.setattr(bench, "run", fake_run)
    assert main(["--json", "--quick", "--workdir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["targets"][0]["met"] is True
    assert report["figures"][0]["method"] == "fake"


def test_aggregate_rows_and_targets(monkeypatch: pytest.MonkeyPatch, quiet_bench: Bench) -> None:
    calls: list[int] = []

    def fake_query(n_records: int) -> dict[str, float]:
        calls.append(n_records)
        figures = dict.fromkeys(bench.AGGREGATE_FIGURES, 1.0)
        figures.update(
            end_to_end_s=4.0, bytes_per_record_per_query=58.2 if n_records < 10**6 else 31.7
        )
        return figures

    monkeypatch.setattr(aggregate_bench, "measure_query", fake_query)
    bench.measure_aggregates(quiet_bench, [100_000, 1_000_000])
    assert calls == [100_000, 1_000_000]
    targets = {t.name: t for t in quiet_bench.targets}
    assert targets["aggregate 10k x 100k end to end"].met
    assert targets["aggregate bytes/record/query, 100k"].measured == 58.2
    assert targets["aggregate bytes/record/query, 1,000k"].met
    assert {f.section for f in quiet_bench.figures} == {"aggregate 100,000", "aggregate 1,000,000"}


def test_overlap_runs_the_subprocess_and_reports_growth(
    monkeypatch: pytest.MonkeyPatch, quiet_bench: Bench, tmp_path: Path
) -> None:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: object) -> object:
        seen.append(argv)
        wallets = int(argv[argv.index("--wallets") + 1])
        result = {
            "overlap_seconds": 30.0,
            "setup_seconds": 20.0,
            "coordinator_peak_rss_mib": wallets / 1000,
            "node_peak_rss_mib": {"EE": wallets / 2000, "FR": 1.0},
            "statuses": {"EE": "ok", "FR": "ok"},
        }
        return subprocess.CompletedProcess(argv, 0, json.dumps(result), "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    bench.measure_overlap(quiet_bench, tmp_path, [100_000, 1_000_000])
    assert [a[a.index("-m") + 1] for a in seen] == ["fedtrace.bench.overlap_federation"] * 2
    assert all(a[a.index("--nodes") + 1] == "3" and "--dir" in a for a in seen)
    growth = {f.name: f.value for f in quiet_bench.figures if f.section == "ratios"}
    assert growth == {
        "overlap node RSS growth 100k -> 1M": 10.0,
        "overlap coordinator RSS growth 100k -> 1M": 10.0,
    }
    assert [t.name for t in quiet_bench.targets] == ["overlap 3 x 100k"]
    assert quiet_bench.targets[0].met and not quiet_bench.notes

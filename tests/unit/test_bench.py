"""Smoke test of the benchmark's code paths at toy sizes (not a timed test)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from fedtrace import bench, bench_federation


@pytest.fixture
def quiet_bench(monkeypatch: pytest.MonkeyPatch) -> bench.Bench:
    monkeypatch.setattr(bench, "CEILING_ITEMS", 2_000)
    return bench.Bench(lambda text: None)


def test_micro_sections_name_their_methods(quiet_bench: bench.Bench) -> None:
    ceiling = bench.measure_ceiling(quiet_bench)
    assert ceiling > 0
    seconds = bench.measure_blinding(quiet_bench, [1_500], ceiling)
    assert seconds[1_500] > 0
    peer = bench.measure_peer(quiet_bench, [1_500])
    assert set(peer) == {"setup", "request", "bytes_equal_fpr"}
    assert bench.check_message_sizes(quiet_bench)
    names = {figure.name for figure in quiet_bench.figures}
    assert "fedtrace GCS bytes/item, 1,500" in names
    assert all(figure.method for figure in quiet_bench.figures)
    filter_bytes = next(f.value for f in quiet_bench.figures if f.name.startswith("fedtrace GCS b"))
    assert filter_bytes <= peer["bytes_equal_fpr"]
    quiet_bench.target("example", 1.0, "<=", 2.0, "s")
    table = bench.render_table(quiet_bench)
    assert "[ceiling]" in table and "MET" in table


def test_generated_transactions_are_valid_and_touch_each_wallet_once(tmp_path: Path) -> None:
    wallets = bench.wallet_items(10)
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
    def fake_run(quick: bool, workdir: Path, cold: int, warm: int, say: object) -> bench.Bench:
        result = bench.Bench(lambda text: None)
        result.add("ceiling", "x", 1.0, "items/s", "fake")
        result.target("t", 1.0, ">=", 0.5, "ratio")
        return result

    monkeypatch.setattr(bench, "run", fake_run)
    assert bench.main(["--json", "--quick", "--workdir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["targets"][0]["met"] is True
    assert report["figures"][0]["method"] == "fake"

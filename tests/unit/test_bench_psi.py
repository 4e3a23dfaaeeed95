"""`scripts/bench --psi` at toy sizes: sizes, the peers interpreter, rows, ratios, JSON.

The real nodes are replaced by fixed figures here (tests/integration and the bench
itself start them); the peers subprocess really runs, with this interpreter, which
has no spu: SecretFlow is then reported as skipped with its reason.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedtrace.bench import peers
from fedtrace.bench import psi as bench_psi
from fedtrace.bench import run as bench_run
from fedtrace.bench.__main__ import main
from fedtrace.bench.federation import PsiFederationFigures, check_match_report
from fedtrace.bench.figures import Bench, render_table


def _quiet() -> Bench:
    return Bench(lambda text: None)


def test_sizes_by_name_and_number() -> None:
    assert bench_psi.parse_sizes("234k,1m") == (233_772, 1_000_000)
    assert bench_psi.parse_sizes("20k, 1500 ,2_000,") == (20_000, 1_500, 2_000)
    assert bench_psi.parse_sizes("") == ()
    for bad in ("lots", "1", "k"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_psi.parse_size(bad)


def test_plan_defaults_to_three_nodes_at_a_million() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm-runs", type=int, default=5)
    bench_psi.add_arguments(parser)
    plan = bench_psi.plan_from_args(parser.parse_args(["--psi"]))
    assert plan.sizes == (233_772, 1_000_000)
    assert plan.federation_sizes == (1_000_000,)
    assert (plan.watchlist, plan.held, plan.cli_runs, plan.profile) == (10_000, 5_000, 5, True)
    small = bench_psi.plan_from_args(
        parser.parse_args(["--sizes", "20k", "--federation-sizes", "5k", "--no-profile"])
    )
    assert (small.sizes, small.federation_sizes, small.profile) == ((20_000,), (5_000,), False)


def test_sets_are_deterministic_and_seed_zero_keeps_the_old_sets() -> None:
    node, watchlist = peers.make_sets(50, 20, 5, seed=1)
    assert (node, watchlist) == peers.make_sets(50, 20, 5, seed=1)
    assert len(set(node) & set(watchlist)) == 5 and len(set(watchlist)) == 20
    assert all(len(a) == 42 and a == a.lower() and a.startswith("0x") for a in node)
    old = "0x" + hashlib.sha256(b"node-0").hexdigest()[:40]
    assert peers.make_sets(50, 20, 5)[0][0] == old != node[0]


def test_peers_interpreter_is_found_or_the_reason_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(bench_psi.PEERS_PYTHON_VARIABLE, str(tmp_path / "missing"))
    python, why = bench_psi.peers_python(tmp_path)
    assert python is None and "not an executable" in why
    monkeypatch.setenv(bench_psi.PEERS_PYTHON_VARIABLE, sys.executable)
    assert bench_psi.peers_python(tmp_path)[0] == sys.executable
    monkeypatch.delenv(bench_psi.PEERS_PYTHON_VARIABLE)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    python, why = bench_psi.peers_python(tmp_path)
    assert python is None and "--peers-setup" in why and "spu==0.9.5" in why
    made = tmp_path / ".venv-peers" / "bin" / "python"
    made.parent.mkdir(parents=True)
    made.write_text("")
    assert bench_psi.peers_python(tmp_path) == (str(made), ".venv-peers")


def test_peers_subprocess_prints_json_apart_from_its_logs(tmp_path: Path) -> None:
    """This interpreter has no spu: the subprocess still answers, with the reason."""
    result = bench_psi.run_peers_subprocess(sys.executable, 40, 10, 4, tmp_path)
    assert "spu" in result["skipped"]
    assert (tmp_path / "peers-path" / "fedtrace" / "bench" / "peers.py").is_file()


def test_peers_subprocess_failure_is_a_skip(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no such module' >&2\nexit 3\n")
    fake.chmod(0o755)
    result = bench_psi.run_peers_subprocess(str(fake), 40, 10, 4, tmp_path)
    assert result == {"skipped": "the peers interpreter exited 3: no such module"}


def test_a_peers_interpreter_that_hangs_is_a_skip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(bench_psi, "PEERS_TIMEOUT_SECONDS", 0.2)
    result = bench_psi.run_peers_subprocess(str(fake), 40, 10, 4, tmp_path)
    assert result["skipped"].startswith("the peers interpreter did not answer")


def test_peers_setup_makes_the_venv_with_spu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    commands: list[list[str]] = []

    def fake_run(command: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert bench_psi.setup_peers_venv(lambda text: None, tmp_path) == 0
    python = str(tmp_path / ".venv-peers" / "bin" / "python")
    assert commands == [
        [sys.executable, "-m", "venv", str(tmp_path / ".venv-peers")],
        [python, "-m", "pip", "install", "spu==0.9.5"],
        [python, "-c", "import spu.psi"],
    ]


def _figures(nodes: int = 1) -> PsiFederationFigures:
    return PsiFederationFigures(
        nodes=nodes,
        wallets=40,
        node_start_s=(2.0,) * nodes,
        first_answer_s=1.0,
        prepare_s=0.5,
        prepared_entries=20,
        warm_api_s=(0.4, 0.5),
        warm_cli_s=(0.9, 1.1),
    )


def test_section_rows_and_ratios_from_the_same_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[int, int]] = []

    def fake_federation(
        root: Path, nodes: int, wallets: Any, watchlist: Any, expected: int, **kwargs: Any
    ) -> PsiFederationFigures:
        calls.append((nodes, len(wallets)))
        assert expected == 4 and len(watchlist) == 10
        return _figures(nodes)

    secretflow = {"offline_s": 2.0, "online_s": 0.5, "total_s": 2.5, "intersection": 4}
    monkeypatch.setattr(bench_psi, "measure_psi_federation", fake_federation)
    monkeypatch.setattr(bench_psi, "peers_python", lambda: ("/peers/python", "test"))
    monkeypatch.setattr(bench_psi, "run_peers_subprocess", lambda *args: dict(secretflow))
    compute = {key: 0.1 for key, _ in bench_psi.PROFILE_ROWS}
    compute |= {"offline_node_epoch_s": 1.0, "offline_node_filter_s": 0.1}
    monkeypatch.setattr(peers, "run_fedtrace", lambda node, watchlist, workers: compute)
    plan = bench_psi.PsiPlan(sizes=(40,), federation_sizes=(40,), watchlist=10, held=4)
    bench = _quiet()
    bench_psi.measure(bench, plan, tmp_path)

    assert calls == [(1, 40), (3, 40)]
    values = {(f.section, f.name): f.value for f in bench.figures}
    assert values[("psi 40", "SecretFlow ub_psi online")] == 0.5
    assert values[("psi 40", "fedtrace cold (offline + online)")] == 3.0
    assert values[("psi 40", "fedtrace warm, in process (median of 2)")] == 0.45
    assert values[("psi 40", "fedtrace warm, CLI wall (median of 2)")] == 1.0
    assert values[("psi ratios", "cold / SecretFlow offline+online, 40")] == pytest.approx(1.2)
    assert values[("psi ratios", "warm in process / SecretFlow online, 40")] == 0.9
    assert values[("psi ratios", "warm CLI wall / SecretFlow online, 40")] == 2.0
    assert ("psi 3 nodes x 40", "fedtrace warm, in process (median of 2)") in values
    assert (
        "psi ratios",
        "3 nodes warm in process / SecretFlow online (1 server), 40",
    ) in values
    if importlib.util.find_spec("private_set_intersection"):
        assert ("psi ratios", "warm in process / openmined online, 40") in values
    profile = {f.name: f.value for f in bench.figures if f.section == "psi 40 warm profile"}
    assert profile["compute, as served"] == pytest.approx(0.4)  # node as served, not every core
    assert profile["rest of the warm match"] == pytest.approx(0.05)
    targets = {t.name: t.met for t in bench.targets}
    assert targets == {
        "cold faster than SecretFlow, 40": False,
        "warm faster than SecretFlow online, 40": True,
    }
    assert all(figure.method for figure in bench.figures)
    assert "[psi ratios]" in render_table(bench)


def test_a_missing_peer_is_a_note_not_a_row(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bench_psi, "measure_psi_federation", lambda *a, **k: _figures())
    monkeypatch.setattr(bench_psi, "peers_python", lambda: (None, "no peers interpreter"))
    plan = bench_psi.PsiPlan(sizes=(40,), federation_sizes=(), watchlist=10, held=4, profile=False)
    bench = _quiet()
    bench_psi.measure(bench, plan, tmp_path)
    assert "psi 40: SecretFlow ub_psi skipped: no peers interpreter" in bench.notes
    assert not [f for f in bench.figures if "SecretFlow" in f.name]
    assert not bench.targets


def test_a_failed_size_is_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*args: Any, **kwargs: Any) -> PsiFederationFigures:
        raise RuntimeError("EE matched 3, expected 4")

    monkeypatch.setattr(bench_psi, "measure_psi_federation", broken)
    monkeypatch.setattr(bench_psi, "peers_python", lambda: (None, "none"))
    monkeypatch.setattr(peers, "run_openmined", lambda node, watchlist: {"skipped": "x"})
    plan = bench_psi.PsiPlan(
        sizes=(40,), federation_sizes=(40,), watchlist=10, held=4, profile=False
    )
    bench = _quiet()
    bench_psi.measure(bench, plan, tmp_path)
    assert "psi 40 failed: EE matched 3, expected 4" in bench.notes
    assert "psi 3 nodes x 40 failed: EE matched 3, expected 4" in bench.notes


def test_match_reports_are_checked() -> None:
    def document(count: int, blinding: str) -> dict[str, object]:
        transcript = {"blinding": blinding}
        result = {"node": "EE", "status": "ok", "match_count": count}
        return {"results": [{**result, "signature": {"transcript": transcript}}]}

    check_match_report(document(4, "additive"), 1, 4, "additive")
    check_match_report(document(4, "multiplicative"), 1, 4, None)
    with pytest.raises(RuntimeError, match="expected 4"):
        check_match_report(document(3, "additive"), 1, 4, "additive")
    with pytest.raises(RuntimeError, match="not additive"):
        check_match_report(document(4, "multiplicative"), 1, 4, "additive")
    with pytest.raises(RuntimeError, match="2 nodes"):
        check_match_report(document(4, "additive"), 2, 4, None)


def test_psi_flag_runs_only_the_section_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seen: list[bench_psi.PsiPlan] = []

    def fake_run_psi(plan: bench_psi.PsiPlan, workdir: Path, say: object) -> Bench:
        seen.append(plan)
        bench = _quiet()
        bench.add("psi ratios", "warm in process / SecretFlow online, 20,000", 0.8, "x", "fake")
        return bench

    def no_full_run(*args: object) -> Bench:
        raise AssertionError("--psi must not run the whole bench")

    monkeypatch.setattr(bench_run, "run_psi", fake_run_psi)
    monkeypatch.setattr(bench_run, "run", no_full_run)
    argv = ["--psi", "--sizes", "20k", "--json", "--workdir", str(tmp_path), "--cli-runs", "2"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["figures"][0]["value"] == 0.8
    assert seen[0].sizes == (20_000,) and seen[0].federation_sizes == ()
    assert seen[0].cli_runs == 2


def test_peers_setup_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_psi, "setup_peers_venv", lambda say: 7)
    assert main(["--peers-setup"]) == 7

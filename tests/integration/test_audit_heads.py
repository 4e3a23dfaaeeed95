"""Signed audit heads end to end: reports carry them, `audit heads` collects them from real
nodes, and `audit verify --heads` catches a node directory restored from an earlier copy.

A federation of its own (EE answers FR; SG grants nothing), because the test stops,
copies and restores EE's node directory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedtrace.audit_head import SignedHead
from fedtrace.demo_data import DemoData, generate_federation_data
from fedtrace.harness import LocalFederation
from tests.integration.conftest import POLICIES, fedtrace

pytestmark = pytest.mark.slow

ROLLED_BACK = "trail rolled back or truncated behind a signed head held by a partner"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFederation, DemoData]]:
    root = tmp_path_factory.mktemp("heads")
    data = generate_federation_data(root / "data", ("EE", "SG"), 300, seed=5)
    with LocalFederation(root, investigator="FR", deadline_seconds=30) as fed:
        fed.add_node("EE", policy=POLICIES["EE"], tables=data.tables("EE"))
        fed.add_node("SG", tables=data.tables("SG"))
        fed.issue_investigator()
        fed.start()
        yield fed, data


def _match(fed: LocalFederation, data: DemoData, out: Path) -> dict[str, object]:
    watchlist = fed.root / "watchlist.txt"
    watchlist.write_text("\n".join(data.watchlist(20)) + "\n")
    done = fedtrace(
        "query", "match", "--federation", str(fed.federation_file), "--watchlist",
        str(watchlist), "--dataset", "wallets", "--case", "HEADS-1", "--legal-basis", "MLA",
        "--format", "json", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr  # SG grants FR nothing
    report: dict[str, object] = json.loads(out.read_text())
    return report


def _heads(fed: LocalFederation, heads: Path, *extra: str) -> tuple[int, str]:
    done = fedtrace(
        "audit", "heads", "--federation", str(fed.federation_file), "--out", str(heads), *extra
    )
    return done.returncode, done.stdout + done.stderr


def test_heads_collected_then_a_restored_node_dir_is_caught(
    small: tuple[LocalFederation, DemoData], tmp_path: Path
) -> None:
    fed, data = small
    report = _match(fed, data, tmp_path / "r1.json")
    ee = next(r for r in report["results"] if r["node"] == "EE")  # type: ignore[attr-defined]
    first = SignedHead.from_dict(ee["audit_head"])
    assert first.jurisdiction == "EE" and first.entries > 0
    assert fedtrace("report", "verify", str(tmp_path / "r1.json"), "--ca",
                    str(fed.ca_dir / "ca.pem")).returncode == 0  # fmt: skip

    heads = tmp_path / "HEADS.json"
    code, out = _heads(fed, heads, "--from-report", str(tmp_path / "r1.json"))
    assert code == 0, out
    assert "EE: ok, head of" in out and "SG: ok, head of" in out
    collected = json.loads(heads.read_text())
    assert collected["v"] == 1 and collected["collected_at"]
    assert {h["jurisdiction"] for h in collected["heads"]} == {"EE", "SG"}
    assert any(h["entries"] == first.entries for h in collected["heads"])
    forged = json.loads((tmp_path / "r1.json").read_text())
    next(r for r in forged["results"] if r["node"] == "EE")["audit_head"]["entries"] += 1
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    done = fedtrace("audit", "heads", "--from-report", str(tmp_path / "forged.json"), "--out",
                    str(tmp_path / "other.json"))  # fmt: skip
    assert done.returncode == 1 and "EE: signed audit head does not verify" in done.stdout

    ee_node = fed.nodes["EE"]
    ee_node.stop()
    backup = tmp_path / "EE-before"
    shutil.copytree(ee_node.node_dir, backup)
    fed.start()  # EE again, on a new port: FED.toml rewritten
    _match(fed, data, tmp_path / "r2.json")
    fed.nodes["SG"].stop()
    code, out = _heads(fed, heads)
    assert code == 3, out  # SG did not answer: listed, the others kept
    assert "SG: unreachable" in out and "EE: ok" in out
    kept = json.loads(heads.read_text())
    assert len(kept["heads"]) > len(collected["heads"])  # every distinct head is kept
    assert [u["node"] for u in kept["unreachable"]] == ["SG"]

    ee_node.stop()
    done = fedtrace("audit", "verify", str(ee_node.node_dir), "--heads", str(heads))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "signed heads from" in done.stdout

    shutil.rmtree(ee_node.node_dir)
    shutil.copytree(backup, ee_node.node_dir)  # the node's operator restores the earlier copy
    assert fedtrace("audit", "verify", str(ee_node.node_dir)).returncode == 0
    done = fedtrace("audit", "verify", str(ee_node.node_dir), "--heads", str(heads))
    assert done.returncode == 1
    assert f"audit trail NOT intact: {ROLLED_BACK}: head of" in done.stdout

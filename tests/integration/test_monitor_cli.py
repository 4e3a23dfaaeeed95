"""Across the process boundary: a real node demands sealed openings, the monitor verifies them.

`fedtrace query match` (a separate process, through FED.toml's [[monitor]]) against a
real `fedtrace node serve`, then `fedtrace node monitor-export` and `fedtrace monitor
verify`: exit 0. Then a modified client in this process (the coordinator with a tagging
blinding, over real mTLS) queries the same node, which answers; a fresh export then
verifies with exit 1, naming the tagged points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from coordinator.federation import load_federation
from coordinator.match import MatchQuery, run_match
from coordinator.transport import GrpcConnections
from fedtrace import group, psi
from fedtrace.harness import LocalFederation, run_cli
from fedtrace.pki import ROLE_MONITOR, issue
from fedtrace.wire import Level, NodeStatus
from tests.adversarial.test_monitor_misuse import monitored_policy
from tests.unit.test_match_in_memory import eth, transactions_csv

pytestmark = pytest.mark.slow

TAG = group.hash_to_group(b"tag seen across the wire")


class TaggingQuery(psi.BlindedQuery):
    """The honest blinding, then a tag added to points 0 and 2."""

    def __init__(self, items: Sequence[bytes], **options: Any) -> None:
        super().__init__(items, **options)
        for index in (0, 2):
            self.blinded[index] = group.add_points(self.blinded[index], TAG)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("monitor-cli")
    wallets = sorted(eth(n) for n in range(1, 301))
    with LocalFederation(root) as federation:
        federation.add_node(
            "EE",
            policy=monitored_policy("EE"),
            tables={"transactions": transactions_csv(root / "tx.csv", wallets)},
        )
        federation.issue_investigator()
        issue(federation.ca_dir, root / "OVS", name="OVS", role=ROLE_MONITOR)
        federation.start()
        with federation.federation_file.open("a") as fed:
            fed.write('\n[[monitor]]\nname = "OVS"\ncert = "OVS/cert.pem"\n')
        yield federation


def _verify(federation: LocalFederation, out: Path, *extra: str) -> tuple[int, str, str]:
    node_dir = str(federation.nodes["EE"].node_dir)
    exported = run_cli("node", "monitor-export", node_dir, "--monitor", "OVS", "--out", str(out))
    assert exported.stdout.startswith("exported "), exported.stderr
    key = str(federation.root / "OVS" / "key.pem")
    done = run_cli("monitor", "verify", str(out), "--key", key, *extra, check=False)
    return done.returncode, done.stdout, done.stderr


def test_cli_match_verifies_then_a_tagged_query_is_misuse(
    monitored: LocalFederation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watchlist = tmp_path / "watchlist.txt"
    watchlist.write_text("\n".join(eth(n) for n in range(295, 305)) + "\n")
    env = {"FEDTRACE_CACHE_DIR": str(tmp_path / "cache")}
    matched = run_cli(
        "query", "match", "--federation", str(monitored.federation_file),
        "--watchlist", str(watchlist), "--dataset", "wallets", "--case", "CLI-1",
        "--legal-basis", "MLA", "--format", "json", check=False, env=env,
    )  # fmt: skip
    assert matched.returncode == 0, matched.stderr
    [result] = json.loads(matched.stdout)["results"]
    assert result["status"] == "ok" and result["match_count"] == 6

    code, out, err = _verify(monitored, tmp_path / "first")
    assert code == 0, err
    assert out == "checked 1 queries: 1 consistent, 0 misuse\n"

    federation = load_federation(monitored.federation_file)
    query = MatchQuery(
        dataset="wallets",
        case_ref="CLI-TAGGED",
        legal_basis="MLA",
        kind="wallet",
        items=tuple(eth(n) for n in range(295, 305)),
        investigator="FR",
        disclosure=Level.MEMBERSHIP,
    )
    connections = GrpcConnections(federation)
    with monkeypatch.context() as cheat:
        cheat.setattr(psi, "BlindedQuery", TaggingQuery)
        try:
            [tagged] = run_match(federation, query, connections, connections.ca_pem)
        finally:
            connections.close()
    assert tagged.status == NodeStatus.OK, tagged.reason  # the node answered

    code, out, err = _verify(monitored, tmp_path / "second", "--json")
    assert code == 1, err
    report = json.loads(out)
    assert (report["checked"], report["consistent"], report["misuse"]) == (2, 1, 1)
    [misuse] = [q for q in report["queries"] if q["status"] == "misuse"]
    assert misuse["case_ref"] == "CLI-TAGGED" and misuse["points"] == [0, 2]
    assert misuse["evidence"]["statement"] and misuse["evidence"]["signature"]
    code, out, _ = _verify(monitored, tmp_path / "third", "--case", "CLI-1")
    assert code == 0 and out.endswith("checked 1 queries: 1 consistent, 0 misuse\n")
    assert os.stat(tmp_path / "third").st_mode & 0o077 == 0

"""The investigator's CLI over in-memory nodes: local checks first, then the summary of `--out`.

`fedtrace query …` runs through `main()` as on the command line; only the client's
connections are in-memory ones (the nodes' servicers in process), recorded so a
test can say that nothing reached a node.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import fedtrace.api
from coordinator.catalogue import DatasetCatalogue
from coordinator.checks import QueryUsageError
from coordinator.epoch_cache import FilterCache, TagCache
from coordinator.federation import Federation, NodeEntry, load_federation
from coordinator.progress import Progress, silent
from coordinator.transport import NodeConnection
from fedtrace.cli import main
from tests.unit.test_match_in_memory import InMemoryFederation, eth, two_nodes


@dataclass
class Recorded:
    """Every call the client made of the nodes, by method name."""

    calls: list[str] = field(default_factory=list)

    def wrap(self, entry: NodeEntry, plain: NodeConnection) -> NodeConnection:
        calls = self.calls

        class Recording:
            def __getattr__(self, name: str) -> Any:
                calls.append(name)
                return getattr(plain, name)

        recording: Any = Recording()
        return recording

    @property
    def queried(self) -> list[str]:
        """The calls beyond `info` (which only reads the node's announcement)."""
        return [c for c in self.calls if c != "info"]


@dataclass
class CliFederation:
    memory: InMemoryFederation
    root: Path
    catalogue: DatasetCatalogue

    def fed_toml(self, investigator: str, extra: str = "") -> Path:
        path = self.root / f"{investigator}.toml"
        nodes = "".join(f'[[node]]\nname = "{n}"\naddress = "memory"\n' for n in self.memory.nodes)
        path.write_text(
            f'[investigator]\nname = "{investigator}"\ncert = "{investigator}/cert.pem"\n'
            f'key = "{investigator}/key.pem"\nca = "ca/ca.pem"\n{extra}\n{nodes}'
        )
        return path

    def watchlist(self, *numbers: int) -> Path:
        path = self.root / "watchlist.txt"
        path.write_text("".join(f"{eth(n)}\n" for n in numbers))
        return path


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> CliFederation:
    root = tmp_path_factory.mktemp("cli")
    return CliFederation(two_nodes(root), root, DatasetCatalogue(None))


@pytest.fixture
def recorded(cli: CliFederation, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    """The CLI's clients get in-memory connections, and record what they ask."""
    record = Recorded()
    real = fedtrace.api.FederationClient

    def client(federation: Federation, *, progress: Progress = silent) -> Any:
        return real(
            federation,
            cli.memory.connections(federation.investigator, record.wrap),
            progress=progress,
            filters=FilterCache(None),
            tags=TagCache(None),
            datasets=cli.catalogue,
        )

    monkeypatch.setattr(fedtrace.api, "FederationClient", client)
    yield record


def _match(fed: Path, watchlist: Path, *extra: str, case: str = "CASE-1") -> list[str]:
    return [
        "query", "match", "--federation", str(fed), "--watchlist", str(watchlist),
        "--case", case, *extra,
    ]  # fmt: skip


def test_unknown_dataset_fails_before_any_query_with_a_suggestion(
    cli: CliFederation, recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = cli.fed_toml("FR")
    status = main(_match(fed, cli.watchlist(5), "--dataset", "wallet"))
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err == (
        "fedtrace: error: unknown dataset 'wallet'; the federation's nodes offer: "
        "subjects, wallets (did you mean 'wallets'?)\n"
    )
    assert recorded.queried == []  # only the nodes' announcements were read


def test_the_announced_datasets_are_kept_per_federation(tmp_path: Path) -> None:
    memory = two_nodes(tmp_path)
    record = Recorded()
    catalogue = DatasetCatalogue(tmp_path / "cache" / "fed.json")
    federation = memory.federation("FR")
    with fedtrace.api.FederationClient(
        federation,
        memory.connections("FR", record.wrap),
        filters=FilterCache(None),
        tags=TagCache(None),
        datasets=catalogue,
    ) as client:
        client.match([eth(5)], dataset="wallets", case="C-1")
        assert record.calls.count("info") == 4  # each node's announcement, then the query's
        client.match([eth(5)], dataset="wallets", case="C-1")
        assert record.calls.count("info") == 6  # the query's own info calls only
        with pytest.raises(QueryUsageError, match=r"unknown dataset 'walets'.*'wallets'"):
            client.match([eth(5)], dataset="walets", case="C-1")
    saved = json.loads(catalogue.path.read_text())  # type: ignore[union-attr]
    assert saved["nodes"]["EE"] == {"address": "memory", "datasets": ["wallets", "subjects"]}
    # The next run (a new catalogue on the same file) knows the datasets without asking.
    again = DatasetCatalogue(catalogue.path)
    assert again.known(federation.nodes) == {
        "EE": ("wallets", "subjects"),
        "LT": ("wallets", "subjects"),
    }
    moved = (NodeEntry("EE", "elsewhere:7001"),)
    assert again.known(moved) == {}  # a node that moved is asked again


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "CASE 7",
            "fedtrace: error: case reference 'CASE 7' contains ' '; use 1–64 characters of "
            "letters, digits and . _ / - (no spaces)\n",
        ),
        (
            "C" * 65,
            f"fedtrace: error: case reference '{'C' * 37}…' is 65 characters long; use 1–64 "
            "characters of letters, digits and . _ / - (no spaces)\n",
        ),
        (
            "",
            "fedtrace: error: case reference '' is empty; use 1–64 characters of "
            "letters, digits and . _ / - (no spaces)\n",
        ),
    ],
)
def test_a_malformed_case_reference_fails_before_anything_is_sent(
    cli: CliFederation,
    recorded: Recorded,
    capsys: pytest.CaptureFixture[str],
    case: str,
    message: str,
) -> None:
    status = main(_match(cli.fed_toml("FR"), cli.watchlist(5), "--dataset", "wallets", case=case))
    assert status == 2 and capsys.readouterr().err == message
    assert recorded.calls == []


def test_legal_basis_is_normalised_and_checked(
    cli: CliFederation, recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = cli.fed_toml("FR")
    args = _match(fed, cli.watchlist(5), "--dataset", "wallets", "--format", "json")
    assert main([*args, "--legal-basis", " mla "]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["legal_basis"] == "MLA"
    assert {r["signature"]["transcript"]["legal_basis"] for r in report["results"]} == {"MLA"}
    before = len(recorded.calls)
    assert main([*args, "--legal-basis", "MLAA"]) == 2
    assert capsys.readouterr().err == (
        "fedtrace: error: unknown legal basis 'MLAA'; known: MLA, EIO, JIT, FIU-EXCHANGE, "
        "EGMONT, COURT-ORDER, TREATY, BUDAPEST-ART25 (did you mean 'MLA'?) "
        "(add a code to FED.toml [investigator] legal_bases)\n"
    )
    assert len(recorded.calls) == before


def test_fed_toml_adds_legal_bases(cli: CliFederation) -> None:
    from coordinator.checks import legal_basis_code

    federation = load_federation(cli.fed_toml("FR", 'legal_bases = ["uk-poca"]'))
    assert federation.legal_bases == ("UK-POCA",)
    assert legal_basis_code("uk-poca", federation.legal_bases) == "UK-POCA"
    with pytest.raises(QueryUsageError):
        legal_basis_code("uk-poca")


def test_a_malformed_fed_toml_legal_basis_is_a_config_error(cli: CliFederation) -> None:
    from fedtrace.errors import ConfigError

    with pytest.raises(ConfigError, match=r"legal basis 'two words' must be 1–32 letters"):
        load_federation(cli.fed_toml("FR", 'legal_bases = ["two words"]'))


def test_out_prints_a_one_line_summary(
    cli: CliFederation, recorded: Recorded, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    watchlist = cli.watchlist(5, 450, 900, 5000)
    args = _match(cli.fed_toml("FR"), watchlist, "--dataset", "wallets", "--legal-basis", "MLA")
    assert main([*args, "--format", "json", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"report written to {out}: 2 nodes, 2 ok; 4 matches\n"
    assert json.loads(out.read_text())["query"] == "match"
    # A node that refuses is counted as such (SG has no grant at either node).
    args = _match(cli.fed_toml("SG"), watchlist, "--dataset", "wallets")
    assert main([*args, "--out", str(out)]) == 3
    assert capsys.readouterr().out == f"report written to {out}: 2 nodes, 2 denied; 0 matches\n"


def test_overlap_out_summary(
    cli: CliFederation, recorded: Recorded, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "overlap.txt"
    args = ["query", "overlap", "--federation", str(cli.fed_toml("IT")), "--dataset", "wallets"]
    assert main([*args, "--case", "C-2", "--out", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"report written to {out}: 2 nodes, 2 ok; 1 group of nodes sharing items\n"
    )


def test_aggregate_out_summary(
    cli: CliFederation, recorded: Recorded, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "aggregate.csv"
    watchlist = cli.watchlist(*range(440, 460))
    args = [
        "query", "aggregate", "--federation", str(cli.fed_toml("DE")), "--watchlist",
        str(watchlist), "--dataset", "wallets", "--case", "C-3", "--sum", "tx_count",
        "--format", "csv", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out == f"report written to {out}: 2 nodes, 2 ok\n"
    assert out.read_text().startswith("node,status,figure,value,")


def test_summaries_of_totals_and_of_overlaps_that_did_not_run() -> None:
    from coordinator.figures import AggregateOutcome, AggregateResult, FederationTotal
    from coordinator.overlap import OverlapNodeResult, OverlapOutcome
    from coordinator.report import WatchlistSummary
    from coordinator.results import NodeResult
    from fedtrace.api import AggregateReport, OverlapReport
    from fedtrace.wire import NodeStatus

    results = [AggregateResult(NodeResult(n, NodeStatus.OK)) for n in ("EE", "LT")]
    lost = FederationTotal(NodeStatus.ERROR, ["EE", "LT"], "LT dropped out")
    summary = WatchlistSummary("w", "wallet", 1, 1, 0, 0)
    aggregate = AggregateReport("C", "w", "", ("x",), summary, AggregateOutcome(results, lost), {})
    assert aggregate.summary() == "2 nodes, 2 ok; total error"
    nodes = [
        OverlapNodeResult("EE", NodeStatus.OK),
        OverlapNodeResult("LT", NodeStatus.UNAVAILABLE, "down"),
    ]
    outcome = OverlapOutcome("o", ("EE", "LT"), False, 1, nodes, None, None)
    overlap = OverlapReport("C", "w", "", outcome, {})
    assert overlap.summary() == "2 nodes, 1 ok, 1 unavailable; no overlap"

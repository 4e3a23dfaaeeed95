"""What the investigator reads: refusals of a used-up limit, the worth of a hit, noisy figures.

Also how tables are drawn: as wide as the terminal (or COLUMNS, or 100), headers
whole at 100 and 80 columns, and any markup in a case, reason or identifier shown
literally.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

from coordinator.aggregate_report import NOISE_FOOTER, aggregate_result_json, render_aggregate
from coordinator.catalogue import DatasetCatalogue
from coordinator.epoch_cache import FilterCache, TagCache
from coordinator.fanout import Deadline, fan_out
from coordinator.federation import NodeEntry
from coordinator.figures import AggregateOutcome, AggregateResult, Figure
from coordinator.overlap import OverlapNodeResult, OverlapOutcome
from coordinator.overlap_report import render as render_overlap
from coordinator.progress import silent
from coordinator.report import WatchlistSummary
from coordinator.report import render as render_match
from coordinator.results import NodeResult
from coordinator.tables import DEFAULT_WIDTH, terminal_width
from coordinator.transport import NodeConnection
from coordinator.verify import verify_report
from coordinator.verify_kinds import figure_mismatches
from fedtrace.aggregate_transcript import FigureTerms
from fedtrace.api import FederationClient
from fedtrace.wire import RENEWS_AT_METADATA, NodeStatus
from tests.unit.test_match_in_memory import (
    FakeContext,
    InMemoryConnection,
    InMemoryFederation,
    eth,
    two_nodes,
)

RENEWS = "2026-12-01T00:00:00Z"
RATE_LIMITED = (
    f"FR's rate limit on EE's dataset 'wallets' is used up: 1 of 1 queries per day used, "
    f"this request needs 1; it renews at {RENEWS} (retry then)"
)


class Refused(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailers: Any = ()) -> None:
        super().__init__(details)
        self._code, self._details, self._trailers = code, details, tuple(trailers)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


# --- a used-up limit is denied, with its renewal time -------------------------------------------


def test_an_exhausted_limit_with_a_renewal_time_is_denied_not_retried() -> None:
    calls = []

    def exchange(entry: NodeEntry, connection: NodeConnection) -> None:
        calls.append(entry.name)
        raise Refused(
            grpc.StatusCode.RESOURCE_EXHAUSTED, RATE_LIMITED, ((RENEWS_AT_METADATA, RENEWS),)
        )

    entry = NodeEntry("EE", "memory")
    connections: Any = lambda entry: None  # noqa: E731 - the exchange never uses it
    [outcome] = fan_out([entry], connections, Deadline.after(10), exchange, silent)
    assert calls == ["EE"]
    assert outcome.failure is not None and outcome.failure.status == NodeStatus.DENIED
    assert outcome.failure.reason == (
        f"rate limit used up; renews at {RENEWS} (RESOURCE_EXHAUSTED: {RATE_LIMITED})"
    )


class TrailerContext(FakeContext):
    """A servicer context that keeps the trailers and raises them with the refusal, as gRPC."""

    trailers: tuple[tuple[str, str], ...] = ()

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailers = tuple(metadata)

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Refused(code, details, self.trailers)


RATE_POLICY = (
    'jurisdiction = "EE"\nversion = "r1"\n[[grant]]\npartners = ["FR"]\n'
    'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 100\n'
    'rate_limit = { queries = 1, per = "day" }\n'
)


def test_a_node_whose_rate_limit_is_used_up_reads_as_denied(tmp_path: Path) -> None:
    memory = InMemoryFederation.create(tmp_path)
    memory.add_node("EE", RATE_POLICY, {eth(n) for n in range(1, 50)})

    def trailers(entry: NodeEntry, plain: NodeConnection) -> NodeConnection:
        assert isinstance(plain, InMemoryConnection)
        plain.context = TrailerContext(plain.context._cert)
        return plain

    with FederationClient(
        memory.federation("FR"),
        memory.connections("FR", trailers),
        filters=FilterCache(None),
        tags=TagCache(None),
        datasets=DatasetCatalogue(None),
    ) as client:
        assert client.match([eth(1)], dataset="wallets", case="C-1").complete
        report = client.match([eth(1)], dataset="wallets", case="C-1")
    [result] = report.to_dict()["results"]
    assert result["status"] == "denied" and result["signature"] is None
    assert re.fullmatch(
        r"rate limit used up; renews at 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ \(RESOURCE_EXHAUSTED: "
        r"FR's rate limit on EE's dataset 'wallets' is used up: .*\)",
        result["reason"],
    ), result["reason"]
    assert report.summary() == "1 node, 1 denied; 0 matches"


# --- a hit's false-positive bound ----------------------------------------------------------------


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    return two_nodes(tmp_path_factory.mktemp("reports"))


def _client(memory: InMemoryFederation, investigator: str) -> FederationClient:
    return FederationClient(
        memory.federation(investigator),
        memory.connections(investigator),
        filters=FilterCache(None),
        tags=TagCache(None),
        datasets=DatasetCatalogue(None),
    )


def test_match_results_state_the_false_positive_bound(memory: InMemoryFederation) -> None:
    items = [eth(n) for n in range(395, 445)]  # 50 items
    with _client(memory, "FR") as client:
        report = client.match(items, dataset="wallets", case="C-FP", legal_basis="MLA")
    document = report.to_dict()
    for result in document["results"]:
        assert result["false_positive_rate"] == 2**-30
        assert result["expected_false_hits"] == 50 * 2**-30
    assert verify_report(document, memory.ca_pem).ok
    table = " ".join(report.render("table", width=100).split())
    assert (
        "each hit is a filter match with false-positive probability 2^-30 per tested item: "
        "expected false hits for this query ≈ 50·2^-30 ≈ 4.7e-08 per node; confirm a hit "
        "with `fedtrace request disclose` before acting"
    ) in table
    assert "false_positive_rate" not in report.render("csv")  # CSV keeps its columns


def test_a_refused_node_carries_no_false_positive_bound(memory: InMemoryFederation) -> None:
    with _client(memory, "SG") as client:
        report = client.match([eth(1)], dataset="wallets", case="C-FP")
    assert all("false_positive_rate" not in r for r in report.to_dict()["results"])
    assert "false-positive" not in report.render("table")


# --- noisy aggregates: non-negative figures clamped at 0 -----------------------------------------


def test_a_non_negative_figure_is_clamped_and_its_interval_cut_at_zero() -> None:
    below = Figure(-5, 0, 3.0, 9, non_negative=True)
    assert below.amount() == 0 and below.clamped and below.interval_95() == [0, 9]
    near = Figure(4, 0, 3.0, 9, non_negative=True)
    assert near.amount() == 4 and not near.clamped and near.interval_95() == [0, 13]
    money = Figure(-1250, 2, 300.0, 2000, non_negative=True)
    assert money.amount() == 0.0 and money.interval_95() == [0.0, 20.0]
    free = Figure(-5, 0, 3.0, 9)  # a column that may be negative is shown as it came
    assert free.amount() == -5 and not free.clamped and free.interval_95() == [-14, 4]


def _noisy_result() -> AggregateResult:
    node = NodeResult("EE", NodeStatus.OK, disclosure="aggregate", policy_version="p1")
    figures = {
        "match_count": Figure(-2, 0, 3.0, 9, non_negative=True),
        "tx_count": Figure(-40, 0, 600.0, 1797, non_negative=True),
        "delta_eur": Figure(-4000, 2, 600.0, 1797),
    }
    return AggregateResult(node, 0, figures)


def test_clamped_figures_are_marked_in_json_and_verify() -> None:
    entry = aggregate_result_json(_noisy_result())
    assert entry["match_count"] == 0 and entry["aggregates"] == {"tx_count": 0, "delta_eur": -40.0}
    assert entry["clamped"] == {"match_count": True, "tx_count": True}
    assert entry["interval_95"] == {
        "match_count": [0, 9],
        "tx_count": [0, 1797],
        "delta_eur": [-57.97, -22.03],
    }
    terms = [
        FigureTerms("match_count", 0, 3.0, 9),
        FigureTerms("tx_count", 0, 600.0, 1797),
        FigureTerms("delta_eur", 2, 600.0, 1797),
    ]
    assert figure_mismatches(entry, terms, 0) == []
    entry["aggregates"]["tx_count"] = -3
    assert "tx_count is clamped at 0 but shows -3" in figure_mismatches(entry, terms, 0)


def test_the_aggregate_table_says_what_the_interval_means() -> None:
    outcome = AggregateOutcome([_noisy_result()])
    table = render_aggregate("table", "C-1", "wallets", outcome, None, "", ("tx_count",), 100)
    assert "0 ± 9" in table and "0 ± 1,797" in table
    assert " ".join(table.split()).endswith(NOISE_FOOTER)
    assert NOISE_FOOTER == (
        "± is the 95% interval of the node's differential-privacy noise; figures of "
        "non-negative columns are clamped at 0"
    )


# --- tables: width, whole headers, no markup -----------------------------------------------------

MARKUP = "[bold]C-1[/] :smile:"


def _match_table(width: int, reason: str = "no grant") -> str:
    results = [
        NodeResult(
            "EE", NodeStatus.OK, disclosure="membership", match_count=2,
            matched=[eth(5), "[red]x[/red]"], policy_version="2026-11-25.1",
            tested_items=50, false_positive_bits=30,
        ),
        NodeResult("SG", NodeStatus.DENIED, reason=reason),
    ]  # fmt: skip
    watchlist = WatchlistSummary("w.txt", "wallet", 50, 50, 0, 0)
    return render_match("table", MARKUP, "match", "wallets", results, watchlist, "MLA", width)


def _aggregate_table(width: int) -> str:
    outcome = AggregateOutcome([_noisy_result()])
    columns = ("tx_count", "total_in_eur", "delta_eur")
    return render_aggregate("table", MARKUP, "wallets", outcome, None, "", columns, width)


def _overlap_table(width: int) -> str:
    results = [
        OverlapNodeResult("EE", NodeStatus.OK, set_size=1200, reveal_to_owner=False, min_cohort=5),
        OverlapNodeResult("LT", NodeStatus.ERROR, reason="[/] broken [bold]"),
    ]
    outcome = OverlapOutcome("o-1", ("EE", "LT"), False, 5, results, None, None)
    return render_overlap("table", MARKUP, "wallets", outcome, "", width)


HEADERS = {
    "match": (_match_table, ("node", "status", "disclosure", "matches", "policy", "note")),
    "aggregate": (
        _aggregate_table,
        ("node", "status", "matches", "tx_count", "total_in_eur", "delta_eur", "note"),
    ),
    "overlap": (
        _overlap_table,
        ("node", "status", "items", "reveal", "min cohort", "policy", "note"),
    ),
}


@pytest.mark.parametrize("width", [100, 80])
@pytest.mark.parametrize("kind", sorted(HEADERS))
def test_no_header_wraps_mid_word(kind: str, width: int) -> None:
    render, headers = HEADERS[kind]
    text = render(width)
    assert max(len(line) for line in text.splitlines()) <= width
    [header] = [line for line in text.splitlines() if line.split()[:2] == ["node", "status"]]
    for name in headers:
        assert re.search(rf"(^|\s){re.escape(name)}(\s|$)", header), (name, header)


def test_markup_is_shown_literally() -> None:
    match = _match_table(100, reason="[/] refused [bold]now")
    assert "case [bold]C-1[/] :smile:" in match
    assert "[/] refused [bold]now" in match and "[red]x[/red]" in match
    overlap = _overlap_table(100)
    assert "case [bold]C-1[/] :smile:" in overlap and "[/] broken [bold]" in overlap
    assert "case [bold]C-1[/] :smile:" in _aggregate_table(100)


def test_headers_wider_than_the_terminal_fold_rather_than_vanish() -> None:
    columns = tuple(f"column_number_{n}" for n in range(8))
    outcome = AggregateOutcome([_noisy_result()])
    text = render_aggregate("table", "C", "wallets", outcome, None, "", columns, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "EE" in text and "r_7" in text  # every column is there, folded


def test_tables_fit_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert terminal_width() == DEFAULT_WIDTH == 100
    monkeypatch.setenv("COLUMNS", "72")
    assert terminal_width() == 72
    assert (
        max(len(line) for line in render_match("table", "C", "match", "w", []).splitlines()) <= 72
    )

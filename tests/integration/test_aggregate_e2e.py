"""Encrypted aggregates end to end: real `fedtrace node serve` processes and the real CLI.

Three nodes (EE, SG, NL) grant the investigator FR aggregates over `wallets`; each
test rewrites the policies it needs (the node reloads them within a second).
Oracles are DuckDB's own SQL over each node's database, read while it serves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregate import AggregateQuery, run_aggregate
from coordinator.federation import load_federation
from coordinator.transport import GrpcConnections as GrpcAggregateTransports
from fedtrace.demo_data import generate_federation_data
from fedtrace.dp import half_width_95
from fedtrace.harness import LocalFederation
from fedtrace.identifiers import load_watchlist
from node.config import load_node_config
from node.store import NodeDatabase
from tests.integration.conftest import fedtrace

pytestmark = pytest.mark.slow

CODES = ("EE", "SG", "NL")  # a federation total needs three answering nodes
COLUMNS = ("total_in_eur", "total_out_eur", "tx_count")


def policy(
    code: str,
    *,
    noise: bool = False,
    total_only: bool = False,
    min_cohort: int = 1,
    budget: str = "",
    version: str = "1",
) -> str:
    lines = [
        f'jurisdiction = "{code}"',
        f'version = "{code.lower()}-agg-{version}"',
        "",
        "[[grant]]",
        'partners = ["FR"]',
        'datasets = ["wallets"]',
        'disclosure = "aggregate"',
        "max_items_per_query = 1000",
        f"aggregate_columns = {json.dumps(list(COLUMNS))}",
        "clip = { total_in_eur = [0, 100000000], total_out_eur = [0, 100000000], "
        "tx_count = [0, 100000] }",
        f"min_cohort = {min_cohort}",
        "epsilon_per_query = 1.0",
    ]
    if not noise:
        lines.append('noise = "off"')
    else:  # a noisy aggregate grant needs a window budget and a lifetime cap
        lines.append(budget or 'epsilon_budget = { epsilon = 100.0, per = "30d" }')
        lines.append("epsilon_lifetime = 1000.0")
        budget = ""
    if total_only:
        lines.append("total_only = true")
    if budget:
        lines.append(budget)
    return "\n".join(lines) + "\n"


class AggregateFederation(LocalFederation):
    def __init__(self, root: Path) -> None:
        super().__init__(root, investigator="FR")
        self.fed = self.federation_file
        self.versions = 0

    def set_policies(self, **kwargs: Any) -> None:
        self.versions += 1
        for code, node in self.nodes.items():
            (node.node_dir / "policy.toml").write_text(
                policy(code, version=str(self.versions), **kwargs)
            )
        time.sleep(1.6)  # the policy watcher checks every second

    def query(self, watchlist: Path, *extra: str) -> tuple[int, dict[str, Any] | None, str]:
        done = fedtrace(
            "query",
            "aggregate",
            "--federation",
            str(self.fed),
            "--watchlist",
            str(watchlist),
            "--dataset",
            "wallets",
            "--case",
            "CASE-9",
            *(a for c in COLUMNS for a in ("--sum", c)),
            "--format",
            "json",
            *extra,
        )
        report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
        return done.returncode, report, done.stderr

    def held(self, code: str, items: set[str]) -> set[str]:
        config = load_node_config(self.nodes[code].node_dir)
        dataset = config.dataset("wallets")
        assert dataset is not None
        with NodeDatabase(config.database).session() as con:
            rows = con.execute(f"SELECT address FROM ({dataset.sql}) AS d").fetchall()
        return items & {str(row[0]) for row in rows}

    def truth(self, code: str, items: set[str]) -> dict[str, Any]:
        """DuckDB's own SQL over the node's dataset, restricted to the watchlist."""
        config = load_node_config(self.nodes[code].node_dir)
        dataset = config.dataset("wallets")
        assert dataset is not None
        with NodeDatabase(config.database).session() as con:
            con.execute("CREATE TEMP TABLE wanted (address VARCHAR)")
            con.executemany("INSERT INTO wanted VALUES (?)", [[i] for i in sorted(items)])
            row = con.execute(
                f"SELECT count(*), coalesce(sum(total_in_eur), 0), coalesce(sum(total_out_eur), 0),"
                f" coalesce(sum(tx_count), 0) FROM ({dataset.sql}) AS d "
                "WHERE address IN (SELECT address FROM wanted)"
            ).fetchone()
        assert row is not None
        return {
            "match_count": int(row[0]),
            "total_in_eur": Decimal(row[1]),
            "total_out_eur": Decimal(row[2]),
            "tx_count": int(row[3]),
        }


@pytest.fixture(scope="module")
def agg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AggregateFederation]:
    root = tmp_path_factory.mktemp("aggregates")
    data = generate_federation_data(root / "data", CODES, 800, seed=23)
    with AggregateFederation(root) as fed:
        for code in CODES:
            fed.add_node(code, policy=policy(code), tables=data.tables(code, ("transactions",)))
        fed.issue_investigator()
        fed.start()
        held = sorted(data.wallets["EE"])[:40] + sorted(data.wallets["SG"])[:40]
        (root / "watchlist.txt").write_text("\n".join(held + data.watchlist(80)) + "\n")
        yield fed


def _items(agg: AggregateFederation) -> set[str]:
    return set(load_watchlist(agg.root / "watchlist.txt", "wallet", None).items)


def _money(value: object) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def test_exact_sums_match_duckdb_sql(agg: AggregateFederation) -> None:
    agg.set_policies()
    code, report, err = agg.query(agg.root / "watchlist.txt")
    assert code == 0, err
    assert report is not None and report["query"] == "aggregate"
    items = _items(agg)
    for result in report["results"]:
        truth = agg.truth(result["node"], items)
        assert result["status"] == "ok" and result["disclosure"] == "aggregate"
        assert truth["match_count"] >= 30
        assert result["match_count"] == truth["match_count"]
        assert _money(result["aggregates"]["total_in_eur"]) == truth["total_in_eur"]
        assert _money(result["aggregates"]["total_out_eur"]) == truth["total_out_eur"]
        assert result["aggregates"]["tx_count"] == truth["tx_count"]
        assert "noise_scale" not in result and "interval_95" not in result
        assert result["signature"]["transcript"]["min_cohort"] == 1


def test_total_only_equals_sum_of_node_truths(agg: AggregateFederation) -> None:
    agg.set_policies(total_only=True)
    code, report, err = agg.query(agg.root / "watchlist.txt")
    assert code == 3, err
    assert {r["node"]: r["status"] for r in report["results"]} == dict.fromkeys(CODES, "denied")
    assert "only as federation totals; pass --total-only" in report["results"][0]["reason"]
    code, report, err = agg.query(agg.root / "watchlist.txt", "--total-only")
    assert code == 0, err
    items = _items(agg)
    truths = [agg.truth(c, items) for c in CODES]
    total = report["total"]
    assert total["status"] == "ok" and total["nodes"] == sorted(CODES)
    assert total["match_count"] == sum(t["match_count"] for t in truths)
    assert _money(total["aggregates"]["total_in_eur"]) == sum(t["total_in_eur"] for t in truths)
    assert total["aggregates"]["tx_count"] == sum(t["tx_count"] for t in truths)
    for result in report["results"]:
        assert result["status"] == "ok"
        assert "aggregates" not in result and "match_count" not in result
        assert result["signature"]["transcript"]["peers"] == sorted(CODES)


def test_min_cohort_withholds_figures(agg: AggregateFederation) -> None:
    # 160 watchlist items, about 40 held per node: the query passes the node's item check,
    # and the figures over fewer than 100 matched records are withheld.
    agg.set_policies(min_cohort=100)
    code, report, err = agg.query(agg.root / "watchlist.txt")
    assert code == 0, err
    for result in report["results"]:
        assert result["match_count"] == "< 100"
        assert result["aggregates"] == {c: "< 100" for c in COLUMNS}


def test_min_cohort_refuses_a_smaller_watchlist_at_the_node(agg: AggregateFederation) -> None:
    agg.set_policies(min_cohort=500)  # more than the 160 items the watchlist names
    code, report, err = agg.query(agg.root / "watchlist.txt")
    assert code == 3, err
    for result in report["results"]:
        assert result["status"] != "ok" and "min_cohort" in result["reason"]


def test_noise_on_reports_scale_and_interval(agg: AggregateFederation) -> None:
    agg.set_policies(noise=True)
    code, report, err = agg.query(agg.root / "watchlist.txt")
    assert code == 0, err
    items = _items(agg)
    for result in report["results"]:
        truth = agg.truth(result["node"], items)
        # ε = 1 split over 4 figures: scale 4 for the count, 4 × clip bound for sums
        assert result["noise_scale"]["match_count"] == 4.0
        assert result["noise_scale"]["total_in_eur"] == pytest.approx(4 * 100_000_000)
        low, high = result["interval_95"]["match_count"]
        assert high - low == 2 * half_width_95(4.0) == 2 * 12  # P(|Z| > 12) <= 0.05
        assert abs(result["match_count"] - truth["match_count"]) < 200
        assert result["signature"]["transcript"]["epsilon"] == 1.0


def test_epsilon_budget_exhaustion_refuses(agg: AggregateFederation) -> None:
    agg.set_policies(noise=True, budget='epsilon_budget = { epsilon = 3.0, per = "day" }')
    answered = 0
    for _ in range(4):  # ε 1 per query; earlier tests may already have spent some of the day's 3
        code, report, err = agg.query(agg.root / "watchlist.txt", "--nodes", "EE")
        if code != 0:
            break
        answered += 1
    assert 1 <= answered <= 3 and code == 3, err
    reason = report["results"][0]["reason"]
    assert reason.startswith("epsilon budget used up; renews at ")  # coordinator.results
    assert (
        "RESOURCE_EXHAUSTED: FR's epsilon budget on EE's dataset 'wallets' "
        "is used up: 3 of 3 epsilon per day used, this request needs 1; "
        "it renews at "
    ) in reason


def test_bad_columns_are_refused_with_one_line(agg: AggregateFederation) -> None:
    done = fedtrace(
        "query",
        "aggregate",
        "--federation",
        str(agg.fed),
        "--watchlist",
        str(agg.root / "watchlist.txt"),
        "--dataset",
        "wallets",
        "--case",
        "C",
        "--sum",
        "tx_count",
        "--sum",
        "tx_count",
    )
    assert done.returncode == 2
    assert done.stderr == "fedtrace: error: --sum names a column twice\n"
    done = fedtrace(
        "query",
        "aggregate",
        "--federation",
        str(agg.fed),
        "--watchlist",
        str(agg.root / "watchlist.txt"),
        "--dataset",
        "wallets",
        "--case",
        "C",
        "--sum",
        "first_seen",
        "--format",
        "json",
    )
    assert done.returncode == 3
    reasons = {r["reason"] for r in json.loads(done.stdout)["results"]}
    assert reasons == {
        f"dataset 'wallets' at {c} cannot sum first_seen; its aggregate columns: "
        "tx_count, total_in_eur, total_out_eur"
        for c in CODES
    }


def test_node_keeps_nothing_it_could_map_to_the_watchlist(agg: AggregateFederation) -> None:
    """Run the query in-process to know the blinded points, then search what the nodes keep."""
    agg.set_policies()
    federation = load_federation(agg.fed)
    transports = GrpcAggregateTransports(federation)
    sent: list[bytes] = []
    items = sorted(_items(agg))

    class Recording:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def aggregate_evaluate(self, requests: Iterator[Any], timeout: float) -> Iterator[Any]:
            def tap() -> Iterator[Any]:
                for message in requests:
                    if message.WhichOneof("part") == "points":
                        blob = bytes(message.points.points)
                        sent.extend(blob[i : i + 32] for i in range(0, len(blob), 32))
                    yield message

            return self._inner.aggregate_evaluate(tap(), timeout)

    outcome = run_aggregate(
        federation,
        AggregateQuery("wallets", "CASE-LEAK", "", tuple(items), "FR", COLUMNS),
        lambda entry: Recording(transports(entry)),
        transports.ca_pem,
    )
    assert all(r.result.status == "ok" for r in outcome.results)
    assert len(sent) == len(CODES) * len(items)  # one blinded watchlist per node
    for code, node in agg.nodes.items():
        config = load_node_config(node.node_dir)
        held = agg.held(code, set(items))
        unheld = [a for a in items if a not in held]
        blobs = [
            p.read_bytes() for p in node.node_dir.rglob("*") if p.is_file() and "tls" not in p.parts
        ]
        assert config.database.exists() and blobs
        for blob in blobs:
            for point in sent:
                assert point not in blob and point.hex().encode() not in blob
            for address in unheld:
                assert address.encode() not in blob
        log = (node.node_dir / "serve.log").read_text()
        assert "CASE-LEAK" not in log  # neither the case reference nor any identifier is logged
        audit = "".join(p.read_text() for p in (node.node_dir).rglob("*.jsonl"))
        assert "aggregate-answer" in audit
        for address in held:
            assert address not in log and address not in audit

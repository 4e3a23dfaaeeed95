"""The admission gate: decisions, budgets persisted in DuckDB, refunds, audit, hot reload."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import grpc
import pytest

from fedtrace.pki import ROLE_INVESTIGATOR, identity_from_pem, init_ca, issue
from fedtrace.wire import Level
from node import budget
from node.audit import AUDIT_DIR, AuditLog, entries, verify_trail
from node.config import load_node_config
from node.gate import Gate, Outcome, QueryContextInfo, QueryRefused
from node.policy import QueryKind, load_policy
from node.setup import init_node
from node.state import PolicyHolder
from node.store import NodeDatabase

POLICY = """jurisdiction = "EE"
version = "{version}"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 100
legal_bases = ["MLA"]
rate_limit = {{ queries = 2, per = "day" }}
item_budget = {{ items = 150, per = "30d" }}
"""
CONTEXT = QueryContextInfo(case_ref="C-1", legal_basis="MLA", nonce="00" * 16, timestamp_unix_ms=1)


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture()
def node(tmp_path: Path) -> tuple[Path, bytes]:
    init_ca(tmp_path / "ca")
    init_node(tmp_path / "EE", "EE", tmp_path / "ca", "127.0.0.1:0")
    (tmp_path / "EE" / "policy.toml").write_text(POLICY.format(version="v1"))
    issue(tmp_path / "ca", tmp_path / "FR", name="FR", role=ROLE_INVESTIGATOR)
    return tmp_path / "EE", (tmp_path / "FR" / "cert.pem").read_bytes()


def _gate(node_dir: Path, clock: Clock) -> tuple[Gate, PolicyHolder]:
    config = load_node_config(node_dir)
    audit = AuditLog(
        node_dir / AUDIT_DIR, config.tls.key.read_bytes(), config.tls.cert.read_bytes()
    )
    holder = PolicyHolder(load_policy(config.policy), jurisdiction="EE", audit=audit)
    return Gate(config, NodeDatabase(config.database), holder, audit, clock), holder


def _admit(gate: Gate, cert: bytes, items: int = 10, context: QueryContextInfo = CONTEXT):
    return gate.admit(
        identity_from_pem(cert), QueryKind.MATCH, "wallets", context, items, Level.MEMBERSHIP
    )


def test_rate_limit_survives_a_restart_and_names_its_renewal(node: tuple[Path, bytes]) -> None:
    node_dir, cert = node
    clock = Clock()
    gate, _ = _gate(node_dir, clock)
    for _ in range(2):
        admission = _admit(gate, cert)
        gate.settle(admission, Outcome.ANSWERED, transcript_sha256="ab" * 32)
    clock.now += dt.timedelta(hours=1)
    restarted, _ = _gate(node_dir, clock)  # a new process: only DuckDB remembers
    with pytest.raises(QueryRefused) as caught:
        _admit(restarted, cert)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "renews at 2026-11-26T09:00:00Z" in str(caught.value)
    assert caught.value.renews_at == dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
    clock.now = dt.datetime(2026, 11, 26, 9, 0, 1, tzinfo=dt.UTC)
    _admit(restarted, cert)  # one query left the sliding window


def test_item_budget_and_refunds(node: tuple[Path, bytes]) -> None:
    node_dir, cert = node
    clock = Clock()
    gate, _ = _gate(node_dir, clock)
    first = _admit(gate, cert, items=100)
    gate.settle(first, Outcome.ANSWERED)
    with pytest.raises(QueryRefused) as caught:
        _admit(gate, cert, items=60)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "item budget" in str(caught.value) and "100 of 150 items per 30d" in str(caught.value)
    # A request refused after admission (bad points, say) is refunded: it charges nothing.
    second = _admit(gate, cert, items=50)
    gate.settle(second, Outcome.REFUSED, reason="bad points", code=grpc.StatusCode.INVALID_ARGUMENT)
    third = _admit(gate, cert, items=50)
    assert {u.name: u.used for u in third.limits} == {"queries": 2, "items": 150}


def test_refusals_are_audited_and_nothing_identifying_is_written(node: tuple[Path, bytes]) -> None:
    node_dir, cert = node
    gate, _ = _gate(node_dir, Clock())
    with pytest.raises(QueryRefused) as caught:
        _admit(gate, cert, context=QueryContextInfo(case_ref="C-2", legal_basis="EGMONT"))
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    admission = _admit(gate, cert)
    gate.settle(admission, Outcome.ANSWERED, transcript_sha256="cd" * 32)
    refused, answered = entries(node_dir / AUDIT_DIR)
    assert refused["outcome"] == "refused" and refused["code"] == "PERMISSION_DENIED"
    assert refused["legal_basis"] == "EGMONT" and refused["budget"]["spent"]["queries"] == 0
    assert answered["outcome"] == "answered" and answered["disclosure"] == "membership"
    assert answered["peer"]["jurisdiction"] == "FR" and answered["peer"]["role"] == "investigator"
    assert answered["peer"]["serial"] and answered["peer"]["fingerprint_sha256"]
    assert answered["policy_version"] == "v1" and len(answered["policy_sha256"]) == 64
    assert answered["budget"]["limits"]["queries"] == {"used": 1, "limit": 2, "per": "day"}
    assert answered["transcript_sha256"] == "cd" * 32
    assert set(answered) >= {"time", "case_ref", "kind", "dataset", "item_count", "reason"}
    assert verify_trail(node_dir / AUDIT_DIR).ok


def test_unknown_dataset_and_ceiling(node: tuple[Path, bytes]) -> None:
    node_dir, cert = node
    gate, _ = _gate(node_dir, Clock())
    with pytest.raises(QueryRefused) as caught:
        gate.admit(identity_from_pem(cert), QueryKind.MATCH, "walets", CONTEXT, 1, Level.MEMBERSHIP)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.audited


def test_a_changed_policy_applies_and_an_invalid_one_is_rejected_and_audited(
    node: tuple[Path, bytes],
) -> None:
    node_dir, cert = node
    gate, holder = _gate(node_dir, Clock())
    policy_file = node_dir / "policy.toml"
    policy_file.write_text(POLICY.format(version="v2").replace('"membership"', '"cardinality"'))
    assert holder.refresh().version == "v2"
    assert _admit(gate, cert).level is Level.CARDINALITY
    policy_file.write_text(
        POLICY.format(version="v3").replace("max_items_per_query", "max_item_per_query")
    )
    os.utime(policy_file, ns=(1, 1))
    assert holder.current().version == "v2"  # the old policy stays in force
    events = [(e["event"], e.get("policy_version")) for e in entries(node_dir / AUDIT_DIR)]
    assert ("policy-loaded", "v2") in events and ("policy-rejected", "v2") in events
    rejected = next(e for e in entries(node_dir / AUDIT_DIR) if e["event"] == "policy-rejected")
    assert any('did you mean "max_items_per_query"' in e for e in rejected["errors"])
    holder.refresh()  # the same bad content is audited once, not on every check
    assert sum(e["event"] == "policy-rejected" for e in entries(node_dir / AUDIT_DIR)) == 1
    assert json.dumps(rejected)


def test_renewal_of_a_sliding_window() -> None:
    charges = [(1_000, 1.0), (2_000, 1.0), (3_000, 1.0)]
    assert budget.renewal_ms(charges, 10_000, 3, 1, 5_000) == 11_000
    assert budget.renewal_ms(charges, 10_000, 3, 2, 5_000) == 12_000
    assert budget.renewal_ms(charges, 10_000, 5, 1, 5_000) is None


LIFETIME_POLICY = """jurisdiction = "EE"
version = "lifetime-test"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "aggregate"
max_items_per_query = 100
aggregate_columns = ["total_in_eur"]
clip = { total_in_eur = [0, 100000000] }
min_cohort = 1
epsilon_per_query = 1.0
epsilon_budget = { epsilon = 100.0, per = "30d" }
epsilon_lifetime = 2.0
"""


def _lifetime_grant() -> str:
    return LIFETIME_POLICY


def test_the_lifetime_cap_is_checked_in_the_charging_transaction(tmp_path: Path) -> None:
    """Two aggregates that each passed a check made before admission cannot both spend the last
    unit: the ledger's own transaction refuses the one over the lifetime cap."""
    path = tmp_path / "policy.toml"
    path.write_text(_lifetime_grant())
    [grant] = load_policy(path).grants
    database = NodeDatabase(tmp_path / "node.duckdb")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cost = budget.Charge(queries=1, items=5, epsilon=1.0)
    common = {"partner": "FR", "dataset": "wallets", "kind": "aggregate", "grants": [grant]}
    with database.session() as con:
        for index in range(2):
            _, exhausted = budget.charge(con, request_id=f"r{index}", cost=cost, now=now, **common)
            assert exhausted is None
        _, exhausted = budget.charge(con, request_id="r2", cost=cost, now=now, **common)
        assert exhausted is not None and exhausted.name == budget.LIFETIME
        assert (exhausted.used, exhausted.limit, exhausted.renews_at) == (2.0, 2.0, None)
        rows = con.execute("SELECT request_id FROM policy_usage ORDER BY 1").fetchall()
    assert rows == [("r0",), ("r1",)]


def test_a_recharge_that_does_not_fit_leaves_the_ledger_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(_lifetime_grant() + 'item_budget = { items = 8, per = "1d" }\n')
    [grant] = load_policy(path).grants
    database = NodeDatabase(tmp_path / "node.duckdb")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    common = {"partner": "FR", "dataset": "wallets", "kind": "aggregate", "grants": [grant]}
    with database.session() as con:
        first = budget.Charge(queries=1, items=5, epsilon=0.0)
        assert budget.charge(con, request_id="r0", cost=first, now=now, **common)[1] is None
        more = budget.Charge(queries=1, items=9, epsilon=0.0)
        _, exhausted = budget.recharge(con, request_id="r0", cost=more, now=now, **common)
        assert exhausted is not None and exhausted.name == "items"
        assert con.execute("SELECT request_id, items FROM policy_usage").fetchall() == [("r0", 5)]
        fits = budget.Charge(queries=1, items=7, epsilon=0.0)
        assert budget.recharge(con, request_id="r0", cost=fits, now=now, **common)[1] is None
        assert con.execute("SELECT request_id, items FROM policy_usage").fetchall() == [("r0", 7)]

"""Item 2 and part of item 9: every grant that could admit a query contributes its limits; the
node's ceiling per request, valid_from and the budgets hold, also under concurrent queries."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import grpc
import pytest

from fedtrace.pki import identity_from_pem
from fedtrace.wire import Level
from node.audit import AUDIT_DIR, AuditLog
from node.gate import Gate, Outcome, QueryContextInfo, QueryRefused
from node.policy import QueryKind, load_policy
from node.policy.check import check_policies
from node.state import PolicyHolder
from tests.adversarial.conftest import Clock, Target

SHADOWED = """jurisdiction = "EE"
version = "shadow-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "cardinality"
max_items_per_query = 20
rate_limit = { queries = 20, per = "day" }
item_budget = { items = 1000, per = "30d" }
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "aggregate"
max_items_per_query = 1000
aggregate_columns = ["total_in_eur"]
clip = { total_in_eur = [0, 1000] }
epsilon_budget = { epsilon = 50.0, per = "30d" }
epsilon_lifetime = 500.0
"""


def gate(target: Target, clock: Clock | None = None) -> Gate:
    config = target.config
    audit = AuditLog(
        target.node_dir / AUDIT_DIR, config.tls.key.read_bytes(), config.tls.cert.read_bytes()
    )
    holder = PolicyHolder(load_policy(config.policy), jurisdiction="EE", audit=audit)
    return Gate(config, target.database, holder, audit, clock or Clock())


def context(n: int = 0) -> QueryContextInfo:
    return QueryContextInfo(case_ref="C-1", legal_basis="MLA", nonce=f"{n:032x}")


def admit(
    g: Gate,
    target: Target,
    items: int = 1,
    level: Level = Level.CARDINALITY,
    kind: QueryKind = QueryKind.MATCH,
    n: int = 0,
) -> bool:
    try:
        admission = g.admit(
            identity_from_pem(target.cert("FR")), kind, "wallets", context(n), items, level
        )
    except QueryRefused:
        return False
    g.settle(admission, Outcome.ANSWERED)
    return True


def test_an_aggregate_grant_does_not_lift_a_cardinality_grants_rate_limit(target: Target) -> None:
    target.write_policy(SHADOWED)
    g = gate(target)
    passed = sum(admit(g, target) for _ in range(25))
    assert passed == 20  # not 25: the aggregate grant also admits matches, under #1's limits


def test_the_strictest_per_query_item_limit_applies(target: Target) -> None:
    target.write_policy(SHADOWED)
    g = gate(target)
    assert not admit(g, target, items=21)  # the aggregate grant alone would allow 1000
    assert admit(g, target, items=20)


def test_policy_check_warns_where_a_permissive_grant_shadows_a_strict_one(
    target: Target, tmp_path: Path
) -> None:
    path = tmp_path / "p.toml"
    path.write_text(SHADOWED)
    report = check_policies([path])
    messages = [d.message for d in report.diagnostics if d.severity == "warning"]
    assert any("grant #2 shadows the stricter grant #1" in m for m in messages), messages


def test_the_nodes_ceiling_per_request_holds_whatever_the_policy(target: Target) -> None:
    target.write_limits(max_items_per_request=5)
    g = gate(target)
    with pytest.raises(QueryRefused) as caught:
        g.admit(
            identity_from_pem(target.cert("FR")),
            QueryKind.MATCH,
            "wallets",
            context(),
            6,
            Level.MEMBERSHIP,
        )
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert admit(g, target, items=5, level=Level.MEMBERSHIP)


def test_a_grant_is_not_in_force_before_valid_from(target: Target) -> None:
    target.write_policy(
        'jurisdiction = "EE"\nversion = "v"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 10\n'
        "valid_from = 2030-01-01\n"
    )
    clock = Clock()
    clock.now = dt.datetime(2029, 12, 31, 23, 0, tzinfo=dt.UTC)
    g = gate(target, clock)
    assert not admit(g, target, level=Level.MEMBERSHIP)
    clock.now = dt.datetime(2030, 1, 1, 0, 1, tzinfo=dt.UTC)
    assert admit(g, target, level=Level.MEMBERSHIP)


def test_concurrent_queries_never_overspend_a_budget(target: Target) -> None:
    target.write_policy(
        'jurisdiction = "EE"\nversion = "v"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 10\n'
        'item_budget = { items = 100, per = "30d" }\n'
    )
    g = gate(target)
    admitted: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def one(n: int) -> None:
        start.wait()
        if admit(g, target, items=10, level=Level.MEMBERSHIP, n=n):
            with lock:
                admitted.append(10)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) <= 100
    assert sum(admitted) == 100  # and the budget is usable to its end

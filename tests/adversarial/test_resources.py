"""Item 6 and the concurrency limit of item 9: authorisation before resources.

A query slot is taken only once the header is admitted; a stream must send its
header within `first_message_seconds`; one partner holds at most its share of
slots and of pending aggregate round-1s; the epoch's filter and position tags go
only to partners whose grant needs them; GetInfo describes only granted datasets;
each of these calls is audited.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from fedtrace.v1 import aggregate_pb2, node_pb2
from node.audit import AUDIT_DIR, entries
from tests.adversarial.conftest import Target, context, match_stream, points, run_match

# Deadlines and concurrent streams that take seconds to play out: the slow tier.
pytestmark = pytest.mark.slow

AGGREGATE_POLICY = """jurisdiction = "EE"
version = "agg-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "aggregate"
max_items_per_query = 100
aggregate_columns = ["total_in_eur"]
clip = { total_in_eur = [0, 1000] }
epsilon_budget = { epsilon = 50.0, per = "30d" }
epsilon_lifetime = 500.0
"""


def _stalled(release: threading.Event) -> Iterator[node_pb2.EvaluateRequest]:
    release.wait(30)
    return
    yield  # a generator that sends nothing until released


def test_streams_that_never_send_a_header_hold_no_slot_and_time_out(target: Target) -> None:
    target.write_limits(max_concurrent_queries=2, first_message_seconds=2.0)
    release = threading.Event()
    with target.served() as (_, stubs):
        stalled = [stubs.node.Evaluate(_stalled(release), timeout=30) for _ in range(4)]
        time.sleep(0.5)
        started = time.monotonic()
        assert run_match(stubs) == grpc.StatusCode.OK  # 4 stalled streams, 2 slots: still served
        assert time.monotonic() - started < 1.5
        codes = []
        for call in stalled:
            try:
                list(call)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        release.set()
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 4
    refused = [
        e for e in entries(target.node_dir / AUDIT_DIR) if e.get("code") == "DEADLINE_EXCEEDED"
    ]
    assert len(refused) == 4


def _admitted_then_stalled(release: threading.Event) -> Iterator[node_pb2.EvaluateRequest]:
    first = next(match_stream(3))
    yield first  # admitted: holds a slot while its points never come
    release.wait(30)


def test_one_partner_holds_at_most_its_share_of_query_slots(target: Target) -> None:
    target.write_limits(max_concurrent_queries=4, max_concurrent_per_partner=1)
    release = threading.Event()
    with target.served() as (_, stubs):
        holding = stubs.node.Evaluate(_admitted_then_stalled(release), timeout=30)
        time.sleep(1.0)
        assert run_match(stubs) == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        try:
            list(holding)
        except grpc.RpcError:
            pass
        assert run_match(stubs) == grpc.StatusCode.OK  # the slot was released


def test_the_node_wide_concurrency_limit_holds(target: Target) -> None:
    target.write_limits(max_concurrent_queries=1, max_concurrent_per_partner=1)
    target.write_policy(
        target.node_dir.joinpath("policy.toml").read_text().replace('["FR"]', '["FR", "NL"]')
    )
    release = threading.Event()
    with target.served() as (running, stubs):
        holding = stubs.node.Evaluate(_admitted_then_stalled(release), timeout=30)
        time.sleep(1.0)
        other = target.stubs(running.port, "NL")
        assert run_match(other) == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        try:
            list(holding)
        except grpc.RpcError:
            pass


def _round_one(epoch_id: str) -> Iterator[aggregate_pb2.AggregateEvaluateRequest]:
    header = aggregate_pb2.AggregateHeader(
        context=context(),
        dataset="wallets",
        epoch_id=epoch_id,
        item_count=1,
        columns=["total_in_eur"],
        epsilon=1.0,
    )
    yield aggregate_pb2.AggregateEvaluateRequest(header=header)
    yield aggregate_pb2.AggregateEvaluateRequest(points=node_pb2.PointBatch(points=points(1)))


def test_pending_aggregate_round_ones_are_capped_per_partner(target: Target) -> None:
    target.write_policy(AGGREGATE_POLICY)
    target.write_limits(max_pending_aggregates_per_partner=3)
    with target.served() as (_, stubs):
        info = stubs.node.GetInfo(node_pb2.GetInfoRequest(), timeout=10)
        epoch_id = next(d.epoch_id for d in info.datasets if d.name == "wallets")
        codes = []
        for _ in range(5):
            try:
                list(stubs.aggregate.Evaluate(_round_one(epoch_id), timeout=30))
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
    assert codes[:3] == [grpc.StatusCode.OK] * 3
    assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


def _status(call: object) -> grpc.StatusCode:
    try:
        list(call)  # type: ignore[call-overload]
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_filter_tags_and_info_only_for_granted_partners_and_audited(target: Target) -> None:
    with target.served() as (running, stubs):
        nl = target.stubs(running.port, "NL")
        filter_request = node_pb2.GetFilterRequest(dataset="wallets")
        tags_request = aggregate_pb2.GetPositionTagsRequest(dataset="wallets")
        assert _status(stubs.node.GetFilter(filter_request, timeout=10)) == grpc.StatusCode.OK
        assert _status(nl.node.GetFilter(filter_request, timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # FR's membership grant has no aggregate columns: no position tags.
        assert _status(stubs.aggregate.GetPositionTags(tags_request, timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        mine = stubs.node.GetInfo(node_pb2.GetInfoRequest(), timeout=10)
        theirs = nl.node.GetInfo(node_pb2.GetInfoRequest(), timeout=10)
    described = {d.name: d.size for d in mine.datasets}
    assert described["wallets"] > 0 and described["subjects"] == 0  # granted: wallets only
    assert all(d.size == 0 and not d.aggregate_columns for d in theirs.datasets)
    lookups = [e for e in entries(target.node_dir / AUDIT_DIR) if e.get("event") == "lookup"]
    assert [(e["method"], e["peer"]["jurisdiction"], e["outcome"]) for e in lookups] == [
        ("GetFilter", "FR", "answered"),
        ("GetFilter", "NL", "refused"),
        ("GetPositionTags", "FR", "refused"),
        ("GetInfo", "FR", "answered"),
        ("GetInfo", "NL", "answered"),
    ]
    assert os.path.getsize(target.node_dir / AUDIT_DIR / "audit.jsonl") < 50_000

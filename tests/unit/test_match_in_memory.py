"""Coordinator and node servicer wired by an in-memory transport: the whole match logic, no network.

The servicer runs exactly as under gRPC; only the channel is replaced, through
the coordinator's transport protocol.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

from coordinator.federation import Federation, NodeEntry
from coordinator.match import MatchQuery, NodeResult, run_match
from fedtrace.pki import ROLE_INVESTIGATOR, init_ca, issue
from fedtrace.v1 import node_pb2
from node import store
from node.config import load_node_config
from node.server import load_state
from node.service import NodeServicer, NodeState
from node.setup import init_node

HEADER = "tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp\n"


class InMemoryRpcError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeContext:
    """What a servicer uses of grpc.ServicerContext: the peer certificate and abort."""

    def __init__(self, cert_pem: bytes) -> None:
        self._cert = cert_pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._cert]}

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise InMemoryRpcError(code, details)


@dataclass
class InMemoryTransport:
    servicer: NodeServicer
    context: FakeContext

    def info(self, timeout: float) -> node_pb2.NodeInfo:
        return self.servicer.GetInfo(node_pb2.GetInfoRequest(), self.context)

    def filter(
        self, request: node_pb2.GetFilterRequest, timeout: float
    ) -> Iterator[node_pb2.FilterChunk]:
        # Serialise every message, as the wire would.
        for chunk in self.servicer.GetFilter(request, self.context):
            yield node_pb2.FilterChunk.FromString(chunk.SerializeToString())

    def evaluate(
        self, requests: Iterator[node_pb2.EvaluateRequest], timeout: float
    ) -> Iterator[node_pb2.EvaluateResponse]:
        wire = (node_pb2.EvaluateRequest.FromString(r.SerializeToString()) for r in requests)
        for response in self.servicer.Evaluate(wire, self.context):
            yield node_pb2.EvaluateResponse.FromString(response.SerializeToString())

    def close(self) -> None:
        pass


def _eth(n: int) -> str:
    return f"0x{n:040x}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[NodeState, Path, set[str]]:
    root = tmp_path_factory.mktemp("inmemory")
    init_ca(root / "ca")
    init_node(root / "EE", "EE", root / "ca", "127.0.0.1:0")
    (root / "EE" / "policy.toml").write_text(
        'jurisdiction = "EE"\nversion = "v1"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 3000\n'
        '[[grant]]\npartners = ["SG"]\ndatasets = ["wallets"]\ndisclosure = "cardinality"\n'
        "max_items_per_query = 3000\n"
    )
    rng = random.Random(5)
    held = {_eth(rng.randrange(1, 10_000)) for _ in range(1500)}
    wallets = sorted(held)
    lines = [
        f"t{i},eth,{wallets[i]},{wallets[(i + 1) % len(wallets)]},ETH,1,1.00,2026-01-01T00:00:00Z"
        for i in range(len(wallets))
    ]
    (root / "tx.csv").write_text(HEADER + "\n".join(lines) + "\n")
    config = load_node_config(root / "EE")
    database = store.NodeDatabase(config.database)
    with database.session() as con:
        store.ingest(con, root / "tx.csv", "transactions")
    for code in ("FR", "SG", "NL"):
        issue(root / "ca", root / code, name=code, role=ROLE_INVESTIGATOR)
    state = load_state(config, database, lambda message: None)
    return state, root, held


def _run(
    node: tuple[NodeState, Path, set[str]], investigator: str, items: list[str], asked: int = 3
) -> NodeResult:
    state, root, _ = node
    cert = (root / investigator / "cert.pem").read_bytes()
    transport = InMemoryTransport(NodeServicer(state), FakeContext(cert))
    federation = Federation(
        path=root / "fed.toml",
        investigator=investigator,
        cert=root / investigator / "cert.pem",
        key=root / investigator / "key.pem",
        ca=root / "ca" / "ca.pem",
        nodes=(NodeEntry("EE", "memory"),),
        deadline_seconds=60,
    )
    query = MatchQuery(
        dataset="wallets",
        case_ref="C-1",
        legal_basis="MLA",
        kind="wallet",
        items=tuple(items),
        investigator=investigator,
        disclosure=asked,
    )
    [result] = run_match(
        federation, query, lambda entry: transport, (root / "ca" / "ca.pem").read_bytes()
    )
    return result


@pytest.mark.parametrize("size", [0, 1, 700, 2500])
def test_membership_equals_the_plain_intersection(
    node: tuple[NodeState, Path, set[str]], size: int
) -> None:
    _, _, held = node
    rng = random.Random(size)
    items = list(dict.fromkeys(_eth(rng.randrange(1, 12_000)) for _ in range(size)))
    if not items:
        items = [_eth(99_999)]
    result = _run(node, "FR", items)
    assert result.status == "ok", result.reason
    assert result.matched == [item for item in items if item in held]
    assert result.match_count == len(result.matched)


def test_cardinality_grant_gives_a_count_only(node: tuple[NodeState, Path, set[str]]) -> None:
    _, _, held = node
    items = [_eth(n) for n in range(1, 3001)]
    result = _run(node, "SG", items)
    assert result.status == "ok" and result.disclosure == "cardinality"
    assert result.matched is None
    assert result.match_count == sum(item in held for item in items)


def test_partner_without_a_grant_is_denied(node: tuple[NodeState, Path, set[str]]) -> None:
    result = _run(node, "NL", [_eth(1)])
    assert result.status == "denied"
    assert "grants NL no match access to dataset 'wallets'" in result.reason


def test_over_the_item_limit_is_denied(node: tuple[NodeState, Path, set[str]]) -> None:
    result = _run(node, "FR", [_eth(n) for n in range(1, 3002)])
    assert result.status == "denied"
    assert "3001 items exceed EE's limit of 3000" in result.reason


def _evaluate_raw(node: tuple[NodeState, Path, set[str]], blob: bytes, count: int) -> Any:
    state, root, _ = node
    servicer = NodeServicer(state)
    context = FakeContext((root / "FR" / "cert.pem").read_bytes())
    epoch = state.epochs["wallets"].epoch_id
    header = node_pb2.EvaluateHeader(
        context=node_pb2.QueryContext(  # fresh nonce and time: the node refuses replays
            case_ref="C-1", nonce=os.urandom(16), timestamp_unix_ms=int(time.time() * 1000)
        ),
        dataset="wallets",
        epoch_id=epoch,
        disclosure=3,
        item_count=count,
    )
    requests = iter(
        [
            node_pb2.EvaluateRequest(header=header),
            node_pb2.EvaluateRequest(points=node_pb2.PointBatch(points=blob)),
        ]
    )
    return list(servicer.Evaluate(requests, context))


@pytest.mark.parametrize(
    ("blob", "count", "message"),
    [
        (bytes(32), 1, "identity element"),
        (b"\xff" * 32, 1, "not a canonical ristretto255 encoding"),
        (bytes(31), 1, "wrong length"),
        (bytes(64), 1, "more points than the 1 announced"),
        (b"", 2, "0 points received, 2 announced"),
    ],
)
def test_bad_points_are_invalid_argument(
    node: tuple[NodeState, Path, set[str]], blob: bytes, count: int, message: str
) -> None:
    with pytest.raises(InMemoryRpcError) as caught:
        _evaluate_raw(node, blob, count)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()

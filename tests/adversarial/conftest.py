"""A node under attack: a CA, node EE with a small wallet dataset, and investigator certificates.

Tests build the node's state in process (`node.server.load_state`) and, when the
attack goes over the wire, a real mTLS gRPC server on a loopback port the OS
picks (`node.server.build_server`), called with a partner's certificate the way a
modified client would: raw stubs, hand-made headers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fedtrace import group
from fedtrace.pki import ROLE_INVESTIGATOR, ROLE_NODE, init_ca, issue, server_name
from fedtrace.v1 import aggregate_pb2_grpc, node_pb2, node_pb2_grpc
from fedtrace.wire import Level
from node import store
from node.config import NodeConfig, load_node_config
from node.server import RunningNode, build_server, load_state
from node.setup import init_node
from node.state import NodeState

WALLETS = 40


def eth(n: int) -> str:
    return f"0x{n:040x}"


@dataclass
class Stubs:
    node: node_pb2_grpc.NodeServiceStub
    aggregate: aggregate_pb2_grpc.AggregateServiceStub
    channel: grpc.Channel


@dataclass
class Target:
    """Node EE's directory, CA and investigators FR and NL (NL is granted nothing)."""

    root: Path
    node_dir: Path

    @property
    def config(self) -> NodeConfig:
        return load_node_config(self.node_dir)

    @property
    def database(self) -> store.NodeDatabase:
        return store.NodeDatabase(self.config.database)

    def write_policy(self, text: str) -> None:
        (self.node_dir / "policy.toml").write_text(text)

    def write_limits(self, **limits: object) -> None:
        """Change [limits] keys in node.toml."""
        path = self.node_dir / "node.toml"
        text = path.read_text()
        for key, value in limits.items():
            line = re.compile(rf"^{key} = .*$", re.MULTILINE)
            if line.search(text):
                text = line.sub(f"{key} = {value}", text, count=1)
            else:
                text = text.replace("[limits]\n", f"[limits]\n{key} = {value}\n", 1)
        path.write_text(text)

    def state(self) -> NodeState:
        return load_state(self.config, self.database, lambda message: None)

    def cert(self, who: str) -> bytes:
        return (self.root / who / "cert.pem").read_bytes()

    @contextlib.contextmanager
    def served(self, state: NodeState | None = None) -> Iterator[tuple[RunningNode, Stubs]]:
        running = build_server(state or self.state(), "127.0.0.1:0")
        running.server.start()
        try:
            yield running, self.stubs(running.port, "FR")
        finally:
            running.server.stop(None).wait()

    def stubs(self, port: int, who: str) -> Stubs:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(self.root / "ca" / "ca.pem").read_bytes(),
            private_key=(self.root / who / "key.pem").read_bytes(),
            certificate_chain=(self.root / who / "cert.pem").read_bytes(),
        )
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}",
            credentials,
            options=[("grpc.ssl_target_name_override", server_name("EE", ROLE_NODE))],
        )
        return Stubs(
            node_pb2_grpc.NodeServiceStub(channel),
            aggregate_pb2_grpc.AggregateServiceStub(channel),
            channel,
        )


def context(case_ref: str = "C-1", legal_basis: str = "MLA") -> node_pb2.QueryContext:
    return node_pb2.QueryContext(
        case_ref=case_ref,
        legal_basis=legal_basis,
        nonce=os.urandom(16),
        timestamp_unix_ms=int(time.time() * 1000),
    )


def points(count: int, start: int = 0) -> bytes:
    return b"".join(group.hash_to_group(f"probe-{start + i}".encode()) for i in range(count))


def match_stream(
    count: int,
    *,
    case_ref: str = "C-1",
    legal_basis: str = "MLA",
    level: Level = Level.CARDINALITY,
    dataset: str = "wallets",
) -> Iterator[node_pb2.EvaluateRequest]:
    header = node_pb2.EvaluateHeader(
        context=context(case_ref, legal_basis),
        dataset=dataset,
        disclosure=level.wire,
        item_count=count,
    )
    yield node_pb2.EvaluateRequest(header=header)
    if count:
        yield node_pb2.EvaluateRequest(points=node_pb2.PointBatch(points=points(count)))


def run_match(stubs: Stubs, count: int = 1, **kwargs: object) -> grpc.StatusCode:
    """A raw match call; the status it ends with."""
    try:
        list(stubs.node.Evaluate(match_stream(count, **kwargs), timeout=30))  # type: ignore[arg-type]
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


MEMBERSHIP_POLICY = """jurisdiction = "EE"
version = "adv-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 100
"""


@pytest.fixture()
def target(tmp_path: Path) -> Target:
    root = tmp_path
    init_ca(root / "ca")
    init_node(root / "EE", "EE", root / "ca", "127.0.0.1:0")
    for who in ("FR", "NL"):
        issue(root / "ca", root / who, name=who, role=ROLE_INVESTIGATOR)
    found = Target(root, root / "EE")
    found.write_policy(MEMBERSHIP_POLICY)
    csv = root / "tx.csv"
    csv.write_text(
        "tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp\n"
        + "".join(
            f"t{i},eth,{eth(i)},{eth(i + 1)},ETH,1,{i}.00,2026-01-01T00:00:00Z\n"
            for i in range(1, WALLETS)
        )
    )
    with found.database.session() as con:
        store.ingest(con, csv, "transactions")
    return found


class Clock:
    """A settable clock for the gate."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

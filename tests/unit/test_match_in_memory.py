"""Coordinator and node servicers wired in memory: the whole match logic, no network.

The servicers run exactly as under gRPC; only the channel is replaced, through the
coordinator's one connection protocol (`coordinator.transport.NodeConnection`).
`InMemoryConnection` and `InMemoryFederation` here serve every in-memory test:
match, aggregate, overlap, follow-up requests and the Python API.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import pytest

from coordinator.epoch_cache import FilterCache, cache_file_name
from coordinator.federation import Federation, NodeEntry
from coordinator.match import MatchQuery, run_match
from coordinator.results import NodeResult
from coordinator.transport import Connections, NodeConnection
from fedtrace.pki import ROLE_INVESTIGATOR, identity_from_pem, init_ca, issue
from fedtrace.revocation import Revocation, RevocationList
from fedtrace.v1 import aggregate_pb2, node_pb2, overlap_pb2, requests_pb2
from fedtrace.wire import NodeStatus
from node import store
from node.config import load_node_config
from node.server import load_state
from node.services.aggregate import AggregateServicer
from node.services.match import NodeServicer
from node.services.overlap import OverlapServicer
from node.services.requests import RequestServicer
from node.setup import init_node
from node.state import NodeState

HEADER = "tx_hash,chain,from_address,to_address,asset,amount,amount_eur,timestamp\n"
INVESTIGATORS = ("FR", "SG", "NL", "DE", "IT", "ES")
M = TypeVar("M")


class InMemoryRpcError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class FakeContext:
    """What a servicer uses of grpc.ServicerContext: the peer certificate, abort, trailers."""

    def __init__(self, cert_pem: bytes) -> None:
        self._cert = cert_pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._cert]}

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise InMemoryRpcError(code, details)


def _wire(message: M) -> M:
    """The message after a round trip through its serialisation, as the wire would."""
    return type(message).FromString(message.SerializeToString())  # type: ignore[attr-defined, no-any-return]


def _stream(messages: Iterator[M]) -> Iterator[M]:
    for message in messages:
        yield _wire(message)


@dataclass
class NodeServicers:
    """One node's four servicers over its state, as `node serve` registers them."""

    state: NodeState
    match: NodeServicer = field(init=False)
    aggregate: AggregateServicer = field(init=False)
    overlap: OverlapServicer = field(init=False)
    requests: RequestServicer = field(init=False)

    def __post_init__(self) -> None:
        self.match = NodeServicer(self.state)
        self.aggregate = AggregateServicer(self.state)
        self.overlap = OverlapServicer(self.state)
        self.requests = RequestServicer(self.state)


class InMemoryConnection:
    """`NodeConnection` that calls one node's servicers in process, serialising every message."""

    def __init__(self, node: NodeServicers, cert_pem: bytes) -> None:
        self.node = node
        self.context = FakeContext(cert_pem)
        self.closed = False

    def info(self, timeout: float) -> node_pb2.NodeInfo:
        return _wire(self.node.match.GetInfo(node_pb2.GetInfoRequest(), self.context))

    def filter(
        self, request: node_pb2.GetFilterRequest, timeout: float
    ) -> Iterator[node_pb2.FilterChunk]:
        return _stream(self.node.match.GetFilter(_wire(request), self.context))

    def evaluate(
        self, requests: Iterator[node_pb2.EvaluateRequest], timeout: float
    ) -> Iterator[node_pb2.EvaluateResponse]:
        return _stream(self.node.match.Evaluate(_stream(requests), self.context))

    def position_tags(
        self, request: aggregate_pb2.GetPositionTagsRequest, timeout: float
    ) -> Iterator[aggregate_pb2.PositionTagsChunk]:
        return _stream(self.node.aggregate.GetPositionTags(_wire(request), self.context))

    def aggregate_evaluate(
        self, requests: Iterator[aggregate_pb2.AggregateEvaluateRequest], timeout: float
    ) -> Iterator[aggregate_pb2.AggregateEvaluateResponse]:
        return _stream(self.node.aggregate.Evaluate(_stream(requests), self.context))

    def aggregate(
        self, requests: Iterator[aggregate_pb2.AggregateRequest], timeout: float
    ) -> Iterator[aggregate_pb2.AggregateResponse]:
        return _stream(self.node.aggregate.Aggregate(_stream(requests), self.context))

    def overlap_join(
        self, request: overlap_pb2.OverlapJoinRequest, timeout: float
    ) -> overlap_pb2.OverlapJoinResponse:
        return _wire(self.node.overlap.Join(_wire(request), self.context))

    def overlap_open(
        self, request: overlap_pb2.OverlapOpenRequest, timeout: float
    ) -> overlap_pb2.OverlapOpenResponse:
        return _wire(self.node.overlap.Open(_wire(request), self.context))

    def overlap_initial(
        self, request: overlap_pb2.OverlapRef, timeout: float
    ) -> Iterator[node_pb2.PointBatch]:
        return _stream(self.node.overlap.Initial(_wire(request), self.context))

    def overlap_relay(
        self, requests: Iterator[overlap_pb2.OverlapRelayRequest], timeout: float
    ) -> Iterator[node_pb2.PointBatch]:
        return _stream(self.node.overlap.Relay(_stream(requests), self.context))

    def overlap_shared(
        self, requests: Iterator[overlap_pb2.OverlapSharedRequest], timeout: float
    ) -> overlap_pb2.OverlapSharedResponse:
        return _wire(self.node.overlap.Shared(_stream(requests), self.context))

    def overlap_close(
        self, request: overlap_pb2.OverlapRef, timeout: float
    ) -> overlap_pb2.OverlapCloseResponse:
        return _wire(self.node.overlap.Close(_wire(request), self.context))

    def submit(
        self, request: requests_pb2.SubmitFollowUpRequest, timeout: float
    ) -> requests_pb2.FollowUpRecord:
        return _wire(self.node.requests.Submit(_wire(request), self.context))

    def status(
        self, request: requests_pb2.FollowUpStatusRequest, timeout: float
    ) -> Iterator[requests_pb2.FollowUpRecord]:
        return _stream(self.node.requests.Status(_wire(request), self.context))

    def close(self) -> None:
        self.closed = True


def eth(n: int) -> str:
    return f"0x{n:040x}"


def transactions_csv(path: Path, wallets: list[str]) -> Path:
    lines = [
        f"t{i},eth,{wallets[i]},{wallets[(i + 1) % len(wallets)]},ETH,1,{i % 7 + 1}.25,"
        "2026-01-01T00:00:00Z"
        for i in range(len(wallets))
    ]
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


@dataclass
class InMemoryFederation:
    """A CA, investigators and nodes (policy, DuckDB, epochs) with servicers in process."""

    root: Path
    nodes: dict[str, NodeServicers] = field(default_factory=dict)
    held: dict[str, set[str]] = field(default_factory=dict)

    @staticmethod
    def create(root: Path) -> InMemoryFederation:
        init_ca(root / "ca")
        for code in INVESTIGATORS:
            issue(root / "ca", root / code, name=code, role=ROLE_INVESTIGATOR)
        return InMemoryFederation(root)

    def add_node(self, code: str, policy: str, wallets: set[str]) -> NodeServicers:
        init_node(self.root / code, code, self.root / "ca", "127.0.0.1:0")
        (self.root / code / "policy.toml").write_text(policy)
        config = load_node_config(self.root / code)
        database = store.NodeDatabase(config.database)
        csv = transactions_csv(self.root / f"{code}-tx.csv", sorted(wallets))
        with database.session() as con:
            store.ingest(con, csv, "transactions")
        node = NodeServicers(load_state(config, database, lambda message: None))
        self.nodes[code], self.held[code] = node, wallets
        return node

    @property
    def ca_pem(self) -> bytes:
        return (self.root / "ca" / "ca.pem").read_bytes()

    def federation(self, investigator: str, deadline: float = 60) -> Federation:
        return Federation(
            path=self.root / "fed.toml",
            investigator=investigator,
            cert=self.root / investigator / "cert.pem",
            key=self.root / investigator / "key.pem",
            ca=self.root / "ca" / "ca.pem",
            nodes=tuple(NodeEntry(code, "memory") for code in self.nodes),
            deadline_seconds=deadline,
        )

    def connections(
        self,
        investigator: str,
        wrap: Callable[[NodeEntry, NodeConnection], NodeConnection] | None = None,
    ) -> Connections:
        """One connection per node, reused, as GrpcConnections gives them."""
        cert = (self.root / investigator / "cert.pem").read_bytes()
        opened: dict[NodeEntry, NodeConnection] = {}

        def connection(entry: NodeEntry) -> NodeConnection:
            if entry not in opened:
                plain = InMemoryConnection(self.nodes[entry.name], cert)
                opened[entry] = wrap(entry, plain) if wrap else plain
            return opened[entry]

        return connection


MATCH_POLICY = (
    'jurisdiction = "EE"\nversion = "v1"\n[[grant]]\npartners = ["FR"]\n'
    'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 3000\n'
    '[[grant]]\npartners = ["SG"]\ndatasets = ["wallets"]\ndisclosure = "cardinality"\n'
    "max_items_per_query = 3000\n"
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[InMemoryFederation, set[str]]:
    memory = InMemoryFederation.create(tmp_path_factory.mktemp("inmemory"))
    rng = random.Random(5)
    held = {eth(rng.randrange(1, 10_000)) for _ in range(1500)}
    memory.add_node("EE", MATCH_POLICY, held)
    return memory, held


def _query(investigator: str, items: list[str], asked: int = 3) -> MatchQuery:
    return MatchQuery(
        dataset="wallets",
        case_ref="C-1",
        legal_basis="MLA",
        kind="wallet",
        items=tuple(items),
        investigator=investigator,
        disclosure=asked,  # type: ignore[arg-type]  # an int, as the proto enum value
    )


def _run(
    node: tuple[InMemoryFederation, set[str]], investigator: str, items: list[str], asked: int = 3
) -> NodeResult:
    memory, _ = node
    [result] = run_match(
        memory.federation(investigator),
        _query(investigator, items, asked),
        memory.connections(investigator),
        memory.ca_pem,
    )
    return result


@pytest.mark.parametrize("size", [0, 1, 700, 2500])
def test_membership_equals_the_plain_intersection(
    node: tuple[InMemoryFederation, set[str]], size: int
) -> None:
    _, held = node
    rng = random.Random(size)
    items = list(dict.fromkeys(eth(rng.randrange(1, 12_000)) for _ in range(size)))
    if not items:
        items = [eth(99_999)]
    result = _run(node, "FR", items)
    assert result.status == "ok", result.reason
    assert result.matched == [item for item in items if item in held]
    assert result.match_count == len(result.matched)


def test_cardinality_grant_gives_a_count_only(node: tuple[InMemoryFederation, set[str]]) -> None:
    _, held = node
    items = [eth(n) for n in range(1, 3001)]
    result = _run(node, "SG", items)
    assert result.status == "ok" and result.disclosure == "cardinality"
    assert result.matched is None
    assert result.match_count == sum(item in held for item in items)


def test_partner_without_a_grant_is_denied(node: tuple[InMemoryFederation, set[str]]) -> None:
    result = _run(node, "NL", [eth(1)])
    assert result.status == "denied"
    assert "grants NL no match access to dataset 'wallets'" in result.reason


def test_a_client_that_skips_the_local_checks_meets_the_nodes_own_refusal(
    node: tuple[InMemoryFederation, set[str]],
) -> None:
    memory, _ = node
    query = replace(_query("FR", [eth(1)]), dataset="walets")
    [result] = run_match(memory.federation("FR"), query, memory.connections("FR"), memory.ca_pem)
    assert result.status == "error"
    assert "has no dataset 'walets'" in result.reason


def test_over_the_item_limit_is_denied(node: tuple[InMemoryFederation, set[str]]) -> None:
    result = _run(node, "FR", [eth(n) for n in range(1, 3002)])
    assert result.status == "denied"
    assert "3001 items exceed EE's limit of 3000" in result.reason


def test_one_connection_per_node_is_reused_across_queries(
    node: tuple[InMemoryFederation, set[str]],
) -> None:
    memory, _ = node
    opened: list[NodeConnection] = []

    def count(entry: NodeEntry, connection: NodeConnection) -> NodeConnection:
        opened.append(connection)
        return connection

    connections = memory.connections("FR", count)
    cache = FilterCache(None)
    for case in ("C-1", "C-2"):
        query = _query("FR", [eth(1), eth(2)])
        query = MatchQuery(**{**query.__dict__, "case_ref": case})
        [result] = run_match(
            memory.federation("FR"), query, connections, memory.ca_pem, cache=cache
        )
        assert result.status == NodeStatus.OK, result.reason
    assert len(opened) == 1 and not opened[0].closed  # type: ignore[attr-defined]


class CraftedEpoch:
    """A node that announces a hostile epoch id; everything else as the real node says."""

    def __init__(self, inner: NodeConnection, epoch_id: str) -> None:
        self._inner, self._epoch_id = inner, epoch_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def info(self, timeout: float) -> node_pb2.NodeInfo:
        info = self._inner.info(timeout)
        for dataset in info.datasets:
            dataset.epoch_id = self._epoch_id
        return info


@pytest.mark.parametrize("epoch_id", ["../../x", "/etc/passwd", "a" * 65, "AB", ""])
def test_a_node_supplied_epoch_id_never_becomes_a_path(
    node: tuple[InMemoryFederation, set[str]], tmp_path: Path, epoch_id: str
) -> None:
    memory, _ = node
    connections = memory.connections(
        "FR",
        lambda entry, inner: CraftedEpoch(inner, epoch_id),  # type: ignore[arg-type, return-value]
    )
    cache = FilterCache(tmp_path / "filters")
    [result] = run_match(
        memory.federation("FR"), _query("FR", [eth(1)]), connections, memory.ca_pem, cache=cache
    )
    assert result.status == NodeStatus.ERROR
    assert "epoch id" in result.reason
    assert not (tmp_path / "filters").exists() and not (tmp_path.parent / "x").exists()


def test_cache_files_are_named_by_a_digest(
    node: tuple[InMemoryFederation, set[str]], tmp_path: Path
) -> None:
    memory, _ = node
    cache = FilterCache(tmp_path / "filters")
    [result] = run_match(
        memory.federation("FR"),
        _query("FR", [eth(1)]),
        memory.connections("FR"),
        memory.ca_pem,
        cache=cache,
    )
    assert result.status == NodeStatus.OK, result.reason
    [stored] = list((tmp_path / "filters").iterdir())
    assert stored.name == cache_file_name(("EE", "wallets", result.epoch_id), ".gcs")
    assert len(stored.name) == 64 + len(".gcs") and "EE" not in stored.name
    with pytest.raises(Exception, match="epoch id"):
        cache_file_name(("EE", "wallets", "../../x"), ".gcs")


def _evaluate_raw(node: tuple[InMemoryFederation, set[str]], blob: bytes, count: int) -> Any:
    memory, _ = node
    servicer = memory.nodes["EE"].match
    context = FakeContext((memory.root / "FR" / "cert.pem").read_bytes())
    info = servicer.GetInfo(node_pb2.GetInfoRequest(), context)
    epoch = next(d.epoch_id for d in info.datasets if d.name == "wallets")
    header = node_pb2.EvaluateHeader(
        context=node_pb2.QueryContext(  # fresh nonce and time: the node refuses replays
            case_ref="C-1", nonce=os.urandom(16), timestamp_unix_ms=int(time.time() * 1000)
        ),
        dataset="wallets",
        epoch_id=epoch,
        disclosure=3,  # type: ignore[arg-type]
        item_count=count,
    )
    requests = iter(
        [
            node_pb2.EvaluateRequest(header=header),
            node_pb2.EvaluateRequest(points=node_pb2.PointBatch(points=blob)),
        ]
    )
    return list(servicer.Evaluate(requests, context))  # type: ignore[arg-type]


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
    node: tuple[InMemoryFederation, set[str]], blob: bytes, count: int, message: str
) -> None:
    with pytest.raises(InMemoryRpcError) as caught:
        _evaluate_raw(node, blob, count)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def full_policy(code: str, *, overlap_cohort: int = 1) -> str:
    """Every kind of grant, each to its own investigator: FR match, DE aggregate, IT overlap,
    ES follow-up requests."""
    return f"""jurisdiction = "{code}"
version = "{code.lower()}-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 3000
[[grant]]
partners = ["DE"]
datasets = ["wallets"]
disclosure = "aggregate"
max_items_per_query = 3000
aggregate_columns = ["total_in_eur", "tx_count"]
clip = {{ total_in_eur = [0, 100000000], tx_count = [0, 100000] }}
min_cohort = 1
epsilon_per_query = 1.0
noise = "off"
[[grant]]
partners = ["IT"]
datasets = ["wallets"]
disclosure = "overlap"
reveal_to_owner = false
min_cohort = {overlap_cohort}
[[grant]]
partners = ["ES"]
datasets = ["wallets"]
disclosure = "disclosure-request"
max_items_per_query = 500
legal_bases = ["MLA"]
disclosable_fields = ["tx_count", "total_in_eur", "first_seen", "last_seen"]
approval = "officer"
answer_within_days = 10
preservation_days_max = 60
"""


def two_nodes(root: Path) -> InMemoryFederation:
    """EE and LT, 600 wallets each, 200 of them held by both."""
    memory = InMemoryFederation.create(root)
    memory.add_node("EE", full_policy("EE"), {eth(n) for n in range(1, 601)})
    memory.add_node("LT", full_policy("LT"), {eth(n) for n in range(401, 1001)})
    return memory


def revoked_node(memory: InMemoryFederation, code: str) -> RevocationList:
    """A revocation list that revokes node `code`'s signing certificate."""
    connection = memory.connections("FR")(NodeEntry(code, "memory"))
    identity = identity_from_pem(bytes(connection.info(10).certificate_pem))
    return RevocationList(
        (Revocation(identity.serial, "", code, "key compromised", "2026-01-01T00:00:00Z"),)
    )


def test_a_revoked_node_certificate_is_not_trusted(
    node: tuple[InMemoryFederation, set[str]],
) -> None:
    memory, _ = node
    [result] = run_match(
        memory.federation("FR"),
        _query("FR", [eth(1)]),
        memory.connections("FR"),
        memory.ca_pem,
        revoked=revoked_node(memory, "EE"),
    )
    assert result.status == NodeStatus.ERROR
    assert result.reason.startswith("UNAUTHENTICATED:") and "revoked" in result.reason

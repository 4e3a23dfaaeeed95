"""Additive blinding on the wire, in memory: pools prepared, spent once, and answers unchanged.

Two nodes (EE, LV) answer FR at membership level and SG at cardinality level, through
the real servicers (tests/unit/test_match_in_memory.py's in-memory connections).
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator.epoch_cache import FilterCache
from coordinator.match import MatchQuery, run_match
from coordinator.pools import (
    PoolStore,
    PreparedPools,
    decode_pool_file,
    prepare_pools,
    verified_binding,
)
from coordinator.results import NodeFailure, NodeResult
from coordinator.transport import NodeConnection
from fedtrace import blinding, group
from fedtrace.items import item_bytes
from fedtrace.transcript import Transcript
from fedtrace.v1 import node_pb2
from fedtrace.wire import Level, NodeStatus
from tests.unit.test_match_in_memory import (
    FakeContext,
    InMemoryFederation,
    InMemoryRpcError,
    eth,
)

NODES = ("EE", "LV")


def _policy(code: str) -> str:
    return (
        f'jurisdiction = "{code}"\nversion = "v1"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 3000\n'
        '[[grant]]\npartners = ["SG"]\ndatasets = ["wallets"]\ndisclosure = "cardinality"\n'
        "max_items_per_query = 3000\n"
    )


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    memory = InMemoryFederation.create(tmp_path_factory.mktemp("pools"))
    for seed, code in enumerate(NODES):
        rng = random.Random(seed + 11)
        memory.add_node(code, _policy(code), {eth(rng.randrange(1, 6_000)) for _ in range(900)})
    return memory


def _query(investigator: str, items: list[str], level: Level = Level.MEMBERSHIP) -> MatchQuery:
    return MatchQuery(
        dataset="wallets",
        case_ref="C-1",
        legal_basis="MLA",
        kind="wallet",
        items=tuple(items),
        investigator=investigator,
        disclosure=level,
    )


def _items(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return list(dict.fromkeys(eth(rng.randrange(1, 7_000)) for _ in range(count)))


def _prepare(
    memory: InMemoryFederation, store: PoolStore, count: int, investigator: str = "FR"
) -> PreparedPools:
    return prepare_pools(
        memory.federation(investigator),
        "wallets",
        count,
        memory.connections(investigator),
        memory.ca_pem,
        store,
        workers=1,
    )


def _match(
    memory: InMemoryFederation,
    items: list[str],
    store: PoolStore | None,
    investigator: str = "FR",
    level: Level = Level.MEMBERSHIP,
    connections: Any = None,
) -> dict[str, NodeResult]:
    results = run_match(
        memory.federation(investigator),
        _query(investigator, items, level),
        connections or memory.connections(investigator),
        memory.ca_pem,
        cache=FilterCache(None),
        pools=store,
    )
    return {result.node: result for result in results}


def _mode(result: NodeResult) -> str:
    assert result.signature is not None
    return str(result.signature["transcript"]["blinding"])


class SentPoints:
    """Records the points each Evaluate stream carried, per node."""

    def __init__(self, inner: NodeConnection, sent: list[bytes]) -> None:
        self._inner, self._sent = inner, sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def evaluate(
        self, requests: Iterator[node_pb2.EvaluateRequest], timeout: float
    ) -> Iterator[node_pb2.EvaluateResponse]:
        def recorded() -> Iterator[node_pb2.EvaluateRequest]:
            for request in requests:
                if request.WhichOneof("part") == "points":
                    self._sent.extend(group.split_points(request.points.points))
                yield request

        return self._inner.evaluate(recorded(), timeout)


def _recording(memory: InMemoryFederation, sent: dict[str, list[bytes]]) -> Any:
    def wrap(entry: Any, inner: NodeConnection) -> NodeConnection:
        return SentPoints(inner, sent.setdefault(entry.name, []))

    return memory.connections("FR", wrap)


def _masks(points: list[bytes], items: list[str]) -> list[bytes]:
    """``P − H(x)`` for each sent point: the ``r·C`` that blinded it."""
    hashed = group.hash_to_group_many([item_bytes("wallet", item) for item in items])
    return [group.subtract_points(p, h) for p, h in zip(points, hashed, strict=True)]


@pytest.mark.parametrize("size", [1, 300, 2500])
def test_additive_answers_equal_multiplicative_and_the_plain_intersection(
    memory: InMemoryFederation, tmp_path: Path, size: int
) -> None:
    store = PoolStore(tmp_path / "pools")
    prepared = _prepare(memory, store, size)
    assert prepared.complete and [r.entries for r in prepared.results] == [size, size]
    items = _items(size, size)
    additive = _match(memory, items, store)
    multiplicative = _match(memory, items, None)
    for code in NODES:
        assert additive[code].status == NodeStatus.OK, additive[code].reason
        assert _mode(additive[code]) == blinding.ADDITIVE
        assert _mode(multiplicative[code]) == blinding.MULTIPLICATIVE
        plain = [item for item in items if item in memory.held[code]]
        assert additive[code].matched == multiplicative[code].matched == plain
        assert additive[code].match_count == len(plain)
    for code in NODES:  # one entry spent per item (items are deduplicated: up to `size`)
        binding = verified_binding(code, _announced(memory, code))
        assert store.remaining(binding) == size - len(items)


def _announced(memory: InMemoryFederation, code: str, investigator: str = "FR") -> Any:
    context = FakeContext((memory.root / investigator / "cert.pem").read_bytes())
    info = memory.nodes[code].match.GetInfo(node_pb2.GetInfoRequest(), context)
    return next(d for d in info.datasets if d.name == "wallets")


def test_get_info_announces_the_group_blinding_point_and_a_bound_proof(
    memory: InMemoryFederation,
) -> None:
    dataset = _announced(memory, "EE")
    epoch = memory.nodes["EE"].state.epochs["wallets"]
    assert dataset.group == "ristretto255"
    assert dataset.blinding_point == blinding.blinding_point(epoch.secret_key)
    assert dataset.key_commitment == group.multiply_base(epoch.secret_key)
    binding = verified_binding("EE", dataset)
    assert binding == blinding.PoolBinding("EE", "wallets", epoch.epoch_id, dataset.blinding_point)
    with pytest.raises(NodeFailure, match="refused"):
        verified_binding("LV", dataset)  # the proof is bound to the node that made it


class Tampered:
    """A node that announces another blinding point or a damaged proof."""

    def __init__(self, inner: NodeConnection, what: str) -> None:
        self._inner, self._what = inner, what

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def info(self, timeout: float) -> node_pb2.NodeInfo:
        info = self._inner.info(timeout)
        for dataset in info.datasets:
            if self._what == "point":
                dataset.blinding_point = group.multiply_base(group.random_scalar())
            elif self._what == "proof":
                dataset.blinding_proof = bytes(reversed(dataset.blinding_proof))
            else:
                dataset.ClearField("blinding_point")
        return info


@pytest.mark.parametrize("what", ["point", "proof", "missing"])
def test_a_node_with_a_wrong_blinding_point_or_proof_is_refused(
    memory: InMemoryFederation, tmp_path: Path, what: str
) -> None:
    store = PoolStore(tmp_path / "pools")

    def tamper(entry: Any, inner: NodeConnection) -> NodeConnection:
        return Tampered(inner, what) if entry.name == "EE" else inner

    connections = memory.connections("FR", tamper)
    prepared = prepare_pools(
        memory.federation("FR"), "wallets", 10, connections, memory.ca_pem, store, workers=1
    )
    by_node = {r.node: r for r in prepared.results}
    assert by_node["EE"].status == NodeStatus.ERROR and by_node["EE"].entries == 0
    assert "EE" in by_node["EE"].line() and "\n" not in by_node["EE"].line()
    assert by_node["LV"].status == NodeStatus.OK and by_node["LV"].entries == 10
    assert not prepared.complete
    assert len(list((tmp_path / "pools").glob("*.pool"))) == 1  # LV's pool only


def test_pool_files_are_private_and_named_by_a_digest(
    memory: InMemoryFederation, tmp_path: Path
) -> None:
    store = PoolStore(tmp_path / "pools")
    _prepare(memory, store, 5)
    assert stat.S_IMODE((tmp_path / "pools").stat().st_mode) == 0o700
    files = list((tmp_path / "pools").glob("*.pool"))
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.name) == 64 + len(".pool") and "EE" not in path.name


def test_a_pool_is_never_reused_across_two_queries_and_nodes(
    memory: InMemoryFederation, tmp_path: Path
) -> None:
    store = PoolStore(tmp_path / "pools")
    _prepare(memory, store, 60)
    items = _items(25, 3)
    binding = verified_binding("EE", _announced(memory, "EE"))
    path = store.path(binding)
    assert path is not None
    sizes = [path.stat().st_size]
    masks: dict[str, list[bytes]] = {}
    for _ in range(2):
        sent: dict[str, list[bytes]] = {}
        results = _match(memory, items, store, connections=_recording(memory, sent))
        assert all(_mode(r) == blinding.ADDITIVE for r in results.values())
        sizes.append(path.stat().st_size)
        for code in NODES:
            masks.setdefault(code, []).extend(_masks(sent[code], items))
    assert sizes[0] - sizes[1] == sizes[1] - sizes[2] == 25 * blinding.ENTRY_BYTES
    every = masks["EE"] + masks["LV"]
    assert len(set(every)) == len(every) == 2 * 2 * 25  # no mask twice, in a query or across
    # A third query of 25 needs more than the 10 left: multiplicative, pool untouched.
    results = _match(memory, items, store)
    assert all(_mode(r) == blinding.MULTIPLICATIVE for r in results.values())
    assert store.remaining(binding) == 10


class CrashOnSend:
    """The coordinator dies as it starts sending the points (after the pool was rewritten)."""

    def __init__(self, inner: NodeConnection) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def evaluate(self, requests: Iterator[Any], timeout: float) -> Iterator[Any]:
        header = next(requests)
        assert header.header.blinding == node_pb2.BLINDING_ADDITIVE
        raise InMemoryRpcError(grpc.StatusCode.INTERNAL, "coordinator crashed")


def test_a_crash_between_rewrite_and_send_never_leads_to_reuse(
    memory: InMemoryFederation, tmp_path: Path
) -> None:
    directory = tmp_path / "pools"
    _prepare(memory, PoolStore(directory), 40)
    binding = verified_binding("EE", _announced(memory, "EE"))
    path = PoolStore(directory).path(binding)
    assert path is not None
    before = decode_pool_file(path.read_bytes())
    items = _items(15, 4)
    assert len(items) == 15

    def crash(entry: Any, inner: NodeConnection) -> NodeConnection:
        return CrashOnSend(inner)

    crashed = memory.connections("FR", crash)
    results = _match(memory, items, PoolStore(directory), connections=crashed)
    assert all(r.status == NodeStatus.ERROR for r in results.values())
    # A new process: the entries the crashed query took are gone from disk.
    after = PoolStore(directory)
    assert after.remaining(binding) == 25
    spent = {entry.scalar for entry in before.entries[:15]}
    left = after.take(binding, 25)
    assert left is not None and not spent & {entry.scalar for entry in left.entries}
    assert after.take(binding, 1) is None


def test_cardinality_grants_fall_back_to_multiplicative(
    memory: InMemoryFederation, tmp_path: Path
) -> None:
    store = PoolStore(tmp_path / "pools")
    _prepare(memory, store, 50, investigator="SG")
    items = _items(20, 5)
    # SG asks for membership; the nodes grant cardinality (shuffled) and refuse the
    # additive points: the coordinator asks again multiplicatively.
    results = _match(memory, items, store, investigator="SG")
    for code in NODES:
        result = results[code]
        assert result.status == NodeStatus.OK, result.reason
        assert result.disclosure == "cardinality" and result.matched is None
        assert _mode(result) == blinding.MULTIPLICATIVE
        assert result.match_count == sum(item in memory.held[code] for item in items)
    binding = verified_binding("EE", _announced(memory, "EE", "SG"))
    assert store.remaining(binding) == 30  # the refused query's entries were discarded
    # Asking for cardinality never touches the pool.
    _match(memory, items, store, investigator="SG", level=Level.CARDINALITY)
    assert store.remaining(binding) == 30


def test_the_node_refuses_additive_points_it_would_shuffle(memory: InMemoryFederation) -> None:
    servicer = memory.nodes["EE"].match
    context = FakeContext((memory.root / "SG" / "cert.pem").read_bytes())
    header = node_pb2.EvaluateHeader(
        context=node_pb2.QueryContext(
            case_ref="C-1", nonce=os.urandom(16), timestamp_unix_ms=int(time.time() * 1000)
        ),
        dataset="wallets",
        epoch_id=_announced(memory, "EE", "SG").epoch_id,
        disclosure=node_pb2.MEMBERSHIP,
        item_count=1,
        blinding=node_pb2.BLINDING_ADDITIVE,
    )
    requests = iter([node_pb2.EvaluateRequest(header=header)])  # no point is read
    with pytest.raises(InMemoryRpcError) as caught:
        list(servicer.Evaluate(requests, context))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert blinding.NEEDS_UNSHUFFLED in caught.value.details()


def test_the_transcript_records_the_blinding_and_old_transcripts_still_load(
    memory: InMemoryFederation, tmp_path: Path
) -> None:
    store = PoolStore(tmp_path / "pools")
    _prepare(memory, store, 3)
    result = _match(memory, _items(3, 6), store)["EE"]
    assert result.signature is not None
    document = result.signature["transcript"]
    announced = _announced(memory, "EE")
    assert document["blinding"] == "additive"
    assert document["blinding_point_sha256"] == hashlib.sha256(announced.blinding_point).hexdigest()
    transcript = Transcript.from_json(document)
    assert transcript.digest().hex() == result.signature["transcript_sha256"]
    tampered = Transcript.from_json({**document, "blinding": "multiplicative"})
    assert tampered.digest() != transcript.digest()
    # A transcript signed before the fields existed loads, and keeps its digest.
    old = {k: v for k, v in document.items() if k not in ("blinding", "blinding_point_sha256")}
    loaded = Transcript.from_json(old)
    assert loaded.blinding == "multiplicative"
    assert b"blinding" not in loaded.canonical_json()


def test_a_damaged_pool_file_is_never_used(memory: InMemoryFederation, tmp_path: Path) -> None:
    directory = tmp_path / "pools"
    _prepare(memory, PoolStore(directory), 4)
    binding = verified_binding("EE", _announced(memory, "EE"))
    path = PoolStore(directory).path(binding)
    assert path is not None
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1  # one bit of one entry's r·G
    path.write_bytes(bytes(blob))
    assert PoolStore(directory).take(binding, 1) is None


def test_two_stores_on_one_directory_never_hand_out_the_same_entries(
    memory: InMemoryFederation, tmp_path: Path
) -> None:
    directory = tmp_path / "pools"
    _prepare(memory, PoolStore(directory), 10)
    binding = verified_binding("EE", _announced(memory, "EE"))
    first, second = PoolStore(directory), PoolStore(directory)  # two coordinator processes
    taken = [first.take(binding, 3), second.take(binding, 3), first.take(binding, 3)]
    scalars = [entry.scalar for pool in taken if pool is not None for entry in pool.entries]
    assert len(scalars) == len(set(scalars)) == 9
    assert second.remaining(binding) == first.remaining(binding) == 1

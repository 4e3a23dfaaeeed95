"""The node's side of the overlap query without gRPC: registry, plan checks, relays, reveal,
stored shared records, and the coordinator's transcript agreeing with the node's."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn

import grpc
import pytest

from coordinator.overlap import OverlapNodeResult, OverlapQuery, RelayRecorder
from fedtrace import overlap as overlap_protocol
from fedtrace import overlap_ring
from fedtrace.items import item_bytes
from fedtrace.overlap_commitment import Commitment, JoinProof
from fedtrace.pki import ROLE_NODE, Identity, init_ca, issue
from fedtrace.wire import NodeStatus
from node import overlap as node_overlap
from node.gate import QueryContextInfo, QueryRefused
from node.overlap_members import MemberTrust
from node.shared import list_shared, render_shared, store_shared
from node.store import NodeDatabase


def _identity(code: str = "FR", fingerprint: str = "aa" * 32) -> Identity:
    return Identity(
        code,
        "investigator",
        f"CN={code}",
        "01",
        fingerprint,
        dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )


def _wallet(n: int) -> str:
    return f"0x{n:040x}"


SETS = {
    "EE": {_wallet(n) for n in (*range(0, 10), 100, 101, 200)},
    "FR": {_wallet(n) for n in (*range(5, 15), 100, 300)},
    "SG": {_wallet(n) for n in (*range(8, 20), 101, 100, 300)},
}


def _overlap(
    code: str, overlap_id: str = "ab" * 16, *, reveal: bool = True, deadline: float = 1e12
) -> node_overlap.NodeOverlap:
    items = [item_bytes("wallet", a) for a in sorted(SETS[code])]
    return node_overlap.NodeOverlap(
        overlap_id=overlap_id,
        identity=_identity(),
        dataset="wallets",
        context=QueryContextInfo("CASE-1", "MLA", "00" * 16, 1),
        policy_version=f"{code}-1",
        reveal_to_owner=reveal,
        min_cohort=1,
        items=node_overlap.OverlapItems("wallet", items, {}),
        deadline=deadline,
    )


def _node_keys() -> tuple[bytes, dict[str, tuple[bytes, bytes]]]:
    """A federation CA and node certificates for EE, FR and SG: (ca_pem, code -> (cert, key))."""
    with _KEYS_LOCK:  # peers open concurrently
        return _make_node_keys()


_KEYS_LOCK = threading.Lock()


@functools.cache
def _make_node_keys() -> tuple[bytes, dict[str, tuple[bytes, bytes]]]:
    root = Path(tempfile.mkdtemp(prefix="overlap-node-"))
    init_ca(root / "ca")
    keys = {}
    for code in SETS:
        issue(root / "ca", root / code, name=code, role=ROLE_NODE)
        keys[code] = (
            (root / code / "cert.pem").read_bytes(),
            (root / code / "key.pem").read_bytes(),
        )
    return (root / "ca" / "ca.pem").read_bytes(), keys


def _open(
    overlap: node_overlap.NodeOverlap,
    code: str,
    roster: list[str],
    reveal: bool,
    sizes: dict[str, int],
    *,
    max_relay_points: int,
    workers: int | None = None,
) -> Commitment:
    """`open_overlap` with every member's signed join, as an honest coordinator sends them."""
    ca_pem, keys = _node_keys()
    joins = [
        JoinProof.signed(
            keys[member][1],
            keys[member][0],
            overlap_id=overlap.overlap_id,
            jurisdiction=member,
            set_size=sizes[member],
            investigator_fingerprint=overlap.identity.fingerprint_sha256,
        )
        for member in roster
        if member in sizes
    ]
    return node_overlap.open_overlap(
        overlap,
        code,
        roster,
        reveal,
        sizes,
        joins=joins,
        trust=MemberTrust(ca_pem, lambda identity: False),
        charge=lambda items: None,
        key_pem=keys[code][1],
        max_relay_points=max_relay_points,
        workers=workers,
    )


def _commitment(overlap_id: str, origin: str, size: int) -> Commitment:
    return Commitment.signed(
        _node_keys()[1][origin][1],
        overlap_id=overlap_id,
        origin=origin,
        set_size=size,
        initial_sha256=bytes(32),
    )


def _relay(
    overlap: node_overlap.NodeOverlap,
    code: str,
    origin: str,
    hop: int,
    expected_points: int,
    incoming: Iterable[bytes],
    commitment: Commitment | None = None,
) -> Iterator[bytes]:
    if commitment is None and origin in SETS:
        commitment = _commitment(overlap.overlap_id, origin, expected_points)
    return node_overlap.relay_batches(
        overlap, code, origin, hop, expected_points, incoming, commitment
    )


class DomainPeer:
    """A OverlapPeer calling node.overlap's plain functions, as the servicer does."""

    def __init__(
        self,
        code: str,
        overlap: node_overlap.NodeOverlap,
        sizes: dict[str, int],
        commitments: dict[str, Commitment],
    ) -> None:
        self.jurisdiction = code
        self.overlap = overlap
        self.sizes = sizes
        self.commitments = commitments
        self.shared: list[overlap_protocol.SharedItem] = []

    def open(self, plan: overlap_protocol.OverlapPlan) -> int:
        self.commitments[self.jurisdiction] = _open(
            self.overlap,
            self.jurisdiction,
            list(plan.roster),
            plan.reveal,
            self.sizes,
            max_relay_points=1000,
            workers=1,
        )
        self.plan = plan
        return self.overlap.set_size

    def initial(self, overlap_id: str) -> Iterator[bytes]:
        return node_overlap.initial_batches(self.overlap)

    def relay(
        self, overlap_id: str, origin: str, expected_points: int, incoming: Iterator[bytes]
    ) -> Iterator[bytes]:
        return node_overlap.relay_batches(
            self.overlap,
            self.jurisdiction,
            origin,
            self.plan.hop_of(self.jurisdiction, origin),
            expected_points,
            incoming,
            self.commitments[origin],
        )

    def deliver_shared(self, overlap_id: str, notices: Iterable[bytes]) -> None:
        self.shared = node_overlap.learn_shared(self.overlap, notices)

    def close(self, overlap_id: str) -> None:
        pass


@pytest.mark.parametrize("reveal", [True, False])
def test_overlap_through_the_node_functions_counts_exactly_and_transcripts_agree(
    reveal: bool,
) -> None:
    roster = ("EE", "FR", "SG")
    sizes = {code: len(SETS[code]) for code in roster}
    commitments: dict[str, Commitment] = {}
    peers = {
        code: DomainPeer(code, _overlap(code, reveal=reveal), sizes, commitments) for code in roster
    }
    plan = overlap_protocol.OverlapPlan("ab" * 16, roster, reveal=reveal)
    recorder = RelayRecorder()
    tally = overlap_ring.run_overlap(plan, peers, observe=recorder, concurrent=True)
    holders: dict[str, set[str]] = {}
    for code in roster:
        for item in SETS[code]:
            holders.setdefault(item, set()).add(code)
    expected = {frozenset(g): 0 for n in (2, 3) for g in itertools.combinations(roster, n)}
    for codes in holders.values():
        if len(codes) >= 2:
            expected[frozenset(codes)] += 1
    assert tally.groups() == expected
    query = OverlapQuery("wallets", "CASE-1", "MLA", "FR")
    for code in roster:
        result = OverlapNodeResult(
            code,
            NodeStatus.OK,
            set_size=sizes[code],
            policy_version=f"{code}-1",
            reveal_to_owner=reveal,
            min_cohort=1,
        )
        mine = peers[code].overlap.transcript(code)
        theirs = recorder.transcript(plan, code, query, result, sizes, "00" * 16, 1)
        assert mine == theirs
        if reveal:
            shared = {
                peers[code].overlap.items.describe(s.item)[0]: sorted(s.partners)
                for s in peers[code].shared
            }
            assert shared == {
                a: sorted(holders[a] - {code}) for a in SETS[code] if len(holders[a]) > 1
            }


def _refusal(call: object) -> QueryRefused:
    with pytest.raises(QueryRefused) as caught:
        if callable(call):
            result = call()
            if isinstance(result, Iterator):
                list(result)
    return caught.value


def test_open_refuses_a_plan_that_misstates_the_node_or_asks_for_a_reveal_not_granted() -> None:
    sizes = {"EE": len(SETS["EE"]), "FR": len(SETS["FR"])}
    overlap = _overlap("EE", reveal=False)
    refused = _refusal(
        lambda: _open(overlap, "EE", ["EE", "FR"], True, sizes, max_relay_points=1000)
    )
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert str(refused) == (
        "EE's grant does not allow owners to learn shared items "
        "(reveal_to_owner = false); run the overlap without reveal"
    )
    refused = _refusal(
        lambda: _open(overlap, "EE", ["EE", "FR"], False, {**sizes, "EE": 3}, max_relay_points=1000)
    )
    assert str(refused) == f"the plan announces 3 items for EE; it joined with {sizes['EE']}"
    refused = _refusal(
        lambda: _open(overlap, "EE", ["FR", "SG"], False, sizes, max_relay_points=1000)
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(refused) == f"EE is not in overlap {'ab' * 16}"
    refused = _refusal(lambda: _open(overlap, "EE", ["EE", "FR"], False, sizes, max_relay_points=5))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(refused) == (
        f"{sizes['FR']} foreign points exceed EE's ceiling of 5 relayed points per overlap"
    )


def test_relay_checks_hop_size_and_a_single_pass() -> None:
    sizes = {code: len(SETS[code]) for code in ("EE", "FR", "SG")}
    overlap = _overlap("FR")
    _open(overlap, "FR", ["EE", "FR", "SG"], True, sizes, max_relay_points=1000, workers=1)
    refused = _refusal(lambda: _relay(overlap, "FR", "EE", 2, sizes["EE"], []))
    assert str(refused) == "FR relays EE's set at hop 1, not 2"
    refused = _refusal(lambda: _relay(overlap, "FR", "EE", 1, 7, []))
    assert str(refused) == f"EE's set was announced with {sizes['EE']} points, not 7"
    refused = _refusal(lambda: _relay(overlap, "FR", "FR", 1, 1, []))
    assert str(refused) == "FR never relays its own set"
    refused = _refusal(lambda: _relay(overlap, "FR", "EE", 1, sizes["EE"], [bytes(32)]))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(refused) == (
        "EE's set, hop 1: invalid ristretto255 point at index 0: identity element"
    )
    refused = _refusal(lambda: _relay(overlap, "FR", "EE", 1, sizes["EE"], []))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert str(refused) == f"FR has already relayed EE's set in overlap {'ab' * 16}"


def test_registry_bounds_overlaps_drops_them_at_the_deadline_and_keeps_them_to_their_owner() -> (
    None
):
    now = [0.0]
    expired: list[str] = []
    registry = node_overlap.OverlapRegistry(
        max_overlaps=2,
        seconds=60,
        clock=lambda: now[0],
        on_expire=lambda c: expired.append(c.overlap_id),
    )
    first, second = _overlap("EE", "01" * 16, deadline=60), _overlap("EE", "02" * 16, deadline=90)
    registry.add(first)
    registry.add(second)
    refused = _refusal(lambda: registry.reserve("EE", "03" * 16))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(refused) == (
        "EE is running its maximum of 2 overlap queries; retry when one has finished"
    )
    assert (
        _refusal(lambda: registry.reserve("EE", "01" * 16)).code == grpc.StatusCode.ALREADY_EXISTS
    )
    other = _identity("SG", "bb" * 32)
    refused = _refusal(lambda: registry.get("01" * 16, other))
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    now[0] = 61.0
    registry.reserve("EE", "03" * 16)  # the first overlap expired: room again
    assert expired == ["01" * 16] and len(registry) == 1
    assert first.items.items == [] and first.party is None
    refused = _refusal(lambda: registry.get("01" * 16, _identity()))
    assert refused.code == grpc.StatusCode.NOT_FOUND
    assert registry.get("02" * 16, _identity()) is second
    registry.remove("02" * 16)
    assert len(registry) == 0 and second.items.items == []


def test_shared_records_are_stored_per_case_and_listed_from_the_latest_overlap(
    tmp_path: Path,
) -> None:
    database = NodeDatabase(tmp_path / "node.duckdb")
    moment = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    store_shared(
        database,
        case_ref="C-1",
        overlap_id="old",
        dataset="wallets",
        investigator="FR",
        records=[(_wallet(1), ["SG"])],
        now=moment,
    )
    store_shared(
        database,
        case_ref="C-1",
        overlap_id="new",
        dataset="wallets",
        investigator="FR",
        records=[(_wallet(2), ["SG", "FR"]), (_wallet(3), ["FR"])],
        now=moment + dt.timedelta(hours=1),
    )
    store_shared(
        database,
        case_ref="C-2",
        overlap_id="x",
        dataset="wallets",
        investigator="FR",
        records=[(_wallet(4), ["FR"])],
        now=moment,
    )
    with database.session() as con:
        records = list_shared(con, "C-1")
        assert list_shared(con, "C-3") == []
    assert [(r.record, r.shared_with, r.overlap_id) for r in records] == [
        (_wallet(2), ("FR", "SG"), "new"),
        (_wallet(3), ("FR",), "new"),
    ]
    text = render_shared(records, "csv", jurisdiction="EE", case_ref="C-1")
    assert text.splitlines() == [
        "record,shared_with,dataset,overlap_id,investigator",
        f"{_wallet(2)},FR SG,wallets,new,FR",
        f"{_wallet(3)},FR,wallets,new,FR",
    ]
    table = render_shared([], "table", jurisdiction="EE", case_ref="C-9")
    assert "EE: no shared records for case C-9" in table


class _RecordingContext:
    """What the servicer uses of grpc.ServicerContext; keeps the trailers of an abort."""

    def __init__(self, cert_pem: bytes) -> None:
        self._cert = cert_pem
        self.trailers: tuple[tuple[str, str], ...] = ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._cert]}

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailers = metadata

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise QueryRefused(code, details)


def test_an_overlap_join_refused_by_its_rate_limit_says_when_it_renews(tmp_path: Path) -> None:
    from fedtrace.pki import ROLE_INVESTIGATOR, init_ca, issue
    from fedtrace.v1 import node_pb2, overlap_pb2
    from fedtrace.wire import RENEWS_AT_FORMAT, RENEWS_AT_METADATA
    from node.config import load_node_config
    from node.server import load_state
    from node.services.overlap import OverlapServicer
    from node.setup import init_node

    init_ca(tmp_path / "ca")
    init_node(tmp_path / "EE", "EE", tmp_path / "ca", "127.0.0.1:0")
    (tmp_path / "EE" / "policy.toml").write_text(
        'jurisdiction = "EE"\nversion = "v1"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["wallets"]\ndisclosure = "overlap"\n'
        'rate_limit = { queries = 1, per = "day" }\n'
    )
    issue(tmp_path / "ca", tmp_path / "FR", name="FR", role=ROLE_INVESTIGATOR)
    config = load_node_config(tmp_path / "EE")
    state = load_state(config, NodeDatabase(config.database), lambda message: None)
    servicer = OverlapServicer(state)
    context = _RecordingContext((tmp_path / "FR" / "cert.pem").read_bytes())

    def join(overlap_id: str, nonce: bytes) -> overlap_pb2.OverlapJoinResponse:
        query = node_pb2.QueryContext(
            case_ref="CASE-1",
            legal_basis="MLA",
            nonce=nonce,
            timestamp_unix_ms=int(dt.datetime.now(dt.UTC).timestamp() * 1000),
        )
        request = overlap_pb2.OverlapJoinRequest(
            overlap_id=overlap_id, dataset="wallets", context=query
        )
        return servicer.Join(request, context)

    try:
        assert join("ab" * 16, b"\x01" * 16).jurisdiction == "EE"
        assert context.trailers == ()
        with pytest.raises(QueryRefused) as refused:
            join("cd" * 16, b"\x02" * 16)
    finally:
        servicer.stop()
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers: list[tuple[str, str]] = list(context.trailers)
    (key, renews_at), *_ = trailers
    assert key == RENEWS_AT_METADATA
    moment = dt.datetime.strptime(renews_at, RENEWS_AT_FORMAT).replace(tzinfo=dt.UTC)
    assert dt.timedelta(hours=23) < moment - dt.datetime.now(dt.UTC) <= dt.timedelta(days=1)
    assert f"it renews at {renews_at}" in str(refused.value)

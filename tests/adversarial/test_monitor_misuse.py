"""A modified investigator client that the node answers and the monitor proves cheating.

Each client is the project's own coordinator with its blinding replaced here (never
in product code): it tags some points, blinds some items with a scalar of their
own (so a cardinality answer links to items), weights or widens an aggregate's
indicator, seals junk or seals another watchlist, while its sealed opening claims
the honest blinding. The real node servicers answer every one (in memory, through
`tests.unit.test_match_in_memory`); then the node exports the monitor's share
(`node.openings.export`) and `fedtrace.monitor` names exactly the cheating queries
and the differing points or indicator rows.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from coordinator.aggregate import AggregateQuery, run_aggregate
from coordinator.epoch_cache import FilterCache
from coordinator.federation import Federation, MonitorEntry, NodeEntry
from coordinator.match import MatchQuery, run_match
from coordinator.pools import PoolStore, verified_binding
from fedtrace import blinding, group, opening, pki, psi
from fedtrace.he import SecretHeContext
from fedtrace.items import item_bytes
from fedtrace.monitor import (
    CONSISTENT,
    MISUSE,
    UNVERIFIABLE,
    MonitorReport,
    Verdict,
    load_monitor_key,
    read_export,
    verify_export,
)
from fedtrace.wire import Level, NodeStatus
from node import openings
from node.audit import AUDIT_DIR, entries
from tests.unit.test_match_in_memory import InMemoryFederation, eth

TAG = group.hash_to_group(b"the investigator's tag")
HONEST_QUERIES = 100


def monitored_policy(code: str) -> str:
    """FR membership, SG cardinality and DE aggregates, each grant demanding monitor OVS."""
    return f"""jurisdiction = "{code}"
version = "{code.lower()}-monitored"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 3000
monitor = "OVS"
[[grant]]
partners = ["SG"]
datasets = ["wallets"]
disclosure = "cardinality"
max_items_per_query = 3000
monitor = "OVS"
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
monitor = "OVS"
"""


@dataclasses.dataclass
class Monitored:
    """Node EE (wallets 1..600) whose every grant demands monitor OVS, and OVS's key."""

    memory: InMemoryFederation
    monitor_dir: Path
    filters: FilterCache = dataclasses.field(default_factory=lambda: FilterCache(None))

    def federation(self, investigator: str) -> Federation:
        cert = self.monitor_dir / "cert.pem"
        return dataclasses.replace(
            self.memory.federation(investigator),
            monitors=(MonitorEntry("OVS", cert, cert.read_bytes()),),
        )

    def export(self, out: Path) -> Path:
        """`node monitor-export EE --monitor OVS --out out`, in process."""
        state = self.memory.nodes["EE"].state
        trail = entries(self.memory.root / "EE" / AUDIT_DIR)
        openings.export(state.database, trail, "EE", "OVS", out)
        return out

    def verify(self, out: Path, case: str | None = None) -> MonitorReport:
        key = load_monitor_key(pki.read_key_pem(self.monitor_dir / "key.pem"))
        return verify_export(read_export(self.export(out)), key, case=case)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    root = tmp_path_factory.mktemp("monitored")
    memory = InMemoryFederation.create(root)
    pki.issue(root / "ca", root / "OVS", name="OVS", role=pki.ROLE_MONITOR)
    memory.add_node("EE", monitored_policy("EE"), {eth(n) for n in range(1, 601)})
    return Monitored(memory, root / "OVS")


def match(
    monitored: Monitored, investigator: str, case: str, items: Sequence[str], level: Level
) -> None:
    query = MatchQuery(
        dataset="wallets",
        case_ref=case,
        legal_basis="MLA",
        kind="wallet",
        items=tuple(items),
        investigator=investigator,
        disclosure=level,
    )
    memory = monitored.memory
    [result] = run_match(
        monitored.federation(investigator),
        query,
        memory.connections(investigator),
        memory.ca_pem,
        cache=monitored.filters,
    )
    assert result.status == NodeStatus.OK, result.reason  # the node answers


#: Every case reference a cheating client uses in this module; no other query may be flagged.
CHEATS = frozenset(
    {"TAGGED", "LINKED", "JUNK", "DECOY", "AGG-SELECTIVE", "AGG-WEIGHTED", "ADDITIVE-TAGGED"}
)


def by_case(report: MonitorReport) -> dict[str, list[Verdict]]:
    """The verdicts by case reference, once checked that only cheating queries are flagged."""
    found: dict[str, list[Verdict]] = {}
    for verdict in report.verdicts:
        found.setdefault(verdict.case_ref, []).append(verdict)
        if verdict.case_ref not in CHEATS:
            assert verdict.status == CONSISTENT, verdict
    return found


# --- modified clients -------------------------------------------------------------------


class TaggingQuery(psi.BlindedQuery):
    """Adds a tag point to points 1 and 4: answers to them are recognisable to the client."""

    def __init__(self, items: Sequence[bytes], **options: Any) -> None:
        super().__init__(items, **options)
        for index in (1, 4):
            self.blinded[index] = group.add_points(self.blinded[index], TAG)


class LinkingQuery(psi.BlindedQuery):
    """Blinds item 2 with a scalar of its own: a cardinality answer then links to it."""

    def __init__(self, items: Sequence[bytes], **options: Any) -> None:
        super().__init__(items, **options)
        self.blinded[2] = group.blind_items([items[2]], group.random_scalar())[0]


def _junk_seal(real: Callable[..., opening.SealedOpening]) -> Any:
    def seal(*args: Any, **kwargs: Any) -> opening.SealedOpening:
        sealed = real(*args, **kwargs)
        flipped = bytearray(sealed.ciphertext)
        flipped[len(flipped) // 2] ^= 0x01
        return dataclasses.replace(sealed, ciphertext=bytes(flipped))

    return seal


def _decoy_seal(real: Callable[..., opening.SealedOpening]) -> Any:
    def seal(
        statement: opening.Statement, secrets: opening.Opening, *args: Any
    ) -> opening.SealedOpening:
        decoy = tuple(item_bytes("wallet", eth(90_000 + i)) for i in range(len(secrets.items)))
        return real(statement, dataclasses.replace(secrets, items=decoy), *args)

    return seal


@pytest.fixture()
def cheat(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    with monkeypatch.context() as patch:
        yield patch


# --- tests ------------------------------------------------------------------------------


@pytest.mark.slow  # about 0.1 s of node-side database work per query
def test_honest_queries_verify_consistent(monitored: Monitored, tmp_path: Path) -> None:
    started = time.perf_counter()
    for n in range(HONEST_QUERIES):
        items = [eth(n * 7 + k) for k in range(1, 6)]
        match(monitored, "FR", "HONEST", items, Level.MEMBERSHIP)
    match(monitored, "SG", "HONEST", [eth(n) for n in range(590, 620)], Level.CARDINALITY)
    report = monitored.verify(tmp_path / "export", case="HONEST")
    assert len(report.verdicts) == HONEST_QUERIES + 1
    assert {v.status for v in report.verdicts} == {CONSISTENT}, [
        v.reason for v in report.verdicts if v.status != CONSISTENT
    ]
    assert report.misuse == 0
    assert time.perf_counter() - started < 120


def test_tagged_and_linked_points_are_named(
    monitored: Monitored, cheat: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    items = [eth(n) for n in range(595, 605)]
    match(monitored, "FR", "BEFORE", items, Level.MEMBERSHIP)
    cheat.setattr(psi, "BlindedQuery", TaggingQuery)
    match(monitored, "FR", "TAGGED", items, Level.MEMBERSHIP)
    cheat.setattr(psi, "BlindedQuery", LinkingQuery)
    match(monitored, "SG", "LINKED", items, Level.CARDINALITY)
    cheat.undo()
    match(monitored, "FR", "AFTER", items, Level.MEMBERSHIP)
    found = by_case(monitored.verify(tmp_path / "export"))
    assert [(v.status, v.points) for v in found["TAGGED"]] == [(MISUSE, (1, 4))]
    assert [(v.status, v.points) for v in found["LINKED"]] == [(MISUSE, (2,))]
    tagged = found["TAGGED"][0]
    assert tagged.partner == "FR" and tagged.kind == "match" and tagged.statement
    assert tagged.signature and tagged.time
    assert [v.status for v in found["BEFORE"] + found["AFTER"]] == [CONSISTENT, CONSISTENT]


def test_junk_and_decoy_seals_are_flagged(
    monitored: Monitored, cheat: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    items = [eth(n) for n in range(10, 16)]
    real = opening.seal
    cheat.setattr(opening, "seal", _junk_seal(real))
    match(monitored, "FR", "JUNK", items, Level.MEMBERSHIP)
    cheat.setattr(opening, "seal", _decoy_seal(real))
    match(monitored, "FR", "DECOY", items, Level.MEMBERSHIP)
    cheat.undo()
    found = by_case(monitored.verify(tmp_path / "export"))
    [junk] = found["JUNK"]
    assert junk.status == UNVERIFIABLE and "does not open" in junk.reason
    [decoy] = found["DECOY"]
    assert decoy.status == UNVERIFIABLE and "other items" in decoy.reason
    assert decoy.points == tuple(range(len(items)))


class CheatingIndicator:
    """Replaces `SecretHeContext.encrypt_indicator`: widens or weights the 0/1 vector."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.rows: list[int] = []

    def method(self) -> Any:
        """A plain function, so that it binds to the context as a method does."""

        def encrypt_indicator(secret: SecretHeContext, bits: Sequence[int]) -> list[bytes]:
            return self.encrypt(secret, bits)

        return encrypt_indicator

    def encrypt(self, secret: SecretHeContext, bits: Sequence[int]) -> list[bytes]:
        values = list(bits)
        if self.how == "selective":  # a 1 where no watchlisted item matched
            row = values.index(0)
        else:  # a weight of 2 on a matched row
            row = values.index(1)
        values[row] = 1 if self.how == "selective" else 2
        self.rows.append(row)
        return secret.encrypt_slots(values)


def aggregate(monitored: Monitored, case: str, items: Sequence[str]) -> None:
    query = AggregateQuery(
        dataset="wallets",
        case_ref=case,
        legal_basis="MLA",
        items=tuple(items),
        investigator="DE",
        columns=("total_in_eur", "tx_count"),
    )
    memory = monitored.memory
    outcome = run_aggregate(
        monitored.federation("DE"), query, memory.connections("DE"), memory.ca_pem
    )
    [result] = outcome.results
    assert result.result.status == NodeStatus.OK, result.result.reason  # the node answers


@pytest.mark.slow  # homomorphic encryption: seconds per query
def test_weighted_and_selective_indicators_are_named(
    monitored: Monitored, cheat: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    items = [eth(n) for n in range(580, 640)]  # 21 of them held
    aggregate(monitored, "AGG-HONEST", items)
    selective, weighted = CheatingIndicator("selective"), CheatingIndicator("weighted")
    cheat.setattr(SecretHeContext, "encrypt_indicator", selective.method())
    aggregate(monitored, "AGG-SELECTIVE", items)
    cheat.setattr(SecretHeContext, "encrypt_indicator", weighted.method())
    aggregate(monitored, "AGG-WEIGHTED", items)
    cheat.undo()
    found = by_case(monitored.verify(tmp_path / "export"))
    kinds = ["aggregate-points", "aggregate-indicator"]
    assert [v.kind for v in found["AGG-HONEST"]] == kinds
    assert [v.status for v in found["AGG-HONEST"]] == [CONSISTENT, CONSISTENT]
    for case, cheater in (("AGG-SELECTIVE", selective), ("AGG-WEIGHTED", weighted)):
        first, second = found[case]
        assert first.status == CONSISTENT  # round 1 was honest
        assert (second.status, second.positions) == (MISUSE, tuple(cheater.rows)), second
    assert "weighted" in found["AGG-WEIGHTED"][1].reason
    assert "no watchlisted item matched" in found["AGG-SELECTIVE"][1].reason


def _tagging_additive(real: Callable[..., Any]) -> Callable[..., Any]:
    """`blinding.blind_hashed` that adds a tag to point 3 after the pool's mask."""

    def blind_hashed(*args: Any) -> Any:
        points, entries = real(*args)
        points[3] = group.add_points(points[3], TAG)
        return points, entries

    return blind_hashed


def test_additive_blinding_verifies_and_a_tag_on_it_is_named(
    monitored: Monitored, cheat: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    memory = monitored.memory
    pools = PoolStore(tmp_path / "pools")
    info = memory.connections("FR")(NodeEntry("EE", "memory")).info(10)
    dataset = next(d for d in info.datasets if d.name == "wallets")
    pools.prepare(verified_binding("EE", dataset), 40)
    items = [eth(n) for n in range(100, 110)]

    def additive(case: str) -> None:
        query = MatchQuery("wallets", case, "MLA", "wallet", tuple(items), "FR")
        [result] = run_match(
            monitored.federation("FR"), query, memory.connections("FR"), memory.ca_pem, pools=pools
        )
        assert result.status == NodeStatus.OK, result.reason
        assert result.signature is not None
        assert result.signature["transcript"]["blinding"] == blinding.ADDITIVE

    additive("ADDITIVE")
    cheat.setattr(blinding, "blind_hashed", _tagging_additive(blinding.blind_hashed))
    additive("ADDITIVE-TAGGED")
    cheat.undo()
    found = by_case(monitored.verify(tmp_path / "export"))
    assert [(v.status, v.points) for v in found["ADDITIVE"]] == [(CONSISTENT, ())]
    assert [(v.status, v.points) for v in found["ADDITIVE-TAGGED"]] == [(MISUSE, (3,))]

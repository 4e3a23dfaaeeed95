"""Encrypted aggregates against an investigator (or coordinator) that runs modified software.

Each test plays one attack and checks the node's control; removing the control
makes the test fail. The federation tests run the real node servicers in memory
(`tests.unit.test_match_in_memory`); the cryptographic ones call the node's
functions directly with what a cheating coordinator would send.
"""

from __future__ import annotations

import math
import secrets
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tenseal.sealapi", reason="TenSEAL's SEAL bindings are not importable")

from coordinator.aggregate import AggregateQuery, run_aggregate  # noqa: E402
from fedtrace import dp, he, pki  # noqa: E402
from fedtrace.aggregate import COUNT_COLUMN, node_aggregate  # noqa: E402
from fedtrace.he_flood import measure_margin  # noqa: E402
from fedtrace.revocation import Revocation, RevocationList  # noqa: E402
from fedtrace.wire import Level, NodeStatus  # noqa: E402
from node.aggregate import (  # noqa: E402
    AggregateTable,
    PeerError,
    PeerStatement,
    TotalOnlyRound,
    answer_figures,
    checked_members,
    peer_masks,
    plan_figures,
    start_total_only,
)
from node.policy import Grant, load_policy  # noqa: E402
from node.policy.check import check_policies  # noqa: E402
from tests.unit.test_match_in_memory import InMemoryFederation, eth  # noqa: E402

pytestmark = pytest.mark.slow

_rng = secrets.SystemRandom()
T = he.PLAIN_MODULUS


@pytest.fixture(scope="module")
def keys() -> tuple[he.SecretHeContext, he.PublicHeContext]:
    secret = he.SecretHeContext.generate()
    return secret, he.PublicHeContext.from_bytes(secret.public_bytes())


def _grant(clip: tuple[tuple[str, float, float], ...], noise: bool = True) -> Grant:
    return Grant(
        partners=("FR",),
        datasets=("wallets",),
        disclosure=Level.AGGREGATE,
        max_items_per_query=100,
        aggregate_columns=tuple(name for name, _, _ in clip),
        clip=clip,
        noise=noise,
        epsilon_per_query=1.0,
    )


def _table(values: list[int]) -> AggregateTable:
    columns = {"total_in_eur": values}
    return AggregateTable(
        "wallets",
        "e1",
        len(values),
        b"\0" * 8 * len(values),
        b"",
        {"total_in_eur": 0},
        columns,
        {"total_in_eur": sum(abs(v) for v in values)},
    )


# -- 1. A weighted indicator -------------------------------------------------------------


def test_a_weighted_indicator_reads_noise_not_a_record(keys) -> None:
    """Weight 2^29 on one row (its value would be readable as sum / 2^29): the node's
    indicator check turns that row's slot into a fresh uniform residue every time."""
    secret, public = keys
    rows = 3000
    column = [_rng.randint(1, 10**9) for _ in range(rows)]
    target = _rng.randrange(rows)
    weights = [0] * rows
    weights[target] = 2**29
    indicator = secret.encrypt_slots(weights)
    sums = [
        secret.decrypt_sum(node_aggregate(public, indicator, {"v": column}, {"v": 0}, None)["v"])
        % T
        for _ in range(4)
    ]
    assert 2**29 * column[target] % T not in sums
    assert len(set(sums)) == len(sums)  # fresh randomness per answer: nothing to average out
    assert T / 16 < statistics.mean(sums) < 15 * T / 16


def test_weights_two_over_many_rows_are_uniform_slot_by_slot(keys) -> None:
    secret, public = keys
    weighted = set(_rng.sample(range(he.SLOT_COUNT), 1024))
    column = [_rng.randint(1, 10**12) for _ in range(he.SLOT_COUNT)]
    values = [2 if s in weighted else 0 for s in range(he.SLOT_COUNT)]
    batch = public.load_indicators(secret.encrypt_slots(values))
    slots = secret.decrypt_slots(public.masked_dot(batch, column, [0] * he.SLOT_COUNT))
    assert all(slots[s] != 2 * column[s] % T for s in weighted)
    bins = [0] * 16
    for s in weighted:
        bins[slots[s] * 16 // T] += 1
    expected = len(weighted) / 16
    assert sum((b - expected) ** 2 / expected for b in bins) < 60  # chi², P < 10^-6


# -- 2. An indicator over rows the investigator never matched ---------------------------


def test_an_all_ones_indicator_gets_a_clipped_noisy_total(keys) -> None:
    """Rows it never matched (here: every row) give a sum of *clipped* values plus the DP
    noise of the grant: no more than any other aggregate the grant allows."""
    secret, public = keys
    values = [5, 10**12, -(10**12), 7, 0]  # two rows far outside the clip bounds
    grant = _grant((("total_in_eur", -1000, 1000),))
    table = _table(values)
    plans = plan_figures(grant, table, ["total_in_eur"], 1.0)
    exact = sum(min(max(v, -1000), 1000) for v in values)
    indicator = secret.encrypt_indicator([1] * len(values))
    draws = [
        secret.decrypt_sum(answer_figures(public, indicator, table, plans)["total_in_eur"])
        for _ in range(6)
    ]
    spec = next(p.noise for p in plans if p.figure == "total_in_eur")
    assert all(abs(d - exact) <= 40 * spec.scale for d in draws)  # clipped, not 10^12
    assert len(set(draws)) > 1  # noised


# -- 3. DP calibration: noise from the node, by its spread --------------------------------


def test_sensitivity_is_the_width_of_the_clip_range() -> None:
    """Clip [-1000, 1000]: substituting one record moves the sum by 2000, not 1000."""
    plans = plan_figures(
        _grant((("total_in_eur", -1000, 1000),)), _table([1, 2]), ["total_in_eur"], 1.0
    )
    money = next(p for p in plans if p.figure == "total_in_eur")
    assert money.noise.sensitivity == 2000
    assert money.noise.scale == pytest.approx(2000 / 0.5)  # epsilon 1 over count + 1 column
    draws = [dp.sample_noise(money.noise) for _ in range(3000)]
    rho = math.exp(-1 / money.noise.scale)
    assert statistics.pstdev(draws) == pytest.approx(math.sqrt(2 * rho) / (1 - rho), rel=0.12)


# -- 4. Total-only masks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes]]:
    root = tmp_path_factory.mktemp("total-only")
    pki.init_ca(root / "ca")
    out = {"ca": ((root / "ca" / "ca.pem").read_bytes(), b"")}
    for code in ("EE", "LT", "LV", "DE"):
        pki.issue(root / "ca", root / code, name=code, role="node")
        out[code] = (
            (root / code / pki.KEY_FILE).read_bytes(),
            (root / code / pki.CERT_FILE).read_bytes(),
        )
    return out


def _round_one(
    nodes, codes, investigator="FR", query_id: bytes | None = None
) -> dict[str, TotalOnlyRound]:
    return {
        code: start_total_only(
            nodes[code][0], code, investigator, query_id or secrets.token_bytes(16)
        )
        for code in codes
    }


def _statements(nodes, rounds: dict[str, TotalOnlyRound]) -> list[PeerStatement]:
    return [
        PeerStatement(r.member, nodes[code][1], r.signature) for code, r in sorted(rounds.items())
    ]


def test_a_reused_coordinator_nonce_still_gives_fresh_masks(nodes) -> None:
    """The coordinator sends the same nonce twice (or one it chose): every node's own
    salt and per-query key go into the masks, so they differ and do not repeat."""
    ca = nodes["ca"][0]
    nonce = b"chosen by the coordinator"
    masks = []
    for _ in range(2):
        # Even with the same query ids, each node's own salt and key make the masks new.
        rounds = _round_one(nodes, ("EE", "LT", "LV"), query_id=b"q" * 16)
        peers = _statements(nodes, rounds)
        mask, _ = peer_masks(rounds["EE"], "FR", peers, ca, RevocationList(), nonce, ["v"])
        masks.append(mask["v"])
        total = sum(
            peer_masks(rounds[c], "FR", peers, ca, RevocationList(), nonce, ["v"])[0]["v"]
            for c in ("EE", "LT", "LV")
        )
        assert total % T == 0  # they still cancel in the total
    assert masks[0] != masks[1]


def test_a_set_shown_differently_to_one_node_does_not_cancel(nodes) -> None:
    """Each node keys its masks by the whole answering set, salts included."""
    ca = nodes["ca"][0]
    rounds = _round_one(nodes, ("EE", "LT", "LV"))
    peers = _statements(nodes, rounds)
    nonce = secrets.token_bytes(16)
    honest = {
        c: peer_masks(rounds[c], "FR", peers, ca, RevocationList(), nonce, ["v"])[0]["v"]
        for c in rounds
    }
    other_nonce = peer_masks(rounds["LV"], "FR", peers, ca, RevocationList(), nonce[::-1], ["v"])
    assert (honest["EE"] + honest["LT"] + other_nonce[0]["v"]) % T != 0


def test_an_answering_set_with_the_investigators_own_node_is_refused(nodes) -> None:
    rounds = _round_one(nodes, ("EE", "LT", "DE"), investigator="DE")
    with pytest.raises(PeerError, match="investigator's own node"):
        checked_members(
            rounds["EE"], "DE", _statements(nodes, rounds), nodes["ca"][0], RevocationList()
        )


def test_an_answering_set_of_one_is_refused(nodes) -> None:
    """A lone member's masked answer would be its own figure: no total from one node."""
    rounds = _round_one(nodes, ("EE",))
    with pytest.raises(PeerError, match="at least 2"):
        checked_members(
            rounds["EE"], "FR", _statements(nodes, rounds), nodes["ca"][0], RevocationList()
        )


def test_a_replaced_own_entry_an_unsigned_key_or_a_revoked_peer_is_refused(nodes) -> None:
    ca = nodes["ca"][0]
    rounds = _round_one(nodes, ("EE", "LT", "LV"))
    peers = _statements(nodes, rounds)
    fresh = _round_one(nodes, ("EE",))["EE"]  # the coordinator swaps in another key for EE
    swapped = [
        PeerStatement(fresh.member, p.certificate_pem, fresh.signature)
        if p.member.code == "EE"
        else p
        for p in peers
    ]
    with pytest.raises(PeerError, match="not what it sent"):
        checked_members(rounds["EE"], "FR", swapped, ca, RevocationList())
    forged = [
        PeerStatement(p.member, p.certificate_pem, b"\x30\x00") if p.member.code == "LT" else p
        for p in peers
    ]
    with pytest.raises(PeerError, match="did not sign"):
        checked_members(rounds["EE"], "FR", forged, ca, RevocationList())
    identity = pki.identity_from_pem(nodes["LV"][1])
    revoked = RevocationList(
        (Revocation(identity.serial, "", "LV", "compromised", "2026-01-01T00:00:00Z"),)
    )
    with pytest.raises(PeerError, match="revoked"):
        checked_members(rounds["EE"], "FR", peers, ca, revoked)


# -- 5. Flooding margin -----------------------------------------------------------------


def test_the_flooding_margin_meets_the_requirement(keys) -> None:
    """Measured on the node's own answer path; fails below 2^(40 + log2 N)."""
    secret, public = keys
    rows = 2 * he.SLOT_COUNT
    bits = [_rng.randrange(2) for _ in range(rows)]
    column = [_rng.randint(-(10**12), 10**12) for _ in range(rows)]
    margin = measure_margin(
        secret, public, public.load_indicators(secret.encrypt_indicator(bits)), column
    )
    assert he.REQUIRED_MARGIN_BITS == 40 + int(math.log2(he.POLY_MODULUS_DEGREE))
    assert margin.measured_margin_bits >= he.REQUIRED_MARGIN_BITS
    assert margin.worst_case_margin_bits >= he.REQUIRED_MARGIN_BITS
    assert margin.answer_budget_bits > 0
    # The answer really carries the flood: its noise is the flood's, not the computation's.
    assert margin.answer_budget_bits <= margin.flood_budget_bits + 1


# -- 6. The node's policy, not the coordinator, sets the terms --------------------------

POLICY = """jurisdiction = "{code}"
version = "{code}-adv-{version}"
[[grant]]
partners = ["DE"]
datasets = ["wallets"]
disclosure = "aggregate"
max_items_per_query = 3000
aggregate_columns = ["total_in_eur", "tx_count"]
clip = {{ total_in_eur = [0, 100000000], tx_count = [0, 100000] }}
min_cohort = 5
epsilon_per_query = 1.0
epsilon_budget = {{ epsilon = 100.0, per = "30d" }}
epsilon_lifetime = 2.0
"""


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[InMemoryFederation]:
    memory = InMemoryFederation.create(tmp_path)
    memory.add_node("EE", POLICY.format(code="EE", version=1), {eth(n) for n in range(1, 301)})
    yield memory


def _query(items: list[str], epsilon: float = 0.0) -> AggregateQuery:
    return AggregateQuery(
        dataset="wallets",
        case_ref="AGG-ADV",
        legal_basis="MLA",
        items=tuple(items),
        investigator="DE",
        columns=("total_in_eur",),
        epsilon=epsilon,
    )


def _run(memory: InMemoryFederation, query: AggregateQuery):
    [result] = run_aggregate(
        memory.federation("DE"), query, memory.connections("DE"), memory.ca_pem
    ).results
    return result.result


def test_a_zero_item_or_tiny_round_one_is_refused(federation: InMemoryFederation) -> None:
    for items in ([], [eth(1), eth(2)]):
        result = _run(federation, _query(items))
        assert result.status != NodeStatus.OK
        assert "min_cohort" in result.reason


def test_epsilon_comes_from_the_policy_and_the_lifetime_cap_holds(
    federation: InMemoryFederation,
) -> None:
    items = [eth(n) for n in range(1, 40)]
    smaller = _run(federation, _query(items, epsilon=0.01))  # more queries from one budget
    assert smaller.status != NodeStatus.OK and "as its policy says" in smaller.reason
    for _ in range(2):
        answered = _run(federation, _query(items))
        assert answered.status == NodeStatus.OK, answered.reason
        assert answered.signature is not None
        assert answered.signature["transcript"]["epsilon"] == 1.0
    third = _run(federation, _query(items))
    assert third.status != NodeStatus.OK and "over its lifetime" in third.reason


def test_a_noisy_aggregate_grant_needs_an_epsilon_budget_and_lifetime(tmp_path: Path) -> None:
    without = "\n".join(
        line
        for line in POLICY.format(code="EE", version=1).splitlines()
        if not line.startswith(("epsilon_budget", "epsilon_lifetime"))
    )
    path = tmp_path / "policy.toml"
    path.write_text(without + "\n")
    report = check_policies([path])
    messages = " ".join(d.message for d in report.diagnostics if d.severity == "error")
    assert "'epsilon_budget'" in messages and "'epsilon_lifetime'" in messages
    path.write_text(POLICY.format(code="EE", version=1))
    assert load_policy(path).grants[0].epsilon_lifetime == 2.0


def test_count_column_is_always_first(keys) -> None:
    plans = plan_figures(_grant((("total_in_eur", 0, 10),)), _table([1]), ["total_in_eur"], 1.0)
    assert plans[0].figure == COUNT_COLUMN

"""The overlap query core (fedtrace.overlap) against a plain-Python oracle, with its transcript.

Every overlap here runs through ``run_overlap`` with in-process peers, so every
message crosses the coordinator as ``bytes`` and can be recorded.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Mapping, Sequence

import pytest

from fedtrace import group
from fedtrace import overlap as overlap_protocol
from fedtrace.bench.overlap import synthetic_sets
from fedtrace.items import item_bytes
from fedtrace.overlap import OverlapError, OverlapParty, OverlapPlan
from fedtrace.overlap_ring import InProcessPeer, OverlapTally, Relayed, run_overlap

Sets = dict[str, list[bytes]]


def wallet(label: str) -> bytes:
    return item_bytes("wallet", label)


# --------------------------------------------------------------------------- oracle


def holders(sets: Mapping[str, Sequence[bytes]]) -> dict[bytes, frozenset[str]]:
    held: dict[bytes, set[str]] = {}
    for code, items in sets.items():
        for item in items:
            held.setdefault(item, set()).add(code)
    return {item: frozenset(codes) for item, codes in held.items()}


def oracle_groups(sets: Mapping[str, Sequence[bytes]]) -> dict[frozenset[str], int]:
    counts = {
        frozenset(combo): 0
        for size in range(2, len(sets) + 1)
        for combo in itertools.combinations(sets, size)
    }
    for codes in holders(sets).values():
        if len(codes) >= 2:
            counts[codes] += 1
    return counts


def oracle_pairwise(sets: Mapping[str, Sequence[bytes]]) -> dict[tuple[str, str], int]:
    return {(a, b): len(set(sets[a]) & set(sets[b])) for a, b in itertools.combinations(sets, 2)}


def oracle_shared(sets: Mapping[str, Sequence[bytes]], code: str) -> dict[bytes, frozenset[str]]:
    held = holders(sets)
    return {item: held[item] - {code} for item in set(sets[code]) if len(held[item]) >= 2}


# --------------------------------------------------------------------------- scenarios


def planted(codes: Sequence[str], *, seed: int, own: int = 40) -> Sets:
    """Random sets where every group of two or more holds a random number of items."""
    rng = random.Random(seed)
    sets: Sets = {code: [] for code in codes}
    serial = 0
    for size in range(2, len(codes) + 1):
        for combo in itertools.combinations(codes, size):
            for _ in range(rng.randrange(0, 6)):
                item = wallet(f"shared-{seed}-{serial}")
                serial += 1
                for code in combo:
                    sets[code].append(item)
    for code in codes:
        sets[code].extend(wallet(f"{code}-{seed}-{j}") for j in range(rng.randrange(0, own)))
        rng.shuffle(sets[code])
    return sets


def scenarios(codes: Sequence[str]) -> dict[str, Sets]:
    common = [wallet(f"common-{j}") for j in range(25)]
    return {
        "planted": planted(codes, seed=len(codes)),
        "one_empty": {**planted(codes, seed=7), codes[-1]: []},
        "all_empty": {code: [] for code in codes},
        "all_shared": {code: list(common) for code in codes},
        "nothing_shared": {code: [wallet(f"{code}-{j}") for j in range(30)] for code in codes},
        "duplicates_in_input": {code: [common[0], common[0], common[1]] for code in codes},
    }


CASES = [
    (codes, name, reveal)
    for codes in (("EE", "FR", "SG"), ("DE", "EE", "FR", "SG"))
    for name in scenarios(codes)
    for reveal in (False, True)
]


def overlap(
    sets: Sets, *, reveal: bool, log: list[Relayed] | None = None
) -> tuple[OverlapPlan, dict[str, InProcessPeer], OverlapTally]:
    plan = OverlapPlan.new(list(sets), reveal=reveal)
    peers = {code: InProcessPeer(code, items, workers=1) for code, items in sets.items()}
    tally = run_overlap(plan, peers, observe=None if log is None else log.append)
    return plan, peers, tally


# --------------------------------------------------------------------------- counts and reveal


@pytest.mark.parametrize(
    ("codes", "name", "reveal"),
    CASES,
    ids=[f"{len(c)}-{n}-{'reveal' if r else 'count'}" for c, n, r in CASES],
)
def test_counts_and_reveal_match_oracle(codes: tuple[str, ...], name: str, reveal: bool) -> None:
    sets = scenarios(codes)[name]
    plan, peers, tally = overlap(sets, reveal=reveal)
    assert tally.groups() == oracle_groups(sets)
    assert tally.pairwise() == oracle_pairwise(sets)
    for code in codes:
        assert tally.set_size(code) == len(set(sets[code]))
    if not reveal:
        assert all(peer.shared == [] for peer in peers.values())
        with pytest.raises(OverlapError, match="does not reveal"):
            tally.shared_for(codes[0])
        return
    for code in codes:
        learned = {shared.item: shared.partners for shared in peers[code].shared}
        assert learned == oracle_shared(sets, code)
        assert len(peers[code].shared) == len(learned)  # each record once


def test_groups_and_pairs_are_listed_in_a_stable_order() -> None:
    sets = planted(("EE", "FR", "SG", "DE"), seed=3)
    _, _, tally = overlap(sets, reveal=False)
    sizes = [len(g) for g in tally.groups()]
    assert sizes == sorted(sizes) and len(sizes) == 11
    assert list(tally.pairwise()) == list(itertools.combinations(("EE", "FR", "SG", "DE"), 2))


def test_min_cohort_suppresses_small_counts_and_the_pairs_that_would_reveal_them() -> None:
    common = [wallet(f"c{j}") for j in range(10)]
    few = [wallet(f"f{j}") for j in range(2)]
    sets = {"EE": common + few, "FR": common + few, "SG": list(common)}
    _, _, tally = overlap(sets, reveal=False)
    assert tally.groups() == {
        frozenset({"EE", "FR"}): 2,
        frozenset({"EE", "SG"}): 0,
        frozenset({"FR", "SG"}): 0,
        frozenset({"EE", "FR", "SG"}): 10,
    }
    assert tally.groups(min_cohort=5) == {
        frozenset({"EE", "FR"}): "< 5",
        frozenset({"EE", "SG"}): 0,
        frozenset({"FR", "SG"}): 0,
        frozenset({"EE", "FR", "SG"}): 10,
    }
    # EE-FR = 12 would give the suppressed 2 as 12 - 10: it is suppressed too.
    assert tally.pairwise(min_cohort=5) == {
        ("EE", "FR"): "suppressed",
        ("EE", "SG"): 10,
        ("FR", "SG"): 10,
    }
    with pytest.raises(ValueError):
        tally.groups(min_cohort=0)


# --------------------------------------------------------------------------- transcript


@pytest.mark.parametrize("reveal", [False, True], ids=["count", "reveal"])
def test_transcript_carries_no_identifier_and_no_single_key_value_past_the_first_hop(
    reveal: bool,
) -> None:
    codes = ("DE", "EE", "FR", "SG")
    sets = planted(codes, seed=11)
    log: list[Relayed] = []
    plan, peers, tally = overlap(sets, reveal=reveal, log=log)
    assert tally.groups() == oracle_groups(sets)

    everything = sorted({item for items in sets.values() for item in items})
    unkeyed = {
        group.hash_to_group(item, dst)
        for item in everything
        for dst in (overlap_protocol.OVERLAP_DST, group.MEMBERSHIP_DST)
    }
    # Every party forgot its key when the overlap closed (the spy below kept a copy).
    assert all(
        peer.party is not None and peer.party._key is None  # noqa: SLF001
        for peer in peers.values()
    )
    assert len(everything) > 50

    to_nodes = [m for m in log if m.sender == "coordinator" and m.hop < len(codes)]
    assert {(m.receiver, m.origin, m.hop) for m in to_nodes} == {
        (relay, origin, depth)
        for origin, route in overlap_protocol.plan_route(codes)
        for depth, relay in enumerate(route, start=1)
    }
    seen: dict[bytes, tuple[str, int]] = {}
    for message in log:
        for item in everything:
            assert item not in message.payload
        if message.hop == len(codes) and message.sender == "coordinator":
            assert reveal and message.receiver == message.origin  # notices only, to the owner
            assert len(message.payload) % overlap_protocol.NOTICE_BYTES == 0
            continue
        assert len(message.payload) % group.POINT_BYTES == 0
        for point in group.split_points(message.payload):
            group.validate_point(point)
            assert point not in unkeyed
            if message.sender == "coordinator":
                # The ring: no point ever reaches two relays, or one relay twice,
                # so no node can compare sets and the relay cannot either.
                assert seen.setdefault(point, (message.origin, message.hop)) == (
                    message.origin,
                    message.hop,
                )
    assert len(seen) > 0

    # Beyond the first hop no relayed point is a single-key value H(y)^k_i.
    single_key = set()
    for code in codes:
        (scalar,) = _KEYS[plan.overlap_id][code]
        single_key.update(
            group.blind_items(everything, scalar, dst=overlap_protocol.OVERLAP_DST, workers=1)
        )
    for message in to_nodes:
        points = set(group.split_points(message.payload))
        if message.hop == 1:
            assert points <= single_key  # the first hop is the origin's own H(y)^k
        else:
            assert not points & single_key


_KEYS: dict[str, dict[str, list[bytes]]] = {}


@pytest.fixture(autouse=True)
def record_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember every overlap key as it is drawn, so the test can compute H(y)^k_i."""
    original = OverlapParty.__init__

    def spy(
        self: OverlapParty, plan: OverlapPlan, jurisdiction: str, *args: object, **kwargs: object
    ) -> None:
        original(self, plan, jurisdiction, *args, **kwargs)  # type: ignore[arg-type]
        key = self._key  # noqa: SLF001
        assert key is not None
        _KEYS.setdefault(plan.overlap_id, {}).setdefault(jurisdiction, []).append(key)

    monkeypatch.setattr(OverlapParty, "__init__", spy)


# --------------------------------------------------------------------------- node refusals


def party(plan: OverlapPlan, code: str, count: int = 5) -> OverlapParty:
    return OverlapParty(plan, code, [wallet(f"{code}-{j}") for j in range(count)], workers=1)


def foreign_batch(count: int) -> bytes:
    return b"".join(
        group.blind_items(
            [wallet(f"x{j}") for j in range(count)],
            group.random_scalar(),
            dst=overlap_protocol.OVERLAP_DST,
            workers=1,
        )
    )


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (bytes(32), "identity element"),
        (b"\xff" * 32, "not a canonical ristretto255 encoding"),
        (
            group.hash_to_group(b"x")[:31] + bytes([group.hash_to_group(b"x")[31] | 0x80]),
            "not a canonical ristretto255 encoding",
        ),
    ],
    ids=["identity", "non-canonical", "high-bit"],
)
def test_relay_rejects_invalid_points_with_their_index(bad: bytes, reason: str) -> None:
    plan = OverlapPlan.new(["EE", "FR", "SG"], reveal=False)
    hop = party(plan, "FR").relay_hop("EE", expected_points=8)
    hop.add(foreign_batch(3))
    batch = foreign_batch(5)
    with pytest.raises(group.InvalidPoint) as raised:
        hop.add(batch[:64] + bad + batch[96:])
    assert raised.value.reason == reason
    assert raised.value.index == 5  # position within the origin's whole set


def test_relay_rejects_a_truncated_batch() -> None:
    plan = OverlapPlan.new(["EE", "FR"], reveal=True)
    hop = party(plan, "FR").relay_hop("EE", expected_points=2)
    with pytest.raises(group.InvalidPoint, match="not a multiple"):
        hop.add(foreign_batch(2)[:-1])


def test_relay_refuses_what_the_plan_does_not_call_for() -> None:
    plan = OverlapPlan.new(["EE", "FR", "SG"], reveal=False)
    fr = party(plan, "FR")
    with pytest.raises(OverlapError, match="own set"):
        fr.relay_hop("FR", 1)
    with pytest.raises(OverlapError, match="not in overlap"):
        fr.relay_hop("XX", 1)
    hop = fr.relay_hop("EE", 2)
    with pytest.raises(OverlapError, match="already relayed"):
        fr.relay_hop("EE", 2)
    with pytest.raises(OverlapError, match="more arrived"):
        hop.add(foreign_batch(3))
    hop.add(foreign_batch(1))
    with pytest.raises(OverlapError, match="1 arrived"):
        hop.finish()
    fr.close()
    with pytest.raises(OverlapError, match="closed"):
        fr.relay_hop("SG", 1)


def test_shuffled_hop_permutes_the_whole_set_and_reveal_hop_keeps_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overlap_protocol, "POINTS_PER_BATCH", 16)
    incoming = [foreign_batch(16), foreign_batch(16), foreign_batch(8)]
    for reveal in (False, True):
        plan = OverlapPlan.new(["EE", "FR"], reveal=reveal)
        fr = party(plan, "FR")
        hop = fr.relay_hop("EE", 40)
        early = [out for batch in incoming for out in hop.add(batch)]
        late = hop.finish()
        key = fr._key  # noqa: SLF001
        assert key is not None
        expected = group.exponentiate(group.split_points(b"".join(incoming)), key, workers=1)
        got = group.split_points(b"".join(early + late))
        assert all(len(b) <= 16 * group.POINT_BYTES for b in early + late)
        if reveal:
            assert late == [] and got == expected
        else:
            assert early == [] and sorted(got) == sorted(expected)
            assert got != expected  # 40! orders; equality has probability 1/40!


def test_learn_shared_checks_the_notices() -> None:
    plan = OverlapPlan.new(["EE", "FR", "SG"], reveal=True)
    fr = party(plan, "FR", count=3)
    record = overlap_protocol._NOTICE.pack  # noqa: SLF001
    with pytest.raises(OverlapError, match="naming this node"):
        fr.learn_shared([record(0, 0b010)])
    with pytest.raises(OverlapError, match="outside the roster"):
        fr.learn_shared([record(0, 0b1000)])
    with pytest.raises(OverlapError, match="position 3 of 3"):
        fr.learn_shared([record(3, 0b001)])
    with pytest.raises(OverlapError, match="twice"):
        fr.learn_shared([record(1, 0b001), record(1, 0b100)])
    with pytest.raises(OverlapError, match="multiple of 12"):
        fr.learn_shared([b"\x00" * 5])
    shared = fr.learn_shared([record(2, 0b101)])
    assert len(shared) == 1 and shared[0].partners == frozenset({"EE", "SG"})
    plan_count = OverlapPlan.new(["EE", "FR"], reveal=False)
    with pytest.raises(OverlapError, match="does not reveal"):
        party(plan_count, "FR").learn_shared([])


def test_tally_rejects_identity_and_incomplete_sets() -> None:
    plan = OverlapPlan.new(["EE", "FR"], reveal=True)
    tally = OverlapTally(plan)
    with pytest.raises(group.InvalidPoint, match="identity") as raised:
        tally.add_final("EE", foreign_batch(2) + bytes(32))
    assert raised.value.index == 2
    tally.add_final("EE", foreign_batch(2))
    with pytest.raises(OverlapError, match="2 points, 3 were sent"):
        tally.close_origin("EE", 3)
    tally.close_origin("EE", 2)
    with pytest.raises(OverlapError, match="already complete"):
        tally.add_final("EE", foreign_batch(1))


def test_plan_route_is_a_ring_and_each_round_a_perfect_matching() -> None:
    codes = ["DE", "EE", "FR", "SG", "NL"]
    routes = dict(overlap_protocol.plan_route(codes))
    assert routes["FR"] == ["SG", "NL", "DE", "EE"]
    assert sorted(route[-1] for route in routes.values()) == sorted(codes)  # one last hop each
    plan = OverlapPlan.new(codes, reveal=False)
    for depth, pairs in enumerate(plan.rounds(), start=1):
        assert sorted(relay for _, relay in pairs) == sorted(codes)
        assert sorted(origin for origin, _ in pairs) == sorted(codes)
        assert all(routes[origin][depth - 1] == relay for origin, relay in pairs)
    with pytest.raises(OverlapError):
        OverlapPlan.new(["EE"], reveal=False)
    with pytest.raises(OverlapError):
        OverlapPlan.new(["EE", "EE"], reveal=False)


def test_many_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overlap_protocol, "POINTS_PER_BATCH", 7)
    sets = planted(("EE", "FR", "SG"), seed=5)
    log: list[Relayed] = []
    _, peers, tally = overlap(sets, reveal=True, log=log)
    assert tally.groups() == oracle_groups(sets)
    assert all(len(m.payload) <= 7 * group.POINT_BYTES for m in log)
    for code in sets:
        assert {s.item: s.partners for s in peers[code].shared} == oracle_shared(sets, code)


@pytest.mark.slow  # a timed run of 180,000 exponentiations
def test_three_times_twenty_thousand_is_fast() -> None:
    sets = synthetic_sets(3, 20_000)
    plan = OverlapPlan.new(list(sets), reveal=True)
    peers = {code: InProcessPeer(code, items) for code, items in sets.items()}
    started = time.perf_counter()
    tally = run_overlap(plan, peers)
    assert time.perf_counter() - started < 45  # ~12 s alone on 2 cores
    assert tally.groups() == oracle_groups(sets)
    assert tally.pairwise() == oracle_pairwise(sets)
    for code in sets:
        assert {s.item: s.partners for s in peers[code].shared} == oracle_shared(sets, code)

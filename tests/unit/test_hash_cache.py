"""The coordinator's in-memory cache of hashed watchlist items, alone and inside a match.

A repeat match through the same cache hashes nothing and answers exactly as an
uncached one; the cache is bounded (least recently used out first) and forgets
everything on `clear`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from coordinator.epoch_cache import FilterCache
from coordinator.hash_cache import HashCache
from coordinator.match import MatchQuery, run_match
from coordinator.pools import PoolStore, prepare_pools
from coordinator.results import NodeResult
from fedtrace import blinding, group, parallel, psi
from fedtrace.wire import Level
from tests.unit.test_match_in_memory import InMemoryFederation, eth

NODES = ("EE", "LV")


class CountingHash:
    """Stands in for `group.hash_to_group_many` and counts the items it is asked to hash."""

    def __init__(self) -> None:
        self.hashed = 0
        self._real = group.hash_to_group_many

    def __call__(self, items: Sequence[bytes], dst: bytes = group.MEMBERSHIP_DST) -> list[bytes]:
        self.hashed += len(items)
        return self._real(items, dst)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingHash:
    counter = CountingHash()
    monkeypatch.setattr(group, "hash_to_group_many", counter)
    return counter


def _items(count: int, seed: int = 0) -> list[bytes]:
    return [b"item-%d-%d" % (seed, index) for index in range(count)]


def test_points_are_hash_to_group_in_order_and_hashed_once(counting: CountingHash) -> None:
    cache = HashCache()
    items = _items(40)
    first = cache.points(items)
    assert first == [group.hash_to_group(item) for item in items]
    assert counting.hashed == 40 and len(cache) == 40
    again = cache.points(list(reversed(items)) + items[:3])
    assert again == list(reversed(first)) + first[:3]
    assert counting.hashed == 40  # nothing hashed twice
    mixed = cache.points(items[:5] + _items(3, seed=1) + items[:1])
    assert mixed[:5] == first[:5] and mixed[-1] == first[0]
    assert mixed[5:8] == [group.hash_to_group(item) for item in _items(3, seed=1)]
    assert counting.hashed == 43
    assert cache.points([]) == []


def test_repeated_items_in_one_call_are_hashed_once(counting: CountingHash) -> None:
    cache = HashCache()
    item = b"same"
    assert cache.points([item, item, item]) == [group.hash_to_group(item)] * 3
    assert counting.hashed == 1


def test_the_cache_is_bounded_and_forgets_the_least_recently_used(counting: CountingHash) -> None:
    cache = HashCache(capacity=4)
    a, b, c, d, e = _items(5)
    cache.points([a, b, c, d])
    cache.points([a])  # a is now the most recently used; b the least
    cache.points([e])
    assert len(cache) == 4
    counting.hashed = 0
    cache.points([a, c, d, e])
    assert counting.hashed == 0
    cache.points([b])
    assert counting.hashed == 1
    big = _items(10, seed=2)
    assert cache.points(big) == [group.hash_to_group(item) for item in big]
    assert len(cache) == 4


def test_zero_capacity_remembers_nothing_and_clear_forgets(counting: CountingHash) -> None:
    items = _items(6)
    none = HashCache(capacity=0)
    assert none.points(items) == none.points(items)
    assert counting.hashed == 12 and len(none) == 0
    cache = HashCache()
    cache.points(items)
    cache.points(items)
    assert counting.hashed == 18
    cache.clear()
    assert len(cache) == 0
    cache.points(items)
    assert counting.hashed == 24
    with pytest.raises(ValueError, match="negative"):
        HashCache(capacity=-1)


def test_a_query_blinded_from_cached_hashes_unblinds_to_them() -> None:
    items = _items(30)
    hashed = HashCache().points(items)
    key = group.random_scalar()
    query = psi.BlindedQuery(items, hashed=hashed, workers=1)
    fresh = psi.BlindedQuery(items, workers=1)
    assert query.blinded != fresh.blinded  # a new scalar per query either way
    evaluated = psi.evaluate(query.blinded, key, workers=1)
    assert query.unblind(evaluated) == group.exponentiate(hashed, key, workers=1)
    assert fresh.unblind(psi.evaluate(fresh.blinded, key, workers=1)) == query.unblind(evaluated)
    with pytest.raises(ValueError, match="hashed points"):
        psi.BlindedQuery(items, hashed=hashed[:-1])


def _policy(code: str) -> str:
    return (
        f'jurisdiction = "{code}"\nversion = "v1"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 3000\n'
    )


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> InMemoryFederation:
    memory = InMemoryFederation.create(tmp_path_factory.mktemp("hash-cache"))
    for seed, code in enumerate(NODES):
        rng = random.Random(seed + 31)
        memory.add_node(code, _policy(code), {eth(rng.randrange(1, 600)) for _ in range(200)})
    return memory


def _match(
    memory: InMemoryFederation,
    items: list[str],
    pools: PoolStore | None,
    hashes: HashCache | None,
) -> dict[str, NodeResult]:
    query = MatchQuery(
        dataset="wallets",
        case_ref="C-1",
        legal_basis="MLA",
        kind="wallet",
        items=tuple(items),
        investigator="FR",
        disclosure=Level.MEMBERSHIP,
    )
    results = run_match(
        memory.federation("FR"),
        query,
        memory.connections("FR"),
        memory.ca_pem,
        cache=FilterCache(None),
        pools=pools,
        hashes=hashes,
    )
    return {result.node: result for result in results}


def _answers(
    results: dict[str, NodeResult],
) -> dict[str, tuple[int | None, tuple[str, ...] | None]]:
    return {
        node: (result.match_count, tuple(result.matched) if result.matched is not None else None)
        for node, result in results.items()
    }


@pytest.mark.parametrize("additive", [False, True], ids=["multiplicative", "additive"])
def test_a_repeat_match_hashes_nothing_and_answers_the_same(
    memory: InMemoryFederation, counting: CountingHash, additive: bool
) -> None:
    rng = random.Random(5)
    items = list(dict.fromkeys(eth(rng.randrange(1, 700)) for _ in range(120)))
    pools = PoolStore(None) if additive else None
    if pools is not None:
        prepare_pools(
            memory.federation("FR"),
            "wallets",
            3 * len(items),
            memory.connections("FR"),
            memory.ca_pem,
            pools,
            workers=1,
        )
    uncached = _answers(_match(memory, items, pools, None))
    assert any(count for count, _ in uncached.values())
    hashed_before = counting.hashed
    cache = HashCache()
    results = _match(memory, items, pools, cache)
    modes = {str(r.signature["transcript"]["blinding"]) for r in results.values() if r.signature}
    assert modes == {"additive" if additive else "multiplicative"}
    first = _answers(results)
    assert counting.hashed - hashed_before == len(items)
    second = _answers(_match(memory, items, pools, cache))
    assert counting.hashed - hashed_before == len(items)  # the repeat hashed nothing
    assert first == second == uncached


@pytest.mark.slow  # starts the worker pool
def test_warm_pool_paths_match_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the pool running, mid-sized batches use it, and answer exactly as in process."""
    items = _items(group.WARM_PARALLEL_THRESHOLD + 7, seed=3)
    key = group.random_scalar()
    hashed = group.hash_to_group_many(items, workers=1)
    evaluated = group.exponentiate(hashed, key, workers=1)
    group.exponentiate(hashed[:20], key, workers=2)  # warms nothing: below every threshold
    monkeypatch.setattr(group, "PARALLEL_THRESHOLD", 8)
    group.exponentiate(hashed[:20], key, workers=2)  # starts the pool
    monkeypatch.undo()
    assert parallel.pool_ready(2)
    assert group.exponentiate(hashed, key, workers=2) == evaluated
    monkeypatch.setattr(group, "WARM_HASH_THRESHOLD", 8)
    assert group.hash_to_group_many(items, workers=2) == hashed
    # The additive online step (add, then subtract) on the pool, tampering caught by index.
    monkeypatch.setattr(blinding, "ONLINE_PARALLEL_THRESHOLD", 8)
    monkeypatch.setattr(blinding.parallel, "default_workers", lambda workers: 2)
    binding = blinding.PoolBinding("EE", "wallets", "e1", group.multiply_base(key))
    count = 40
    pool = blinding.prepare_pool(binding, 2 * count, workers=1)
    sent, entries = blinding.blind_hashed(hashed[:count], pool, binding)
    expected = [group.add_points(p, e.masked) for p, e in zip(hashed, entries, strict=False)]
    assert sent == expected
    answers = psi.evaluate(sent, group.invert_scalar(key), workers=1)
    assert blinding.unblind(answers, entries) == group.exponentiate(
        hashed[:count], group.invert_scalar(key), workers=1
    )
    tampered = list(answers)
    tampered[count - 3] = b"\xff" * 32
    with pytest.raises(group.InvalidPoint) as raised:
        blinding.unblind(tampered, entries)
    assert raised.value.index == count - 3
    tampered[count - 9] = b"\x01" * 31
    with pytest.raises(group.InvalidPoint) as raised:
        blinding.unblind(tampered, entries)
    assert raised.value.index == count - 9 and "wrong length" in raised.value.reason

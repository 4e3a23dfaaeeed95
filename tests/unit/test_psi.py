"""Property tests for the membership exchange, checked against plain sets and openmined-psi.

Every message crosses a byte boundary (``b"".join`` then ``split_points``, and the
filter through ``GolombFilter.from_bytes``) as it would on the wire.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedtrace import group, psi
from fedtrace.gcs import GolombFilter, build_filter

openmined = pytest.importorskip("private_set_intersection.python")

OPENMINED_FPR = 1e-9


def wire(points: list[bytes]) -> list[bytes]:
    """Serialise and parse a point list as the transport would."""
    return group.split_points(b"".join(points))


def node_filter(items: list[bytes], key: bytes) -> GolombFilter:
    table = psi.build_table(items, key, workers=1)
    built = build_filter(wire(table))
    return GolombFilter.from_bytes(built.item_count, built.remainder_bits, bytes(built.data))


def exchange(query_items: list[bytes], node_items: list[bytes]) -> list[bool]:
    key = group.random_scalar()
    published = node_filter(node_items, key)
    query = psi.BlindedQuery(query_items, workers=1)
    evaluated = psi.evaluate(wire(query.blinded), key, workers=1)
    unblinded = query.unblind(wire(evaluated))
    return psi.membership(unblinded, published)


def openmined_hits(query_items: list[bytes], node_items: list[bytes]) -> set[int]:
    if not query_items or not node_items:
        return set()
    client = openmined.client.CreateWithNewKey(True)
    server = openmined.server.CreateWithNewKey(True)
    query = [item.decode() for item in query_items]
    setup = openmined.ServerSetup()
    setup.ParseFromString(
        server.CreateSetupMessage(
            OPENMINED_FPR,
            len(query),
            [item.decode() for item in node_items],
            openmined.DataStructure.GCS,
        ).SerializeToString()
    )
    request = openmined.Request()
    request.ParseFromString(client.CreateRequest(query).SerializeToString())
    response = openmined.Response()
    response.ParseFromString(server.ProcessRequest(request).SerializeToString())
    return set(client.GetIntersection(setup, response))


def universe_items(indices: list[int]) -> list[bytes]:
    return [f"0x{index:040x}".encode() for index in indices]


@settings(max_examples=40, deadline=None)
@given(
    query=st.lists(st.integers(0, 6_000), max_size=1_500),
    node=st.lists(st.integers(0, 6_000), max_size=1_500),
)
@example(query=list(range(0, 5_000)), node=list(range(2_500, 7_500)))
@example(query=[], node=[1, 2, 3])
@example(query=[1, 2, 3], node=[])
@example(query=[], node=[])
@example(query=[7, 7, 8], node=[7, 7, 7])
@pytest.mark.slow  # Hypothesis over thousands of items, against openmined-psi too
def test_membership_matches_sets_and_openmined(query: list[int], node: list[int]) -> None:
    query_items, node_items = universe_items(query), universe_items(node)
    found = exchange(query_items, node_items)
    expected = [item in set(node_items) for item in query_items]
    assert found == expected
    matched = {index for index, hit in enumerate(found) if hit}
    assert matched == openmined_hits(query_items, node_items)


@settings(max_examples=10, deadline=None)
@given(query=st.sets(st.integers(0, 3_000), max_size=400), node=st.sets(st.integers(0, 3_000)))
def test_cardinality_with_shuffling(query: set[int], node: set[int]) -> None:
    query_items, node_items = universe_items(sorted(query)), universe_items(sorted(node))
    key = group.random_scalar()
    published = node_filter(node_items, key)
    blinded = psi.BlindedQuery(query_items, workers=1)
    answer = psi.shuffled(psi.evaluate(wire(blinded.blinded), key, workers=1))
    assert sorted(answer) == sorted(psi.evaluate(blinded.blinded, key, workers=1))
    assert psi.intersection_size(blinded.unblind(wire(answer)), published) == len(query & node)


def test_shuffled_is_a_permutation_and_moves_things() -> None:
    points = [group.hash_to_group(bytes([i])) for i in range(64)]
    shuffled = psi.shuffled(points)
    assert sorted(shuffled) == sorted(points)
    assert shuffled != points  # 1/64! chance of a false failure
    assert points == [group.hash_to_group(bytes([i])) for i in range(64)]


def test_table_is_shuffled_and_keyed() -> None:
    items = universe_items(list(range(200)))
    key = group.random_scalar()
    table = psi.build_table(items, key, workers=1)
    in_order = group.blind_items(items, key, workers=1)
    assert sorted(table) == sorted(in_order) and table != in_order
    assert set(psi.build_table(items, group.random_scalar())).isdisjoint(table)


def test_fresh_scalar_per_query() -> None:
    items = universe_items([1, 2, 3])
    assert set(psi.BlindedQuery(items).blinded).isdisjoint(psi.BlindedQuery(items).blinded)
    assert "items" in repr(psi.BlindedQuery(items)) and "scalar" not in repr(psi.BlindedQuery([]))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: bytes(32),
        lambda p: b"\xff" * 32,
        lambda p: p[:31] + bytes([p[31] | 0x80]),
        lambda p: p[:31],
    ],
    ids=["identity", "all-ff", "high-bit", "short"],
)
def test_unblind_rejects_tampered_point(tamper: object) -> None:
    assert callable(tamper)
    key = group.random_scalar()
    query = psi.BlindedQuery(universe_items([1, 2, 3, 4]), workers=1)
    evaluated = psi.evaluate(query.blinded, key)
    evaluated[2] = tamper(evaluated[2])
    with pytest.raises(group.InvalidPoint) as raised:
        query.unblind(evaluated)
    assert raised.value.index == 2


def test_evaluate_rejects_tampered_query() -> None:
    query = psi.BlindedQuery(universe_items([1, 2]), workers=1)
    with pytest.raises(group.InvalidPoint) as raised:
        psi.evaluate([query.blinded[0], bytes(32)], group.random_scalar())
    assert raised.value.index == 1


def test_unblind_rejects_wrong_length_answer() -> None:
    query = psi.BlindedQuery(universe_items([1, 2, 3]), workers=1)
    evaluated = psi.evaluate(query.blinded, group.random_scalar())
    with pytest.raises(ValueError, match="3 blinded items"):
        query.unblind(evaluated[:2])

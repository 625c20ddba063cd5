"""Which fragments each rank writes after a DDP predict: pure arithmetic, checked exhaustively."""

from __future__ import annotations

import itertools

import pytest

from lance_lightning.writer.fragments import fragment_shares


def check(physical_rows: dict[int, int], world_size: int) -> list[list[int]]:
    shares = fragment_shares(physical_rows, world_size)
    assert len(shares) == world_size
    # every fragment exactly once, and the ranks' shares follow each other in fragment order
    assert [f for share in shares for f in share] == sorted(physical_rows)
    total = sum(physical_rows.values())
    largest = max(physical_rows.values(), default=0)
    for share in shares:
        # a rank gets about its part of the rows: never more than its part plus one fragment
        assert sum(physical_rows[f] for f in share) <= total / world_size + largest
    return shares


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_every_fragment_goes_to_one_rank_in_order_and_shares_are_balanced(world_size):
    for count in range(0, 7):
        for sizes in itertools.product([0, 1, 5, 100], repeat=count):
            ids = [3 * i + 1 for i in range(count)]  # ids need not be 0..n-1 (deleted fragments)
            check(dict(zip(ids, sizes)), world_size)


def test_equal_fragments_are_dealt_evenly():
    assert check({i: 1000 for i in range(8)}, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert check({i: 1000 for i in range(3)}, 2) == [[0], [1, 2]]  # the middle one's middle row is in rank 1's half


def test_a_fragment_goes_to_the_rank_holding_its_middle_row():
    assert check({0: 1_000_000}, 4) == [[], [], [0], []]
    assert check({0: 10, 1: 100, 2: 10}, 2) == [[0], [1, 2]]
    assert check({0: 10, 1: 100, 2: 10, 3: 100}, 2) == [[0, 1], [2, 3]]


def test_a_world_size_below_one_is_refused():
    with pytest.raises(ValueError, match="world_size"):
        fragment_shares({0: 10}, 0)

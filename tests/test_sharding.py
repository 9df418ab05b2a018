"""Shards are reproducible index ranges that cover every example exactly once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from int8flow.tasks.data.sharding import batch_ranges, shard_range


@given(total=st.integers(min_value=0, max_value=5000), shards=st.integers(min_value=1, max_value=64))
def test_shards_partition_the_examples_in_order(total: int, shards: int) -> None:
    ranges = [shard_range(total, shards, index) for index in range(shards)]
    assert [i for r in ranges for i in r] == list(range(total))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_known_split() -> None:
    assert [shard_range(10, 4, i) for i in range(4)] == [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]


@pytest.mark.parametrize(("total", "shards", "index"), [(10, 0, 0), (10, 3, 3), (10, 3, -1), (-1, 1, 0)])
def test_shards_that_do_not_exist_are_refused(total: int, shards: int, index: int) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        shard_range(total, shards, index)


def test_batches_cover_a_shard_with_a_short_last_batch() -> None:
    assert batch_ranges(range(3, 10), 3) == [range(3, 6), range(6, 9), range(9, 10)]
    with pytest.raises(ValueError, match="batch_size=0"):
        batch_ranges(range(3), 0)


def test_contiguous_shares_keep_order_sizes_and_never_leave_one_empty() -> None:
    from int8flow.tasks.data.sharding import contiguous_shares

    assert contiguous_shares("abcdefg", 3) == [("a", "b", "c"), ("d", "e"), ("f", "g")]
    assert contiguous_shares("ab", 5) == [("a",), ("b",)]
    assert contiguous_shares("", 4) == []

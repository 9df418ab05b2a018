"""Deterministic shards: contiguous index ranges computed from the settings alone.

Any worker can compute its own range without asking anyone, and a re-run of a shard reads exactly
the same examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def shard_range(total: int, shards: int, index: int) -> range:
    """The examples of shard ``index`` of ``shards``: sizes differ by at most one, earlier ones larger."""
    if total < 0 or shards < 1 or not 0 <= index < shards:
        raise ValueError(f"shard {index} of {shards} over {total} examples does not exist")
    base, extra = divmod(total, shards)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def contiguous_shares(items: Sequence[T], count: int) -> list[tuple[T, ...]]:
    """``items`` in at most ``count`` contiguous, non-empty shares (``shard_range``'s sizes), in order."""
    shares = min(len(items), count)
    return [
        tuple(items[part.start : part.stop]) for part in (shard_range(len(items), shares, i) for i in range(shares))
    ]


def batch_ranges(examples: range, batch_size: int) -> list[range]:
    """Consecutive batches of a shard; the last may be short."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    return [examples[start : start + batch_size] for start in range(0, len(examples), batch_size)]

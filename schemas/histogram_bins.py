"""The bin counts a histogram may have: part of the partial-file contract, so one rule everywhere.

Histograms merge exactly only when their grids nest, which needs a power-of-two bin count; the
bounds keep one tensor's histogram between a coarse grid (16 bins) and half a megabyte of counts
(65,536 int64 bins). The kernels, the run configuration (CLI, Airflow form) and the shard demo all
check bin counts with ``check_num_bins`` and offer ``NUM_BINS_CHOICES``.
"""

from __future__ import annotations

from numbers import Integral

MIN_NUM_BINS_EXPONENT = 4
MAX_NUM_BINS_EXPONENT = 16
NUM_BINS_CHOICES: tuple[int, ...] = tuple(2**power for power in range(MIN_NUM_BINS_EXPONENT, MAX_NUM_BINS_EXPONENT + 1))
DEFAULT_NUM_BINS = 8192


def check_num_bins(num_bins: object) -> int:
    """``num_bins`` as an int, or a ValueError when it would break exact merging."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, Integral) or int(num_bins) not in NUM_BINS_CHOICES:
        raise ValueError(
            f"num_bins={num_bins!r}: the histogram bin count must be a power of two from {NUM_BINS_CHOICES[0]} to "
            f"{NUM_BINS_CHOICES[-1]} (e.g. 2048, 8192, 16384) so that histograms merge exactly"
        )
    return int(num_bins)

"""Streaming histograms: any split, any order, any merge tree gives the same bits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from int8flow.kernels.histogram import (
    HOST_CHUNK,
    ZERO_EXPONENT,
    Histogram,
    NonFiniteValuesError,
    bin_index,
    merge_all,
    range_exponent,
)
from int8flow.schemas.histogram_bins import check_num_bins


def split_merge(values: np.ndarray, cuts: list[int], order: list[int], num_bins: int) -> Histogram:
    parts = np.split(values, sorted(set(cuts)))
    histograms = [Histogram.of(part, num_bins) for part in parts]
    return merge_all([histograms[i % len(histograms)] for i in order if i < len(histograms)] or histograms)


def test_bins_follow_the_documented_grid() -> None:
    histogram = Histogram.of(np.array([-0.999, -0.25, 0.0, 0.3, 0.99]), 16)
    assert histogram.exponent == 0 and histogram.signed
    assert histogram.bin_width == 2.0 / 16
    expected = np.zeros(16, dtype=np.int64)
    for index in (0, 6, 8, 10, 15):
        expected[index] += 1
    np.testing.assert_array_equal(histogram.counts, expected)
    assert (histogram.min, histogram.max, histogram.count) == (-0.999, 0.99, 5)
    assert Histogram.of(np.array([1.0]), 16).exponent == 1  # max|x| == 2**e moves up a range


def test_non_negative_values_use_the_half_range_grid() -> None:
    histogram = Histogram.of(np.array([0.0, 0.5, 3.9]), 16)
    assert not histogram.signed and histogram.exponent == 2
    assert histogram.bin_width == 4.0 / 16
    assert histogram.counts[0] == 1 and histogram.counts[2] == 1 and histogram.counts[15] == 1


def test_exponent_is_strictly_above_the_largest_magnitude() -> None:
    assert range_exponent(1.0) == 1
    assert range_exponent(0.999) == 0
    assert range_exponent(2.0**-1074) == -1073
    assert range_exponent(0.0) == ZERO_EXPONENT


@given(
    values=st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=True), min_size=1, max_size=300
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    num_bins=st.sampled_from([16, 64, 1024]),
)
@settings(max_examples=300, deadline=None)
def test_any_split_in_any_order_merges_to_the_one_pass_histogram(
    values: list[float], cuts: list[int], seed: int, num_bins: int
) -> None:
    array = np.asarray(values)
    whole = Histogram.of(array, num_bins)
    parts = [Histogram.of(part, num_bins) for part in np.split(array, sorted({c % (len(values) + 1) for c in cuts}))]
    rng = np.random.default_rng(seed)
    rng.shuffle(parts)
    # An unbalanced tree and a balanced tree of merges must agree too.
    assert merge_all(parts).same_as(whole)
    while len(parts) > 1:
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    assert parts[0].same_as(whole)


@given(
    scale_exponent=st.integers(min_value=-30, max_value=30),
    size=st.integers(min_value=1, max_value=2000),
    shards=st.integers(min_value=1, max_value=9),
    batch=st.integers(min_value=1, max_value=700),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    positive=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_shards_of_batches_match_one_pass_for_activation_like_data(
    scale_exponent: int, size: int, shards: int, batch: int, seed: int, positive: bool
) -> None:
    rng = np.random.default_rng(seed)
    values = rng.standard_cauchy(size) * 2.0**scale_exponent
    if positive:
        values = np.maximum(values, 0.0).astype(np.float32)
    whole = Histogram.of(values)
    shard_histograms = []
    for shard in np.array_split(values, shards):
        running = Histogram.empty()
        for start in range(0, len(shard), batch):
            running = running.merge(Histogram.of(shard[start : start + batch]))
        shard_histograms.append(running)
    assert merge_all(shard_histograms[::-1]).same_as(whole)


def test_negative_values_too_small_to_scale_stay_below_zero() -> None:
    """Scaling 5e-324 down underflows to -0.0; the bin must still be the one just below zero."""
    values = np.array([8.0, -5e-324])
    whole = Histogram.of(values, 16)
    assert whole.counts[7] == 1 and whole.counts[12] == 1
    assert Histogram.of(values[:1], 16).merge(Histogram.of(values[1:], 16)).same_as(whole)
    tiny32 = Histogram.of(np.array([3.0e4, -1e-45], dtype=np.float32), 16)
    assert tiny32.counts[7] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-42, 1e-30, 1.0, 3e3, 1e5, 1e30])
@pytest.mark.parametrize("num_bins", [256, 8192])
def test_the_chunked_host_path_bins_as_the_device_formula(dtype: type, scale: float, num_bins: int) -> None:
    """NumPy bins HOST_CHUNK values at a time by multiplying; the device path (ldexp on the whole
    tensor) is the definition. Sizes not a multiple of the chunk, subnormals, and the downscale of
    large magnitudes, where negative values underflow to -0.0, all land in the same bins."""
    rng = np.random.default_rng(3)
    values = (rng.standard_normal(2 * HOST_CHUNK + 17) * scale).astype(dtype)
    for tensor in (values, np.abs(values), np.concatenate([values, np.array([-1e-45, 0.0], dtype)])):
        histogram = Histogram.of(tensor, num_bins)
        shift = num_bins.bit_length() - 1 - histogram.exponent - int(histogram.signed)
        offset = num_bins // 2 if histogram.signed else 0
        expected = np.bincount(bin_index(tensor, shift, offset), minlength=num_bins)
        assert np.array_equal(histogram.counts, expected) and histogram.count == tensor.size


def test_merging_non_negative_into_signed_pairs_bins_exactly() -> None:
    positive = np.array([0.0, 0.1, 0.2, 0.7, 1.5])
    negative = np.array([-0.3])
    merged = Histogram.of(positive, 64).merge(Histogram.of(negative, 64))
    assert merged.same_as(Histogram.of(np.concatenate([positive, negative]), 64))
    assert merged.signed and merged.exponent == 1


def test_all_zero_histogram_never_wins_a_merge() -> None:
    zeros = Histogram.of(np.zeros(10), 32)
    assert zeros.exponent == ZERO_EXPONENT and zeros.counts[0] == 10
    tiny = Histogram.of(np.array([-(2.0**-1070)]), 32)
    both = zeros.merge(tiny)
    assert both.same_as(Histogram.of(np.concatenate([np.zeros(10), [-(2.0**-1070)]]), 32))
    assert both.counts[16] == 10 and both.counts[8] == 1


def test_empty_histogram_is_the_merge_identity() -> None:
    histogram = Histogram.of(np.array([1.0, -2.0]), 32)
    assert Histogram.empty(32).merge(histogram) is histogram
    assert histogram.merge(Histogram.empty(32)) is histogram
    assert Histogram.of(np.array([]), 32).count == 0


def test_counts_are_int64_even_for_float_inputs() -> None:
    histogram = Histogram.of(np.ones((3, 4), dtype=np.float16), 32)
    assert histogram.counts.dtype == np.int64 and histogram.count == 12


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_their_counts(bad: float) -> None:
    with pytest.raises(NonFiniteValuesError) as error:
        Histogram.of(np.array([1.0, bad, bad]))
    assert error.value.nan_count + error.value.inf_count == 2
    assert "non-finite" in str(error.value)


@pytest.mark.parametrize("num_bins", [0, 8, 100, 8001, 3.0, True, 2**17])
def test_bin_counts_that_cannot_merge_exactly_are_refused(num_bins: object) -> None:
    with pytest.raises(ValueError, match="power of two"):
        check_num_bins(num_bins)  # type: ignore[arg-type]


def test_histograms_with_different_bin_counts_do_not_merge() -> None:
    with pytest.raises(ValueError, match="same num_bins"):
        Histogram.of(np.ones(3), 32).merge(Histogram.of(np.ones(3), 64))


def test_regridding_to_a_finer_grid_is_refused() -> None:
    histogram = Histogram.of(np.array([-3.0, 3.0]), 32)
    with pytest.raises(ValueError, match="finer grid"):
        histogram.regridded(histogram.exponent - 1, True)


def test_abs_counts_fold_the_negative_half() -> None:
    histogram = Histogram.of(np.array([-0.9, -0.1, 0.1, 0.05, 0.9]), 16)
    folded = histogram.abs_counts()
    assert folded.shape == (8,) and folded.sum() == 5
    assert folded[0] == 3 and folded[7] == 2


def test_resolution_keeps_at_least_a_quarter_of_the_bins_on_the_data() -> None:
    for amax in (1.0, 1.0001, 1.999, 1e-5, 3e7):
        histogram = Histogram.of(np.array([-amax, amax]), 8192)
        assert histogram.abs_max / histogram.bin_width >= 8192 / 4
        assert math.ldexp(1.0, histogram.exponent) > amax

"""Threshold methods against their oracles: plain loops of the published algorithms, numpy, theory."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import distributions
from oracles import entropy_threshold_loop, mse_threshold_loop

from int8flow.kernels.histogram import Histogram
from int8flow.kernels.thresholds import (
    METHOD_FUNCTIONS,
    METHODS,
    ZERO_TENSOR_THRESHOLD,
    EmptyHistogramError,
    ThresholdSettings,
    choose_thresholds,
    entropy_thresholds,
    extreme_bins,
    flatten_spikes,
    method_function,
    mse_threshold,
    percentile_threshold,
    relative_quantization_error,
)

SMALL = distributions(30_000, seed=7)


def oracle_entropy(histogram: Histogram, num_quantized_bins: int, spike_fix: bool) -> tuple[float, float]:
    counts = histogram.counts
    if spike_fix:
        counts = flatten_spikes(counts[None, :], [extreme_bins(histogram)])[0]
    return entropy_threshold_loop(counts, histogram.signed, histogram.bin_width, histogram.abs_max, num_quantized_bins)


@pytest.mark.parametrize("spike_fix", [False, True])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_entropy_matches_the_published_loop_within_one_bin(name: str, spike_fix: bool) -> None:
    histogram = Histogram.of(SMALL[name], 1024)
    expected, expected_kl = oracle_entropy(histogram, 255, spike_fix)
    chosen = entropy_thresholds({name: histogram}, 255, spike_fix)[name]
    assert abs(chosen.threshold - expected) <= histogram.bin_width
    if chosen.threshold == expected:
        assert chosen.divergence == pytest.approx(expected_kl, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("num_quantized_bins", [128, 255])
@pytest.mark.parametrize("name", ["gaussian", "relu", "heavy_outliers"])
def test_entropy_matches_the_loop_at_full_resolution(name: str, num_quantized_bins: int) -> None:
    histogram = Histogram.of(SMALL[name], 2048 if num_quantized_bins == 128 else 8192)
    expected, _ = oracle_entropy(histogram, num_quantized_bins, True)
    chosen = entropy_thresholds({name: histogram}, num_quantized_bins, True)[name]
    assert abs(chosen.threshold - expected) <= histogram.bin_width


def test_entropy_is_the_same_batched_or_one_tensor_at_a_time() -> None:
    histograms = {name: Histogram.of(values, 1024) for name, values in SMALL.items()}
    batched = entropy_thresholds(histograms, 255, True)
    for name, histogram in histograms.items():
        assert entropy_thresholds({name: histogram}, 255, True)[name] == batched[name]


def test_entropy_handles_mxnet_style_odd_histograms() -> None:
    """The search itself is layout-agnostic: MXNet's 8001-bin zero-centred layout works too."""
    from oracles import kl_for_slice

    from int8flow.kernels.kl_search import kl_divergence_curve

    values = SMALL["laplacian"]
    amax = np.abs(values).max()
    counts, _ = np.histogram(values, bins=801, range=(-amax, amax))
    half = np.arange(255 // 2, 801 // 2 + 1, 37)
    starts, stops = 400 - half, 400 + half + 1
    curve = kl_divergence_curve(counts[None, :], starts, stops, 255)[0]
    expected = [kl_for_slice(counts, int(a), int(b), 255) for a, b in zip(starts, stops)]
    np.testing.assert_allclose(curve, expected, rtol=1e-8)


@pytest.mark.parametrize(
    ("zero_fraction", "body"),
    [(0.5, "relu"), (0.9, "relu"), (0.5, "relu6")],
)
def test_zero_spike_fix_keeps_zero_heavy_thresholds_at_the_data(zero_fraction: float, body: str) -> None:
    rng = np.random.default_rng(11)
    size = 200_000
    magnitudes = np.abs(rng.laplace(0, 1, size)) if body == "relu" else np.clip(np.abs(rng.normal(0, 2.5, size)), 0, 6)
    values = np.where(rng.random(size) < zero_fraction, 0.0, magnitudes)
    histogram = Histogram.of(values)
    p99 = float(np.percentile(values[values > 0], 99))
    fixed = entropy_thresholds({"t": histogram}, 255, True)["t"].threshold
    assert p99 <= fixed <= histogram.abs_max


def test_zero_spike_drags_the_published_search_far_below_the_data() -> None:
    """The failure the fix exists for (REFERENCE.md section 6), reproduced without it."""
    rng = np.random.default_rng(11)
    values = np.where(rng.random(200_000) < 0.9, 0.0, np.abs(rng.laplace(0, 1, 200_000)))
    histogram = Histogram.of(values)
    unfixed = entropy_thresholds({"t": histogram}, 255, False)["t"].threshold
    fixed = entropy_thresholds({"t": histogram}, 255, True)["t"].threshold
    assert unfixed < fixed / 10


def test_spikes_get_their_neighbours_mean() -> None:
    unsigned = np.array([[1000, 40, 44, 36, 40, 400, 38, 42, 30, 5]])
    np.testing.assert_array_equal(flatten_spikes(unsigned, [(9, 9)]), [[42, 40, 44, 36, 40, 39, 38, 42, 30, 5]])
    signed = np.array([[0, 2, 30, 31, 500, 29, 3, 0]])
    np.testing.assert_array_equal(flatten_spikes(signed, [(1, 6)]), [[0, 2, 30, 31, 24, 29, 3, 0]])


def test_saturation_spikes_at_min_and_max_are_kept() -> None:
    saturated = np.array([[0, 400, 30, 31, 33, 29, 30, 400]])
    np.testing.assert_array_equal(flatten_spikes(saturated, [(1, 7)]), saturated)
    relu6 = Histogram.of(np.clip(np.random.default_rng(0).normal(2, 3, 10_000), 0, 6))
    low, high = extreme_bins(relu6)
    assert high == int(6.0 / relu6.bin_width) and low == high  # a non-negative min is the zero spike


def test_a_histogram_the_step_would_empty_is_kept() -> None:
    only_zero_bin = np.array([[7, 0, 0, 0]])
    np.testing.assert_array_equal(flatten_spikes(only_zero_bin, [(3, 3)]), only_zero_bin)


def test_constant_background_spikes_do_not_drag_the_threshold_down() -> None:
    """Per-channel constants from a constant input region (MNIST background) after ReLU."""
    rng = np.random.default_rng(5)
    size = 400_000
    body = np.abs(rng.laplace(0, 0.8, size))
    spikes = rng.choice(np.linspace(0.05, 0.6, 10), size)
    kind = rng.random(size)
    values = np.where(kind < 0.4, 0.0, np.where(kind < 0.65, spikes, body))
    histogram = Histogram.of(values)
    p99 = float(np.percentile(body, 99))
    assert entropy_thresholds({"t": histogram}, 255, True)["t"].threshold >= p99
    assert entropy_thresholds({"t": histogram}, 255, False)["t"].threshold < p99 / 2


@pytest.mark.parametrize("name", sorted(SMALL))
def test_naive_is_the_largest_magnitude(name: str) -> None:
    values = SMALL[name]
    choice = choose_thresholds({name: Histogram.of(values)}, ThresholdSettings(method="naive"))[name]
    expected = float(np.abs(values).max()) or ZERO_TENSOR_THRESHOLD
    assert choice.threshold == expected


@pytest.mark.parametrize("percentile", [50.0, 99.0, 99.99, 100.0])
@pytest.mark.parametrize("name", ["gaussian", "laplacian", "relu", "heavy_outliers", "float32_small"])
def test_percentile_is_exact_to_one_bin(name: str, percentile: float) -> None:
    values = SMALL[name]
    histogram = Histogram.of(values)
    chosen = percentile_threshold(histogram, percentile).threshold
    exact = float(np.percentile(np.abs(values.astype(np.float64)), percentile, method="inverted_cdf"))
    assert exact <= chosen <= exact + histogram.bin_width
    assert chosen <= histogram.abs_max


@pytest.mark.parametrize("name", ["gaussian", "relu", "heavy_outliers", "relu6"])
def test_mse_matches_the_direct_sum(name: str) -> None:
    histogram = Histogram.of(SMALL[name], 256)
    expected = mse_threshold_loop(histogram.abs_counts(), histogram.bin_width, histogram.abs_max)
    assert abs(mse_threshold(histogram).threshold - expected) <= histogram.bin_width


def test_mse_finds_the_analytic_optimum_of_a_laplace_tensor() -> None:
    """Expected error of a Laplace(b) tensor clipped at t: 2 b^2 exp(-t/b) + (t/127)^2/12 (ACIQ)."""
    scale = 0.5
    values = np.random.default_rng(3).laplace(0, scale, 2_000_000)
    grid = np.linspace(1.0, 12.0, 200_001)
    analytic = grid[np.argmin(2 * scale**2 * np.exp(-grid / scale) + (grid / 127) ** 2 / 12)]
    chosen = mse_threshold(Histogram.of(values)).threshold
    assert chosen == pytest.approx(analytic, rel=0.05)


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_tensor_gets_the_documented_safe_threshold(method: str) -> None:
    choice = choose_thresholds({"z": Histogram.of(np.zeros(100))}, ThresholdSettings(method=method))["z"]
    assert choice.threshold == ZERO_TENSOR_THRESHOLD and choice.divergence == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_constant_and_single_value_tensors_get_their_value(method: str) -> None:
    thresholds = choose_thresholds(
        {name: Histogram.of(SMALL[name]) for name in ("constant", "single_nonzero")}, ThresholdSettings(method=method)
    )
    assert thresholds["constant"].threshold == 2.5
    if method != "percentile":
        assert thresholds["single_nonzero"].threshold == 3.25


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_finite_positive_thresholds_on_varied_data(method: str) -> None:
    histograms = {name: Histogram.of(values) for name, values in SMALL.items()}
    for name, choice in choose_thresholds(histograms, ThresholdSettings(method=method)).items():
        assert math.isfinite(choice.threshold) and choice.threshold > 0, name
        assert choice.threshold <= max(histograms[name].abs_max, ZERO_TENSOR_THRESHOLD)


def test_empty_histogram_is_refused_with_the_tensor_name() -> None:
    with pytest.raises(EmptyHistogramError, match="'conv1_out'"):
        choose_thresholds({"conv1_out": Histogram.empty()}, ThresholdSettings())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("method", "kl", "unknown method"), ("num_quantized_bins", 1, "at least 2"), ("percentile", 0.0, r"\(0, 100\]")],
)
def test_bad_settings_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThresholdSettings(**{field: value})


def test_too_many_quantized_bins_for_the_histogram_is_refused() -> None:
    with pytest.raises(ValueError, match="num_quantized_bins"):
        entropy_thresholds({"t": Histogram.of(SMALL["gaussian"], 64)}, 255, True)


@pytest.mark.parametrize("name", ["relu", "relu6"])
def test_uint8_thresholds_match_the_loops_with_255_levels(name: str) -> None:
    histogram = Histogram.of(SMALL[name], 1024)
    counts = flatten_spikes(histogram.counts[None, :], [extreme_bins(histogram)])[0]
    expected, _ = entropy_threshold_loop(
        counts, False, histogram.bin_width, histogram.abs_max, 255, unsigned_levels=True
    )
    chosen = entropy_thresholds({name: histogram}, 255, True, unsigned_activations=True)[name]
    assert abs(chosen.threshold - expected) <= histogram.bin_width
    small = Histogram.of(SMALL[name], 256)
    expected_mse = mse_threshold_loop(small.abs_counts(), small.bin_width, small.abs_max, levels=255)
    settings = ThresholdSettings(method="mse", unsigned_activations=True)
    assert abs(choose_thresholds({name: small}, settings)[name].threshold - expected_mse) <= small.bin_width


def test_the_method_table_names_exactly_the_declared_methods() -> None:
    assert list(METHOD_FUNCTIONS) == list(METHODS)


def test_an_unknown_method_raises_instead_of_running_another() -> None:
    with pytest.raises(
        ValueError, match=r"unknown threshold method 'kl': choose one of entropy, naive, percentile, mse"
    ):
        method_function("kl")


def test_the_relative_quantization_error_of_one_value_is_rounding_or_clipping() -> None:
    """One value, 0.3, in one bin of centre c: below the threshold it costs the rounding noise s^2/12,
    beyond it the clipping (c - t)^2, each relative to c^2; a tensor of zeros costs nothing."""
    histogram = Histogram.of(np.full(100, 0.3, dtype=np.float32), 1024)
    (occupied,) = np.flatnonzero(histogram.abs_counts())
    centre = (occupied + 0.5) * histogram.bin_width
    scale = 1.0 / 127
    assert relative_quantization_error(histogram, 1.0, 127) == pytest.approx(scale**2 / 12 / centre**2, rel=1e-12)
    assert relative_quantization_error(histogram, centre / 2, 255) == pytest.approx(0.25, rel=1e-12)
    assert relative_quantization_error(Histogram.of(np.zeros(10)), 1.0, 127) == 0.0


def test_the_mse_threshold_has_the_least_relative_error_of_the_methods() -> None:
    """The same cost model: MSE's own choice is never beaten by another method's threshold."""
    histogram = Histogram.of(np.random.default_rng(3).laplace(0.0, 1.0, 50_000), 4096)
    errors = {
        method: relative_quantization_error(
            histogram, choose_thresholds({"x": histogram}, ThresholdSettings(method=method))["x"].threshold, 127
        )
        for method in METHODS
    }
    assert min(errors, key=lambda method: errors[method]) == "mse"

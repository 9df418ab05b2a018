"""Threshold methods: each a pure function from merged histograms to one threshold per tensor.

Collecting statistics (``int8flow.kernels.histogram``) and choosing thresholds are separate, so a new method
is one function here and the same merged histograms can be re-thresholded without a forward pass.

Documented choices for degenerate tensors (never a NaN threshold):
- a histogram that holds no values raises ``EmptyHistogramError``;
- a tensor whose values are all zero gets ``ZERO_TENSOR_THRESHOLD`` (1.0): zero is represented
  exactly by any scale, and a finite positive one keeps every later division defined;
- NaN and infinite values never reach here: building the histogram raises (``NonFiniteValuesError``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from int8flow.kernels.backend import array_module, to_numpy
from int8flow.kernels.histogram import Histogram
from int8flow.kernels.kl_search import kl_divergence_curve
from int8flow.schemas.threshold_settings import AUTO_METHOD, METHODS, ThresholdSettings

INT8_LEVELS = 127
UINT8_LEVELS = 255
ZERO_TENSOR_THRESHOLD = 1.0
SPIKE_FACTOR = 8.0
SPIKE_MIN_SHARE = 1e-4
# Candidates whose divergence is within this of the minimum count as ties; the smallest wins, so
# float noise in the last digits cannot move the threshold across a flat stretch of the curve.
TIE_RELATIVE = 1e-9
TIE_ABSOLUTE = 1e-12


class EmptyHistogramError(ValueError):
    """A tensor reached threshold selection without a single observed value."""


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen clipping threshold and the figure of merit the method minimised.

    ``divergence`` is the KL divergence (entropy), the expected squared error (mse), or NaN for
    methods that minimise nothing (naive, percentile).
    """

    threshold: float
    divergence: float


MethodFunction = Callable[[Mapping[str, Histogram], ThresholdSettings], dict[str, ThresholdChoice]]
"""A threshold method: histograms (none empty, none all-zero) and settings in, one choice per tensor out."""


def choose_thresholds(histograms: Mapping[str, Histogram], settings: ThresholdSettings) -> dict[str, ThresholdChoice]:
    """One threshold per tensor; entropy runs batched over all tensors sharing a layout."""
    method = method_function(settings.method)
    for name, histogram in histograms.items():
        if histogram.count == 0:
            raise EmptyHistogramError(
                f"tensor {name!r} has an empty histogram: no calibration example reached it; "
                "check the calibration data and that the tensor is computed for every input"
            )
    regular = {name: h for name, h in histograms.items() if h.abs_max > 0.0}
    choices = {name: ThresholdChoice(ZERO_TENSOR_THRESHOLD, 0.0) for name in histograms if name not in regular}
    choices.update(method(regular, settings))
    return {name: choices[name] for name in histograms}


def method_function(method: str) -> MethodFunction:
    """The function of threshold method ``method``; an unknown name raises instead of running another method."""
    try:
        return METHOD_FUNCTIONS[method]
    except KeyError:
        if method == AUTO_METHOD:
            raise ValueError(
                f"method {AUTO_METHOD!r} chooses per tensor by the error it measures on calibration data, "
                "which histograms alone cannot give: calibrate with `int8flow run --method auto`, or choose "
                f"one of {', '.join(METHODS)}"
            ) from None
        raise ValueError(f"unknown threshold method {method!r}: choose one of {', '.join(METHODS)}") from None


def _entropy(histograms: Mapping[str, Histogram], settings: ThresholdSettings) -> dict[str, ThresholdChoice]:
    return entropy_thresholds(
        histograms, settings.num_quantized_bins, settings.spike_fix, settings.unsigned_activations
    )


def _naive(histograms: Mapping[str, Histogram], settings: ThresholdSettings) -> dict[str, ThresholdChoice]:
    return {name: naive_threshold(histogram) for name, histogram in histograms.items()}


def _percentile(histograms: Mapping[str, Histogram], settings: ThresholdSettings) -> dict[str, ThresholdChoice]:
    return {name: percentile_threshold(histogram, settings.percentile) for name, histogram in histograms.items()}


def _mse(histograms: Mapping[str, Histogram], settings: ThresholdSettings) -> dict[str, ThresholdChoice]:
    return {
        name: mse_threshold(histogram, storage_levels(histogram.signed, settings.unsigned_activations))
        for name, histogram in histograms.items()
    }


def storage_levels(signed: bool, unsigned_activations: bool) -> int:
    """Steps from zero to the threshold: 255 for a non-negative tensor stored as uint8, else 127."""
    return UINT8_LEVELS if unsigned_activations and not signed else INT8_LEVELS


def naive_threshold(histogram: Histogram) -> ThresholdChoice:
    """max(|min|, |max|): MXNet's ``calib_mode='naive'``."""
    return ThresholdChoice(histogram.abs_max, math.nan)


def percentile_threshold(histogram: Histogram, percentile: float) -> ThresholdChoice:
    """The upper edge of the |x| bin holding the p-th percentile: exact to one bin width."""
    abs_counts = to_numpy(histogram.abs_counts())
    cumulative = np.cumsum(abs_counts)
    target = percentile / 100.0 * histogram.count
    index = int(np.searchsorted(cumulative, target, side="left"))
    index = min(index, abs_counts.shape[0] - 1)
    return ThresholdChoice(min((index + 1) * histogram.bin_width, histogram.abs_max), math.nan)


def mse_threshold(histogram: Histogram, levels: int = INT8_LEVELS) -> ThresholdChoice:
    """The bin edge minimising the expected squared error of symmetric int8 quantization.

    For a candidate threshold ``t`` (scale ``s = t / levels``: 127, or 255 for uint8), every |x| bin
    is represented by its centre ``c``: bins beyond ``t`` cost the clipping error ``(c - t)**2``;
    bins that round to zero (``c < s / 2``) cost ``c**2``; the others cost ``s**2 / 12``, the mean
    rounding error of a value spread evenly over a step. All candidates come from prefix sums at once.
    """
    counts = to_numpy(histogram.abs_counts()).astype(np.float64)
    width = histogram.bin_width
    centres = (np.arange(counts.shape[0]) + 0.5) * width
    top = _top_candidate(histogram)
    candidates = np.arange(1, top + 1)
    thresholds = candidates * width
    scales = thresholds / levels
    cum_n = np.concatenate([[0.0], np.cumsum(counts)])
    cum_c = np.concatenate([[0.0], np.cumsum(counts * centres)])
    cum_c2 = np.concatenate([[0.0], np.cumsum(counts * centres**2)])
    # Bins with centre below s/2 round to zero: the first such bin index past them.
    zero_stop = np.minimum(np.ceil(scales / 2.0 / width - 0.5).astype(np.int64), candidates)
    zero_stop = np.maximum(zero_stop, 0)
    rounding = cum_c2[zero_stop] + scales**2 / 12.0 * (cum_n[candidates] - cum_n[zero_stop])
    tail_n = cum_n[-1] - cum_n[candidates]
    tail_c = cum_c[-1] - cum_c[candidates]
    tail_c2 = cum_c2[-1] - cum_c2[candidates]
    clipping = tail_c2 - 2.0 * thresholds * tail_c + thresholds**2 * tail_n
    error = (rounding + np.maximum(clipping, 0.0)) / histogram.count
    best = _first_minimum(error)
    return ThresholdChoice(min(float(thresholds[best]), histogram.abs_max), float(error[best]))


def relative_quantization_error(histogram: Histogram, threshold: float, levels: int) -> float:
    """``E[(q(x) - x)**2] / E[x**2]`` at ``threshold`` with ``levels`` steps, by ``mse_threshold``'s
    cost model: a figure of merit that every method's threshold has and that compares tensors of any
    scale (the report ranks tensors by it). 0.0 for a tensor of zeros."""
    counts = to_numpy(histogram.abs_counts()).astype(np.float64)
    centres = (np.arange(counts.shape[0]) + 0.5) * histogram.bin_width
    scale = threshold / levels
    rounding = np.where(centres < scale / 2.0, centres**2, scale**2 / 12.0)
    cost = np.where(centres > threshold, (centres - threshold) ** 2, rounding)
    power = float(counts @ centres**2)
    return float(counts @ cost) / power if power > 0.0 else 0.0


def entropy_thresholds(
    histograms: Mapping[str, Histogram], num_quantized_bins: int, spike_fix: bool, unsigned_activations: bool = False
) -> dict[str, ThresholdChoice]:
    """KL-divergence thresholds, batched over the tensors that share a layout.

    Signed tensors use the two-sided search of MXNet (``num_quantized_bins`` groups over a slice
    symmetric around zero); non-negative tensors use TensorRT's one-sided search over ``[0, t)``
    with ``num_quantized_bins // 2 + 1`` groups (the levels 0..127 of symmetric int8), or
    ``num_quantized_bins`` groups when they will be stored as uint8 (``unsigned_activations``).
    """
    layouts: dict[tuple[int, bool], list[str]] = {}
    for name, histogram in histograms.items():
        layouts.setdefault((histogram.num_bins, histogram.signed), []).append(name)
    choices: dict[str, ThresholdChoice] = {}
    for (num_bins, signed), names in layouts.items():
        batch = [histograms[name] for name in names]
        xp = array_module(batch[0].counts)
        counts = xp.stack([xp.asarray(h.counts) for h in batch])
        if spike_fix:
            counts = flatten_spikes(counts, [extreme_bins(h) for h in batch])
        groups = num_quantized_bins if signed or unsigned_activations else num_quantized_bins // 2 + 1
        starts, stops, widths = candidate_slices(num_bins, signed, groups)
        reachable = widths <= max(_top_candidate(h) for h in batch)
        starts, stops, widths = starts[reachable], stops[reachable], widths[reachable]
        if starts.shape[0] == 0:
            raise ValueError(
                f"num_quantized_bins={num_quantized_bins} leaves no candidate threshold with "
                f"num_bins={num_bins}: use more histogram bins or fewer quantized bins"
            )
        curve = to_numpy(kl_divergence_curve(counts, xp.asarray(starts), xp.asarray(stops), groups))
        for row, (name, histogram) in enumerate(zip(names, batch)):
            usable = widths <= _top_candidate(histogram)
            divergence = np.where(usable, curve[row], np.inf)
            best = _first_minimum(divergence)
            threshold = min(float(widths[best]) * histogram.bin_width, histogram.abs_max)
            choices[name] = ThresholdChoice(threshold, float(divergence[best]))
    return choices


def candidate_slices(num_bins: int, signed: bool, num_groups: int) -> tuple[Any, Any, Any]:
    """Slices ``[start, stop)`` of each candidate and its half-width in bins (its threshold)."""
    if signed:
        zero = num_bins // 2
        widths = np.arange((num_groups - num_bins % 2 + 1) // 2, num_bins // 2 + 1)
        return zero - widths, zero + widths + num_bins % 2, widths
    widths = np.arange(num_groups, num_bins + 1)
    return np.zeros_like(widths), widths, widths


def flatten_spikes(counts: Any, protected: Any) -> Any:
    """Lower every spike of repeated exact values to its neighbours' mean, before the entropy search.

    Real activations hold spikes that no clipping threshold can represent better or worse: exact
    zeros after ReLU/ReLU6 (about half of an EfficientNet-Lite tensor; REFERENCE.md section 6) and
    per-channel constants where the input is constant (padding, image background: each channel's
    bias). A spike dominates ``p`` and drags the KL minimum to thresholds tens of times too small.
    NVIDIA's pytorch-quantization sets the zero bin to its neighbour's count; this generalises it:
    a bin holding more than ``SPIKE_FACTOR`` times the mean of its (up to four) nearest bins and at
    least ``SPIKE_MIN_SHARE`` of all values gets that mean. The bins holding min and max
    (``protected``, one row per histogram) are kept: a spike there is saturation (ReLU6 at 6) and
    sets the range. A histogram the step would empty is left as it was.
    """
    xp = array_module(counts)
    values = counts.astype(xp.float64)
    padded = xp.pad(values, ((0, 0), (2, 2)))
    present = xp.pad(xp.ones((1, values.shape[1]), dtype=xp.float64), ((0, 0), (2, 2)))
    neighbours = (0, 1, 3, 4)
    width = values.shape[1]
    reference = sum(padded[:, k : k + width] for k in neighbours) / sum(present[:, k : k + width] for k in neighbours)
    total = values.sum(axis=1, keepdims=True)
    spikes = (values > SPIKE_FACTOR * reference) & (values >= SPIKE_MIN_SHARE * total)
    rows = xp.arange(counts.shape[0])[:, None]
    spikes[rows, xp.asarray(protected)] = False
    flattened = xp.where(spikes, xp.ceil(reference).astype(counts.dtype), counts)
    emptied = flattened.sum(axis=1) == 0
    return xp.where(emptied[:, None], counts, flattened)


def extreme_bins(histogram: Histogram) -> tuple[int, int]:
    """Bins that may hold saturation: max, and min when negative (a non-negative min is the zero spike)."""
    offset = histogram.num_bins // 2 if histogram.signed else 0
    width = histogram.bin_width
    last = histogram.num_bins - 1
    high = min(int(math.floor(histogram.max / width)) + offset, last)
    low = int(math.floor(histogram.min / width)) + offset if histogram.min < 0.0 else high
    return low, high


def _top_candidate(histogram: Histogram) -> int:
    """Half-width in bins of the smallest candidate that reaches max|x|."""
    return int(math.floor(histogram.abs_max / histogram.bin_width)) + 1


def _first_minimum(values: np.ndarray) -> int:
    """Index of the smallest value, taking the first of near-ties (see TIE_RELATIVE)."""
    finite = np.isfinite(values)
    if not finite.any():
        return int(values.shape[0] - 1)
    lowest = float(values[finite].min())
    tolerance = TIE_ABSOLUTE + TIE_RELATIVE * abs(lowest)
    return int(np.flatnonzero(finite & (values <= lowest + tolerance))[0])


METHOD_FUNCTIONS: Mapping[str, MethodFunction] = MappingProxyType(
    {"entropy": _entropy, "naive": _naive, "percentile": _percentile, "mse": _mse}
)
"""Every method of ``METHODS`` by name; a test checks the two name the same methods."""

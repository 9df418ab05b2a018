"""The KL-divergence (entropy) threshold search, vectorised over candidates and tensors.

The published search (MXNet PR #9552, TensorRT's entropy calibrator; see REFERENCE.md section 1)
loops over candidate slices ``[start, stop)`` of a histogram and, for each, builds ``p`` (the slice
with the outliers clipped into its edge bins) and ``q`` (the slice merged into ``num_quantized_bins``
groups, each group's count spread over its non-zero bins), smooths both and takes ``KL(p || q)``.
That is O(candidates x bins) with Python loops inside; here every term is rewritten so that one
candidate costs O(num_quantized_bins), from prefix sums shared by all candidates:

- smoothing preserves the sums, so ``sum(p~) = T`` (all counts) and ``sum(q~) = S`` (the slice's
  counts) and ``KL = (A - B) / T + log(S / T)`` with ``A = sum p~ log p~`` and ``B = sum p~ log q~``;
- ``B`` is constant inside each quantization group, so it needs only per-group sums (prefix sums
  gathered at the group bounds);
- ``A`` over the slice interior is ``sum f(h - d)`` with ``f(x) = x log x`` and ``d`` the smoothing
  shift of this candidate; bins holding 1..SMALL_COUNT values are summed exactly from per-count
  prefix sums, larger ones by the Taylor series of ``f`` around ``h`` (``|d / h| < 0.2`` there, so
  the truncated terms are below 1e-9 of a count);
- the two edge bins (which absorb the outliers) are computed directly.

The arithmetic is float64 throughout (the published code smooths in float32, which loses the
``eps`` against counts above ~1e3); candidates whose smoothing would make a probability non-positive
get an infinite divergence, as do slices that hold no counts.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from int8flow.kernels.backend import array_module

SMOOTHING_EPS = 1e-4
SMALL_COUNT = 4
SERIES_ORDER = 8
# Elements of one (tensors x candidates x groups) temporary on each backend.
CPU_BLOCK_ELEMENTS = 1 << 18
GPU_BLOCK_ELEMENTS = 1 << 25


def _prefix_sums(values: Any, xp: Any) -> Any:
    """Prefix sums along the bins with a leading zero: ``out[:, b] = values[:, :b].sum()``."""
    zeros = xp.zeros((values.shape[0], 1), dtype=xp.float64)
    return xp.concatenate([zeros, xp.cumsum(values, axis=1, dtype=xp.float64)], axis=1)


def _xlogx(x: Any, xp: Any) -> Any:
    safe = xp.where(x > 0, x, 1.0)
    return xp.where(x > 0, x * xp.log(safe), 0.0)


def kl_divergence_curve(counts: Any, starts: Any, stops: Any, num_quantized_bins: int) -> Any:
    """``KL(p || q)`` of the published algorithm for every tensor and candidate slice.

    ``counts``: (tensors, bins) integer histograms sharing one layout; ``starts``/``stops``:
    (candidates,) slice bounds, each slice at least ``num_quantized_bins`` wide. Returns a
    (tensors, candidates) float64 array, ``inf`` where the published smoothing is undefined.
    """
    xp = array_module(counts)
    counts = xp.asarray(counts, dtype=xp.float64)
    starts = xp.asarray(starts, dtype=xp.int64)
    stops = xp.asarray(stops, dtype=xp.int64)
    if int((stops - starts).min()) < num_quantized_bins or num_quantized_bins < 2:
        raise ValueError(
            f"every candidate slice must hold at least num_quantized_bins={num_quantized_bins} "
            "bins (and num_quantized_bins >= 2): raise num_bins or lower num_quantized_bins"
        )
    # Group bounds: num_groups runs of `merged` bins, the last one taking the remainder.
    merged = (stops - starts) // num_quantized_bins
    bounds = starts[:, None] + merged[:, None] * xp.arange(num_quantized_bins + 1, dtype=xp.int64)
    bounds[:, -1] = stops
    # Pieces of tensors x candidates: on the CPU small enough to stay in cache (the group terms
    # are memory-bound); on a GPU large enough to fill it.
    budget = GPU_BLOCK_ELEMENTS if xp is not np else CPU_BLOCK_ELEMENTS
    per_tensor = starts.shape[0] * (num_quantized_bins + 1)
    tensors_per_block = max(1, budget // per_tensor)
    step = max(1, budget // (num_quantized_bins + 1))
    blocks = []
    for first in range(0, counts.shape[0], tensors_per_block):
        prefix = _Prefix(counts[first : first + tensors_per_block], xp)
        pieces = [
            _curve_piece(prefix, starts[c : c + step], stops[c : c + step], bounds[c : c + step], xp)
            for c in range(0, starts.shape[0], step)
        ]
        blocks.append(xp.concatenate(pieces, axis=1))
    return xp.concatenate(blocks, axis=0)


class _Prefix:
    """Prefix sums of one histogram, shared by all its candidates."""

    def __init__(self, counts: Any, xp: Any) -> None:
        self.counts = counts
        self.total = counts.sum(axis=1, keepdims=True)
        self.cum_counts = _prefix_sums(counts, xp)
        self.cum_nonzero = _prefix_sums(counts > 0, xp)
        self.cum_small = [_prefix_sums(counts == value, xp) for value in range(1, SMALL_COUNT + 1)]
        large = counts > SMALL_COUNT
        safe = xp.where(large, counts, 1.0)
        log_h = xp.where(large, xp.log(safe), 0.0)
        inverse = xp.where(large, 1.0 / safe, 0.0)
        self.cum_xlogx = _prefix_sums(counts * log_h, xp)
        self.cum_log_plus_one = _prefix_sums(log_h + large, xp)
        self.cum_inverse_powers = [_prefix_sums(inverse ** (order - 1), xp) for order in range(2, SERIES_ORDER + 1)]


def _curve_piece(prefix: _Prefix, starts: Any, stops: Any, bounds: Any, xp: Any) -> Any:
    eps = SMOOTHING_EPS
    eps_log_eps = eps * math.log(eps)
    lengths = (stops - starts).astype(xp.float64)
    counts, total, cum_counts, cum_nonzero = prefix.counts, prefix.total, prefix.cum_counts, prefix.cum_nonzero

    # Edge bins of each slice, with the outliers clipped into them.
    first = xp.take(counts, starts, axis=1)
    last = xp.take(counts, stops - 1, axis=1)
    left_outliers = xp.take(cum_counts, starts, axis=1)
    right_outliers = total - xp.take(cum_counts, stops, axis=1)
    p_first = first + left_outliers
    p_last = last + right_outliers
    interior_nonzero = xp.take(cum_nonzero, stops - 1, axis=1) - xp.take(cum_nonzero, starts + 1, axis=1)
    p_nonzero = interior_nonzero + (p_first > 0) + (p_last > 0)
    p_zero = lengths - p_nonzero
    shift = eps * p_zero / xp.maximum(p_nonzero, 1.0)

    term_a = _interior_xlogx(prefix, starts + 1, stops - 1, shift, xp)
    term_a += _xlogx(p_first - shift, xp) * (p_first > 0) + _xlogx(p_last - shift, xp) * (p_last > 0)
    term_a += p_zero * eps_log_eps

    at_bounds = xp.take(cum_counts, bounds, axis=1)
    group_counts = at_bounds[:, :, 1:] - at_bounds[:, :, :-1]
    at_bounds = xp.take(cum_nonzero, bounds, axis=1)
    group_nonzero = at_bounds[:, :, 1:] - at_bounds[:, :, :-1]
    # An edge bin that is empty in the histogram but holds outliers is non-zero in p (and alone in
    # its group when the group's histogram count is zero: then q is zero there).
    outlier_only_first = (first == 0) & (p_first > 0)
    outlier_only_last = (last == 0) & (p_last > 0)
    group_nonzero[:, :, 0] += outlier_only_first
    group_nonzero[:, :, -1] += outlier_only_last
    q_zero = (
        p_zero
        + (outlier_only_first & (group_counts[:, :, 0] == 0))
        + (outlier_only_last & (group_counts[:, :, -1] == 0))
    )
    q_nonzero = lengths - q_zero
    q_shift = eps * q_zero / xp.maximum(q_nonzero, 1.0)

    occupied = group_counts > 0
    q_value = group_counts / xp.maximum(group_nonzero, 1.0)
    q_value -= q_shift[:, :, None]
    p_mass = group_counts - group_nonzero * shift[:, :, None]
    p_mass[:, :, 0] += left_outliers
    p_mass[:, :, -1] += right_outliers
    # Smoothed q is eps in groups without counts; a non-positive smoothed value (published code:
    # assertion) gives log -> nan/-inf, which marks the candidate invalid below.
    with _quiet(xp):
        log_q = xp.log(xp.where(occupied, q_value, eps))
    term_b = (log_q * p_mass).sum(axis=2) + p_zero * eps_log_eps

    slice_counts = xp.take(cum_counts, stops, axis=1) - xp.take(cum_counts, starts, axis=1)
    safe_slice = xp.where(slice_counts > 0, slice_counts, 1.0)
    divergence = (term_a - term_b) / total + xp.log(safe_slice / total)
    invalid = (slice_counts <= 0) | (q_nonzero <= 0) | ~xp.isfinite(term_b) | (shift >= 1.0)
    return xp.where(invalid, xp.inf, divergence)


def _quiet(xp: Any) -> Any:
    """NumPy's floating-point warnings off (invalid candidates are expected); CuPy has none."""
    errstate = getattr(xp, "errstate", None)
    return errstate(invalid="ignore", divide="ignore") if errstate else contextlib.nullcontext()


def _interior_xlogx(prefix: _Prefix, starts: Any, stops: Any, shift: Any, xp: Any) -> Any:
    """``sum over non-zero bins b in [start, stop) of (h_b - d) log(h_b - d)`` per candidate."""

    def window(cum: Any) -> Any:
        return xp.take(cum, stops, axis=1) - xp.take(cum, starts, axis=1)

    result = xp.zeros((prefix.counts.shape[0], starts.shape[0]), dtype=xp.float64)
    for value, cum in enumerate(prefix.cum_small, start=1):
        result += window(cum) * _xlogx(value - shift, xp)
    # f(h - d) = h log h - d (log h + 1) + sum_{k>=2} d^k / (k (k - 1) h^(k - 1))
    result += window(prefix.cum_xlogx)
    result -= shift * window(prefix.cum_log_plus_one)
    shift_power = shift
    for order, cum in enumerate(prefix.cum_inverse_powers, start=2):
        shift_power = shift_power * shift
        result += shift_power * window(cum) / (order * (order - 1))
    return result

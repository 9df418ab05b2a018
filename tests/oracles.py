"""Plain-loop implementations of the published algorithms: the oracles the fast kernels must match.

They follow the published code line by line (MXNet PR #9552 ``_get_optimal_threshold`` and
``_smooth_distribution``) over the same candidate slices as ``int8flow.kernels.thresholds``, in float64, with
the same first-of-near-ties rule. They are slow on purpose: clarity over speed.
"""

from __future__ import annotations

import math

import numpy as np

from int8flow.kernels.thresholds import INT8_LEVELS, TIE_ABSOLUTE, TIE_RELATIVE

EPS = 1e-4


def smooth_distribution(p: np.ndarray) -> np.ndarray | None:
    """MXNet's smoothing; None where the published code raises (all zero, or non-positive result)."""
    is_zeros = (p == 0).astype(np.float64)
    is_nonzeros = (p != 0).astype(np.float64)
    n_zeros = is_zeros.sum()
    n_nonzeros = p.size - n_zeros
    if not n_nonzeros:
        return None
    eps1 = EPS * float(n_zeros) / float(n_nonzeros)
    hist = p.astype(np.float64) + EPS * is_zeros + (-eps1) * is_nonzeros
    if (hist <= 0).sum() != 0:
        return None
    return hist


def entropy(p: np.ndarray, q: np.ndarray) -> float:
    """scipy.stats.entropy(p, q): both normalised, sum p log(p / q)."""
    p = p / p.sum()
    q = q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def kl_for_slice(hist: np.ndarray, start: int, stop: int, num_quantized_bins: int) -> float:
    """One iteration of the published loop body for the slice [start, stop)."""
    sliced_nd_hist = hist[start:stop]
    p = sliced_nd_hist.astype(np.float64).copy()
    p[0] += np.sum(hist[0:start])
    p[-1] += np.sum(hist[stop:])
    is_nonzeros = (p != 0).astype(np.int64)
    num_merged_bins = sliced_nd_hist.size // num_quantized_bins
    quantized_bins = np.zeros(num_quantized_bins, dtype=np.float64)
    for j in range(num_quantized_bins):
        begin = j * num_merged_bins
        end = begin + num_merged_bins
        quantized_bins[j] = sliced_nd_hist[begin:end].sum()
    quantized_bins[-1] += sliced_nd_hist[num_quantized_bins * num_merged_bins :].sum()
    q = np.zeros(sliced_nd_hist.size, dtype=np.float64)
    for j in range(num_quantized_bins):
        begin = j * num_merged_bins
        end = len(is_nonzeros) if j == num_quantized_bins - 1 else begin + num_merged_bins
        norm = is_nonzeros[begin:end].sum()
        if norm != 0:
            q[begin:end] = float(quantized_bins[j]) / float(norm)
    q[p == 0] = 0
    p_smooth = smooth_distribution(p)
    q_smooth = smooth_distribution(q)
    if p_smooth is None or q_smooth is None:
        return math.inf
    return entropy(p_smooth, q_smooth)


def first_minimum(values: list[float]) -> int:
    array = np.asarray(values)
    finite = np.isfinite(array)
    if not finite.any():
        return len(values) - 1
    lowest = array[finite].min()
    return int(np.flatnonzero(finite & (array <= lowest + TIE_ABSOLUTE + TIE_RELATIVE * abs(lowest)))[0])


def entropy_threshold_loop(
    hist: np.ndarray,
    signed: bool,
    bin_width: float,
    abs_max: float,
    num_quantized_bins: int,
    unsigned_levels: bool = False,
) -> tuple[float, float]:
    """The published search over our histogram layout: (threshold, its KL divergence)."""
    num_bins = hist.size
    top = int(math.floor(abs_max / bin_width)) + 1
    groups = num_quantized_bins if signed or unsigned_levels else num_quantized_bins // 2 + 1
    divergences, widths = [], []
    if signed:
        zero = num_bins // 2
        first = (groups - num_bins % 2 + 1) // 2
        for i in range(first, min(num_bins // 2, top) + 1):
            divergences.append(kl_for_slice(hist, zero - i, zero + i + num_bins % 2, groups))
            widths.append(i)
    else:
        for i in range(groups, min(num_bins, top) + 1):
            divergences.append(kl_for_slice(hist, 0, i, groups))
            widths.append(i)
    best = first_minimum(divergences)
    return min(widths[best] * bin_width, abs_max), divergences[best]


def mse_threshold_loop(abs_counts: np.ndarray, bin_width: float, abs_max: float, levels: int = INT8_LEVELS) -> float:
    """Direct sum of the error model of ``int8flow.kernels.thresholds.mse_threshold`` for every candidate."""
    centres = (np.arange(abs_counts.size) + 0.5) * bin_width
    top = int(math.floor(abs_max / bin_width)) + 1
    errors = []
    for i in range(1, top + 1):
        threshold = i * bin_width
        scale = threshold / levels
        total = 0.0
        for count, centre in zip(abs_counts, centres):
            if not count:
                continue
            if centre >= threshold:
                total += count * (centre - threshold) ** 2
            elif centre < scale / 2:
                total += count * centre**2
            else:
                total += count * scale**2 / 12
        errors.append(total)
    return min((first_minimum(errors) + 1) * bin_width, abs_max)

"""Vectorised entropy search vs the plain-loop oracle of the published algorithm, same process.

Histograms of activation-like tensors (signed Gaussian/Laplacian, post-ReLU, zero-heavy post-ReLU6,
outliers) are built once; both implementations then choose a threshold for every tensor, on our
8192-bin layout and on MXNet's 8001-bin zero-centred layout. Prints times, the speed ratio and how
many thresholds are identical.

    .venv/bin/python benchmarks/bench_entropy.py [--tensors 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from oracles import entropy_threshold_loop, first_minimum, kl_for_slice  # noqa: E402

from int8flow.kernels.histogram import Histogram  # noqa: E402
from int8flow.kernels.kl_search import kl_divergence_curve  # noqa: E402
from int8flow.kernels.thresholds import candidate_slices, entropy_thresholds, extreme_bins, flatten_spikes  # noqa: E402

NUM_QUANTIZED_BINS = 255


def activation_like(count: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = []
    for index in range(count):
        scale = rng.uniform(0.05, 20.0)
        kind = index % 4
        if kind == 0:
            values = rng.normal(0.0, scale, size)
        elif kind == 1:
            values = rng.laplace(0.0, scale, size)
        elif kind == 2:
            values = np.maximum(rng.normal(0.2 * scale, scale, size), 0.0)
        else:
            values = np.where(rng.random(size) < 0.5, 0.0, np.clip(rng.normal(1.0, 3.0, size), 0.0, 6.0))
        tensors.append(values)
    return tensors


def ours_layout(tensors: list[np.ndarray]) -> tuple[float, float, int, float]:
    histograms = {f"t{i}": Histogram.of(values) for i, values in enumerate(tensors)}
    start = time.perf_counter()
    fast = entropy_thresholds(histograms, NUM_QUANTIZED_BINS, True)
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    slow = {}
    for name, histogram in histograms.items():
        counts = flatten_spikes(histogram.counts[None, :], [extreme_bins(histogram)])[0]
        slow[name] = entropy_threshold_loop(
            counts, histogram.signed, histogram.bin_width, histogram.abs_max, NUM_QUANTIZED_BINS
        )[0]
    slow_seconds = time.perf_counter() - start
    identical = sum(fast[name].threshold == slow[name] for name in histograms)
    worst = max(abs(fast[name].threshold - slow[name]) / histograms[name].bin_width for name in histograms)
    return fast_seconds, slow_seconds, identical, worst


def mxnet_layout(tensors: list[np.ndarray], num_bins: int = 8001) -> tuple[float, float, int, float]:
    histograms = []
    for values in tensors:
        amax = float(np.abs(values).max())
        counts, edges = np.histogram(values, bins=num_bins, range=(-amax, amax))
        histograms.append((counts, edges))
    starts, stops, _ = candidate_slices(num_bins, True, NUM_QUANTIZED_BINS)
    start = time.perf_counter()
    curves = kl_divergence_curve(np.stack([c for c, _ in histograms]), starts, stops, NUM_QUANTIZED_BINS)
    fast = [edges[stops[first_minimum(list(curve))]] for curve, (_, edges) in zip(curves, histograms)]
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    slow = []
    for counts, edges in histograms:
        divergences = [kl_for_slice(counts, int(a), int(b), NUM_QUANTIZED_BINS) for a, b in zip(starts, stops)]
        slow.append(edges[stops[first_minimum(divergences)]])
    slow_seconds = time.perf_counter() - start
    identical = sum(a == b for a, b in zip(fast, slow))
    worst = max(abs(a - b) / (edges[1] - edges[0]) for a, b, (_, edges) in zip(fast, slow, histograms))
    return fast_seconds, slow_seconds, identical, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--values-per-tensor", type=int, default=200_000)
    args = parser.parse_args()
    tensors = activation_like(args.tensors, args.values_per_tensor, seed=2026)
    print(f"{args.tensors} tensors x {args.values_per_tensor} values, {NUM_QUANTIZED_BINS} quantized bins")
    for label, run in (("int8flow layout, 8192 bins", ours_layout), ("MXNet layout, 8001 bins", mxnet_layout)):
        fast, slow, identical, worst = run(tensors)
        print(
            f"{label}: vectorised {fast:.3f} s, loop oracle {slow:.1f} s, "
            f"ratio {slow / fast:.0f}x, identical thresholds {identical}/{len(tensors)}, "
            f"largest difference {worst:.0f} bins"
        )


if __name__ == "__main__":
    main()

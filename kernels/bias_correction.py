"""Exact sums for bias correction: the per-channel mean of a layer's FP32 and INT8 outputs.

Quantizing a layer shifts the mean of each output channel (REFERENCE.md section 8); the shift is
measured over the calibration data and subtracted from the bias. A sum of float32 activations
depends on the order of the additions, so the split-invariance contract rules it out. Instead:

- the INT8 side sums the quantized inputs as int64: exact in any order;
- the FP32 side sums the inputs in fixed point, each value rounded once to a grid set by the
  tensor's quantization step (``fixed_point_exponent``): the rounding is per element, the sum is int64;
- a layer is linear, so the sum of its outputs over every example and position is the layer
  applied to those input sums (``conv_output_sums``, ``linear_output_sums``): the per-position
  input sums of a shard are all a worker keeps, and shards merge by integer addition.

Only the division by the count and the products with float weights happen in float64, once, on
the merged integers: the correction is the same bits whatever the workers, shards or batches.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import numpy as np

from int8flow.kernels.backend import array_module, to_numpy
from int8flow.kernels.quantize import quantize

FIXED_POINT_BITS = 16
"""Grid points per quantization step: a value at the threshold (255 steps at most) is 2^24 of them,
float32's own precision there, and values far beyond it (2^14 times the threshold) still leave int64
room for 2^24 summed examples."""


def fixed_point_exponent(scale: float) -> int:
    """The grid of a tensor's FP32 sums is ``2 ** exponent``, fixed by its quantization step alone."""
    return math.ceil(math.log2(scale)) - FIXED_POINT_BITS


def fixed_point_sum(values: Any, exponent: int) -> np.ndarray:
    """Sum over the batch axis of ``values`` on the grid ``2 ** exponent``, as int64 (per position)."""
    xp = array_module(values)
    steps = xp.multiply(values, xp.float32(math.ldexp(1.0, -exponent)), dtype=xp.float32)  # exact: a power of two
    xp.rint(steps, out=steps)
    return to_numpy(steps.sum(axis=0, dtype=xp.int64))


def quantized_sum(values: Any, scale: float, unsigned: bool) -> np.ndarray:
    """Sum over the batch axis of the tensor as the INT8 graph quantizes it, as int64 (per position)."""
    return to_numpy(quantize(values, scale, unsigned).sum(axis=0, dtype=np.int64))


def patch_sums(
    position_sums: np.ndarray,
    kernel_shape: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
) -> tuple[np.ndarray, int]:
    """For each input channel and kernel offset, the sum of the input over every output position
    (zero padding included), and the number of output positions: ``(C, *kernel_shape)``, count."""
    channels, *spatial = position_sums.shape
    rank = len(spatial)
    begin, end = pads[:rank], pads[rank:]
    padded = np.pad(position_sums, [(0, 0)] + [(low, high) for low, high in zip(begin, end)])
    outputs = [
        (size + low + high - dilation * (kernel - 1) - 1) // stride + 1
        for size, low, high, dilation, kernel, stride in zip(spatial, begin, end, dilations, kernel_shape, strides)
    ]
    sums = np.zeros((channels, *kernel_shape), dtype=position_sums.dtype)
    for offset in product(*(range(kernel) for kernel in kernel_shape)):
        window: tuple[slice, ...] = tuple(
            slice(index * dilation, index * dilation + stride * (count - 1) + 1, stride)
            for index, dilation, stride, count in zip(offset, dilations, strides, outputs)
        )
        sums[(slice(None), *offset)] = padded[(slice(None), *window)].reshape(channels, -1).sum(axis=1)  # type: ignore[index]
    return sums, math.prod(outputs)


def conv_output_sums(weight: np.ndarray, input_patch_sums: np.ndarray, group: int) -> np.ndarray:
    """Per output channel, the sum of a bias-free Conv's outputs given its ``patch_sums``; exact in
    int64 for int8 weights and integer sums, float64 otherwise."""
    out_channels, group_channels = weight.shape[:2]
    dtype = np.int64 if weight.dtype.kind == "i" and input_patch_sums.dtype.kind == "i" else np.float64
    weights = weight.astype(dtype).reshape(group, out_channels // group, group_channels, -1)
    patches = input_patch_sums.astype(dtype).reshape(group, group_channels, -1)
    return np.einsum("gock,gck->go", weights, patches).reshape(out_channels)


def linear_output_sums(weight: np.ndarray, input_sums: np.ndarray) -> np.ndarray:
    """Per output column, the sum of ``x @ weight`` given the per-feature sums of ``x`` (``(K,)``)."""
    dtype = np.int64 if weight.dtype.kind == "i" and input_sums.dtype.kind == "i" else np.float64
    return input_sums.astype(dtype) @ weight.astype(dtype)


def bias_shift(
    fp32_output_sums: np.ndarray,
    exponent: int,
    int8_output_sums: np.ndarray,
    input_scale: float,
    weight_scales: np.ndarray,
    positions: int,
) -> np.ndarray:
    """What to add to each channel's bias: mean FP32 output minus mean INT8 output (both bias-free)."""
    fp32_mean = fp32_output_sums.astype(np.float64) * math.ldexp(1.0, exponent) / positions
    int8_mean = int8_output_sums.astype(np.float64) * (input_scale * weight_scales.astype(np.float64)) / positions
    return (fp32_mean - int8_mean).astype(np.float32)

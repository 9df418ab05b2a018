"""Bias-correction sums: the window sums give exactly the layer's output sums, the input sums do not
depend on how the examples are split, and the shift is FP32's mean output minus INT8's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conv_cases import CONV_CASES, CONV_FIELDS, CONV_IDS

from int8flow.kernels.bias_correction import (
    bias_shift,
    conv_output_sums,
    fixed_point_exponent,
    fixed_point_sum,
    linear_output_sums,
    patch_sums,
    quantized_sum,
)
from int8flow.kernels.conv import conv2d
from int8flow.kernels.int8_gemm import int8_conv2d
from int8flow.kernels.quantize import dequantize, quantize, quantize_weights_per_channel

RNG = np.random.default_rng(3)


@pytest.mark.parametrize(CONV_FIELDS, CONV_CASES, ids=CONV_IDS)
def test_window_sums_give_the_exact_sum_of_an_int8_convs_accumulators(  # type: ignore[no-untyped-def]
    case, cin, cout, kernel, strides, pads, dilations, groups, size
) -> None:
    x = RNG.integers(-128, 128, size=(5, cin, *size), dtype=np.int8)
    weight = RNG.integers(-127, 128, size=(cout, cin // groups, *kernel), dtype=np.int8)
    accumulators = int8_conv2d(x, weight, strides, pads, dilations, groups)
    windows, positions = patch_sums(x.astype(np.int64).sum(axis=0), kernel, strides, pads, dilations)
    sums = conv_output_sums(weight, windows, groups)
    assert sums.dtype == np.int64 and positions == accumulators.shape[2] * accumulators.shape[3]
    np.testing.assert_array_equal(sums, accumulators.astype(np.int64).sum(axis=(0, 2, 3)))


def test_window_sums_of_float_inputs_give_the_float_convs_output_sums() -> None:
    x = RNG.standard_normal((4, 6, 10, 10)).astype(np.float32)
    weight = RNG.standard_normal((6, 1, 3, 3)).astype(np.float32)
    windows, _ = patch_sums(x.astype(np.float64).sum(axis=0), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1))
    expected = conv2d(x, weight, None, (2, 2), (1, 1, 1, 1), (1, 1), 6).astype(np.float64).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(conv_output_sums(weight, windows, 6), expected, rtol=1e-5)


def test_feature_sums_give_the_exact_sum_of_an_int8_matmul() -> None:
    x = RNG.integers(0, 256, size=(7, 3, 20)).astype(np.int64)
    weight = RNG.integers(-127, 128, size=(20, 9), dtype=np.int8)
    expected = (x @ weight.astype(np.int64)).sum(axis=(0, 1))
    np.testing.assert_array_equal(linear_output_sums(weight, x.sum(axis=(0, 1))), expected)


def test_input_sums_are_the_same_integers_for_any_split_of_the_examples() -> None:
    """Float32 sums would depend on the order of the additions; the fixed-point and int8 sums do not."""
    x = (RNG.standard_normal((64, 3, 5, 5)) * np.logspace(-3, 3, 64)[:, None, None, None]).astype(np.float32)
    exponent = fixed_point_exponent(0.05)
    whole_fp32, whole_int8 = fixed_point_sum(x, exponent), quantized_sum(x, 0.05, False)
    for split in ([0, 64], [0, 1, 17, 40, 64], list(range(65))):
        parts = [slice(begin, end) for begin, end in zip(split, split[1:])]
        np.testing.assert_array_equal(sum(fixed_point_sum(x[part], exponent) for part in parts), whole_fp32)
        np.testing.assert_array_equal(sum(quantized_sum(x[part], 0.05, False) for part in parts), whole_int8)
    reversed_order = fixed_point_sum(x[::-1], exponent)
    np.testing.assert_array_equal(reversed_order, whole_fp32)
    np.testing.assert_array_equal(whole_int8, quantize(x, 0.05).astype(np.int64).sum(axis=0))


def test_fixed_point_sums_round_each_value_once_on_a_grid_of_the_step() -> None:
    exponent = fixed_point_exponent(0.05)
    assert math.ldexp(1.0, exponent) <= 0.05 / 2**15  # 2^16 grid points per quantization step at least
    x = np.array([[0.1234567], [-3.5e-7]], dtype=np.float32)
    grid = math.ldexp(1.0, exponent)
    expected = round(float(x[0, 0]) / grid) + round(float(x[1, 0]) / grid)
    assert fixed_point_sum(x, exponent).tolist() == [expected]


def test_the_shift_is_the_mean_fp32_output_minus_the_mean_int8_output() -> None:
    """Against a direct computation: both convolutions over every example, their per-channel means."""
    x = np.abs(RNG.standard_normal((16, 4, 8, 8))).astype(np.float32)
    weight = (RNG.standard_normal((4, 1, 3, 3)) * 0.3).astype(np.float32)
    scale = float(x.max()) / 255
    weight_q, weight_scales = quantize_weights_per_channel(weight)
    geometry = ((1, 1), (1, 1, 1, 1), (1, 1))
    exponent = fixed_point_exponent(scale)
    fp32_windows, positions = patch_sums(fixed_point_sum(x, exponent), (3, 3), *geometry)
    int8_windows, _ = patch_sums(quantized_sum(x, scale, True), (3, 3), *geometry)
    shift = bias_shift(
        conv_output_sums(weight, fp32_windows, 4),
        exponent,
        conv_output_sums(weight_q, int8_windows, 4),
        scale,
        weight_scales,
        positions * len(x),
    )
    fp32 = conv2d(x, weight, None, *geometry, 4).astype(np.float64)
    x_q = dequantize(quantize(x, scale, True), np.float32(scale))
    w_q = weight_q.astype(np.float32) * weight_scales.reshape(-1, 1, 1, 1)
    int8 = conv2d(x_q, w_q, None, *geometry, 4).astype(np.float64)
    expected = (fp32 - int8).mean(axis=(0, 2, 3))
    assert np.abs(expected).max() > 1e-4  # quantization really moved the means
    np.testing.assert_allclose(shift, expected, rtol=1e-4, atol=1e-7)

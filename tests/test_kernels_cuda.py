"""The CuPy paths of the INT8 kernels give the NumPy paths' bits. Skipped where no CUDA GPU is usable."""

from __future__ import annotations

import numpy as np
import pytest
from conv_cases import CONV_CASES, CONV_FIELDS, CONV_IDS

from int8flow.kernels.backend import gpu_available
from int8flow.kernels.int8_gemm import int8_conv2d, int8_matmul
from int8flow.kernels.pooling import max_pool2d, window_sums_int32
from int8flow.kernels.quantize import add_int8, dequantize, quantize, requantize, rescale

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU and CuPy")]

RNG = np.random.default_rng(23)


def on_gpu(array: np.ndarray):
    import cupy

    return cupy.asarray(array)


def assert_same_bits(gpu_result, cpu_result: np.ndarray) -> None:
    import cupy

    assert isinstance(gpu_result, cupy.ndarray)
    host = gpu_result.get()
    assert host.dtype == cpu_result.dtype and host.shape == cpu_result.shape
    np.testing.assert_array_equal(host.view(np.uint8), cpu_result.view(np.uint8))


def int8_values(*shape: int) -> np.ndarray:
    return RNG.integers(-127, 128, shape, dtype=np.int8)


def test_quantize_on_the_gpu_is_bit_identical() -> None:
    x = RNG.normal(0.0, 2.0, (4, 8, 33, 17)).astype(np.float32)
    x.flat[:6] = [0.5, 1.5, -2.5, 300.0, -300.0, 0.0]  # ties and clipping
    scale = RNG.uniform(0.005, 0.05, (1, 8, 1, 1)).astype(np.float32)
    assert_same_bits(quantize(on_gpu(x), on_gpu(scale)), quantize(x, scale))
    assert_same_bits(quantize(on_gpu(x), 0.02), quantize(x, 0.02))


def test_requantize_on_the_gpu_is_bit_identical() -> None:
    acc = RNG.integers(-(2**30), 2**30, (3, 16, 20, 20), dtype=np.int32)
    acc.flat[:4] = [5, 7, -5, 2**31 - 1]
    multiplier = RNG.uniform(1e-9, 2e-7, (1, 16, 1, 1))
    for low, high in [(-127, 127), (0, 127), (0, 100)]:
        assert_same_bits(requantize(on_gpu(acc), on_gpu(multiplier), low, high), requantize(acc, multiplier, low, high))
    assert_same_bits(
        requantize(on_gpu(np.array([1, 3, 5], np.int32)), 0.5), requantize(np.array([1, 3, 5], np.int32), 0.5)
    )


def test_dequantize_rescale_and_add_on_the_gpu_are_bit_identical() -> None:
    a, b = int8_values(2, 5, 9, 9), int8_values(2, 5, 9, 9)
    assert_same_bits(dequantize(on_gpu(a), 0.037), dequantize(a, 0.037))
    assert_same_bits(rescale(on_gpu(a), 0.05, 0.03), rescale(a, 0.05, 0.03))
    assert_same_bits(
        add_int8(on_gpu(a), 0.037, on_gpu(b), 0.052, 0.061, 0, 120), add_int8(a, 0.037, b, 0.052, 0.061, 0, 120)
    )


@pytest.mark.parametrize(("m", "k", "n"), [(7, 33, 5), (64, 1280, 1000), (3, 3000, 6), (1, 4, 4), (5, 1, 2)])
def test_int8_matmul_on_the_gpu_is_bit_identical(m: int, k: int, n: int) -> None:
    a, b = int8_values(m, k), int8_values(k, n)
    assert_same_bits(int8_matmul(on_gpu(a), on_gpu(b)), int8_matmul(a, b))


def test_int8_matmul_on_the_gpu_is_exact_at_full_scale() -> None:
    a, b = np.full((4, 3000), 127, np.int8), np.full((3000, 3), -127, np.int8)
    assert_same_bits(int8_matmul(on_gpu(a), on_gpu(b)), int8_matmul(a, b))


def test_batched_int8_matmul_on_the_gpu_is_bit_identical() -> None:
    a, b = int8_values(2, 3, 70), int8_values(70, 9)
    assert_same_bits(int8_matmul(on_gpu(a), on_gpu(b)), int8_matmul(a, b))


@pytest.mark.parametrize(CONV_FIELDS, CONV_CASES, ids=CONV_IDS)
def test_int8_conv2d_on_the_gpu_is_bit_identical(
    case, cin, cout, kernel, strides, pads, dilations, groups, size
) -> None:
    x, weight = int8_values(3, cin, *size), int8_values(cout, cin // groups, *kernel)
    expected = int8_conv2d(x, weight, strides, pads, dilations, groups)
    assert_same_bits(int8_conv2d(on_gpu(x), on_gpu(weight), strides, pads, dilations, groups), expected)


def test_int8_pools_on_the_gpu_are_bit_identical() -> None:
    x = int8_values(2, 5, 13, 12)
    assert_same_bits(
        max_pool2d(on_gpu(x), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),
        max_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),
    )
    sums, counts = window_sums_int32(on_gpu(x), (3, 3), (2, 2), (1, 1, 1, 1), False, True)
    expected_sums, expected_counts = window_sums_int32(x, (3, 3), (2, 2), (1, 1, 1, 1), False, True)
    assert_same_bits(sums, expected_sums)
    np.testing.assert_array_equal(counts, expected_counts)

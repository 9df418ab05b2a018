"""Exact int8 x int8 -> int32 matrix products and convolutions, fast on a CPU through float32 BLAS.

NumPy has no fast integer matmul, but float32 BLAS is exact here: a product of two int8 values is
at most 128 * 128 = 2**14 in magnitude, so any partial sum of at most 1024 of them is at most 2**24,
and every integer up to 2**24 is a float32. Whatever order BLAS adds in, every intermediate is an
integer it represents exactly. So K is cut into chunks of at most 1024, each chunk is one float32
matmul, and the chunk results are summed in int32: bit-identical to an integer reference (int32
accumulators, which overflow only past 131072 products of 2**14).

The convolution shares the FP32 structure of ``int8flow.kernels.conv``: 1x1 as one matmul per block of
images, everything else (depthwise included: its K is kH*kW) as cache-sized im2col blocks + the
same exact product; the int8 to float32 conversion happens inside the im2col copy, and the float32
results become int32 as the blocks are copied out. On CuPy arrays the work goes to
``int8flow.kernels.cuda_kernels`` (cuBLAS int8 GEMM, a depthwise kernel accumulating int32).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from int8flow.kernels.backend import array_module, uses_cuda
from int8flow.kernels.conv import Pads, Pair, check_conv, convolve

# Largest K whose float32 dot products of int8 values are exact: 1024 * 2**14 = 2**24; with uint8
# activations (0..255, non-negative tensors) a product reaches 255 * 128 < 2**15, so 512.
EXACT_CHUNK = 1024
EXACT_CHUNK_UINT8 = 512


def int8_matmul(a: Any, b: Any) -> Any:
    """``a`` (..., K) int8 or uint8 @ ``b`` (K, N) int8 -> int32 (..., N), exact."""
    xp = array_module(a, b)
    _check_operands(a, b)
    if b.ndim != 2 or a.shape[-1] != b.shape[0]:
        raise ValueError(
            f"int8_matmul: a {tuple(a.shape)} and b {tuple(b.shape)} do not chain: need a (..., K), b (K, N)"
        )
    if uses_cuda(xp) and a.dtype == xp.int8:
        from int8flow.kernels import cuda_kernels

        return cuda_kernels.int8_matmul(a, b)
    product = _exact_product_for(a)
    return product(a.astype(xp.float32), b.astype(xp.float32)).astype(xp.int32, copy=False)


def int8_conv2d(
    x: Any, weight: Any, strides: Pair = (1, 1), pads: Pads = (0, 0, 0, 0), dilations: Pair = (1, 1), groups: int = 1
) -> Any:
    """Int32 accumulators of an ONNX Conv of int8 or uint8 ``x`` (N, C, H, W) with int8 ``weight``
    (M, C/groups, kH, kW); no bias, zero padding (our quantization has zero point 0).

    On CuPy, uint8 inputs take the exact float32 path (cuBLAS's int8 GEMM takes signed inputs only)."""
    xp = array_module(x, weight)
    _check_operands(x, weight)
    windows = check_conv(x, weight, strides, pads, dilations, groups)
    if uses_cuda(xp) and x.dtype == xp.int8:
        from int8flow.kernels import cuda_kernels

        return cuda_kernels.int8_conv2d(x, weight, windows, groups)
    return convolve(x, weight, windows, groups, _exact_product_for(x), xp.float32, xp.int32)


_fallbacks = 0


def gemm_fallbacks() -> int:
    """How many int8 GEMMs of this process cuBLAS refused and an exact float64 matmul computed
    instead: right, but far slower, so validation reports the count (``ValidatedShard``) and a
    benchmark never times the fallback unknowingly. Always 0 on NumPy."""
    return _fallbacks


def note_gemm_fallback(what: str) -> None:
    """Counts one refused GEMM; the first in a process also warns, naming the call and cuBLAS's error."""
    global _fallbacks
    if _fallbacks == 0:
        warnings.warn(
            f"cuBLAS refused an int8 GEMM ({what}); computing int8 GEMMs with an exact float64 matmul "
            "instead, much slower (counted in the report's validate stage as gemm_fallbacks)",
            RuntimeWarning,
            stacklevel=2,
        )
    _fallbacks += 1


def exact_product(a: Any, b: Any, chunk: int = EXACT_CHUNK) -> Any:
    """``a @ b`` (batched, broadcasting) for float32 operands holding int8 values, exactly: float32
    while K <= chunk (every value an exact integer), else int32 sums of K chunks of at most chunk."""
    xp = array_module(a, b)
    k = a.shape[-1]
    if k <= chunk:
        return xp.matmul(a, b)
    chunks = -(-k // chunk)
    bounds = [k * i // chunks for i in range(chunks + 1)]
    total = None
    for lo, hi in zip(bounds, bounds[1:]):
        part = xp.matmul(a[..., lo:hi], b[..., lo:hi, :]).astype(xp.int32)
        total = part if total is None else xp.add(total, part, out=total)
    return total


def _exact_product_for(activations: Any) -> Any:
    if activations.dtype.name == "uint8":
        return functools.partial(exact_product, chunk=EXACT_CHUNK_UINT8)
    return exact_product


def _check_operands(activations: Any, weight: Any) -> None:
    if activations.dtype.name not in ("int8", "uint8"):
        raise TypeError(f"activations must be int8 or uint8 (a quantized tensor); got {activations.dtype}")
    if weight.dtype.name != "int8":
        raise TypeError(f"weights must be int8 (symmetric, per channel); got {weight.dtype}")

"""INT8 arithmetic: quantize, dequantize, requantize, rescale, add, and weight/bias quantization.

Symmetric means zero point 0 and a scale of threshold / 127. Weights use -127..127 (their scale is
max|w| / 127, so -128 never occurs); activations saturate at -128..127, as ONNX QuantizeLinear does,
so the exported QDQ model clips exactly where int8flow's executor does. Rounding is ``rint``, round
half to even, everywhere.

The arithmetic is the one onnxruntime's integer kernels use on x86 CPUs, so that the model users
deploy there computes int8flow's tensors bit for bit (``export_qdq``; measured on every Conv, Gemm and
Add of EfficientNet-Lite0):

- ``quantize`` divides in float32, as ONNX QuantizeLinear does;
- ``requantize`` converts the int32 sum to float32 and multiplies by a float32 multiplier
  (``layer_multiplier``: input_scale x weight_scale / output_scale in float32), as MLAS's
  requantization of QLinearConv and QGemm does;
- ``add_int8`` is QLinearAdd on uint8 storage (a signed tensor at zero point 128): two float32 fused
  multiply-adds, emulated exactly (``_fused_multiply_add``) into a 256 x 256 table of results;
- ``rescale`` (Concat inputs) computes in float64, exact for an int8 value times a ratio.

IEEE float32 multiplication, fused multiply-add and rint give the same bits in NumPy and in the CUDA
kernels (``int8flow.kernels.cuda_kernels``). Large element-wise passes are done in row blocks so that
their float temporaries stay in cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from int8flow.kernels.backend import array_module, uses_cuda

INT8_MAX = 127
INT8_MIN = -128
UINT8_MAX = 255
INT32_MAX = 2**31 - 1

SIGNED_ZERO_POINT = 128
"""Where a signed tensor sits in uint8 storage (x + 128): how onnxruntime's x86 kernels, which take
uint8 activations, hold it; ``add_int8`` rounds as they do at this offset."""

# Elements per block of an element-wise pass: its float64 temporaries (2 MiB) stay in L2.
BLOCK_ELEMENTS = 1 << 18


class BiasOverflowError(ValueError):
    """A bias does not fit int32 at the scale input_scale x weight_scale."""


def quantize(x: Any, scale: Any, unsigned: bool = False) -> Any:
    """``clip(rint(x / scale), -128, 127)`` as int8, divided in float32 (ONNX QuantizeLinear).

    ``unsigned``: a tensor known to be non-negative goes to uint8, ``clip(..., 0, 255)``: twice the
    levels over its range. ``scale`` is a scalar or an array shaped to broadcast against ``x``."""
    xp = array_module(x, scale)
    if x.ndim == 0:  # a scalar operand: NumPy's ufuncs would turn the 0-d arrays below into scalars
        return quantize(x.reshape(1), scale, unsigned).reshape(())
    scale = _as_float32(xp, scale)
    low, high = (0, UINT8_MAX) if unsigned else (INT8_MIN, INT8_MAX)
    if uses_cuda(xp):
        from int8flow.kernels import cuda_kernels

        return cuda_kernels.quantize(x.astype(xp.float32, copy=False), scale, unsigned)

    def block(x_part: np.ndarray, scale_part: np.ndarray) -> np.ndarray:
        values = np.divide(x_part, scale_part, dtype=np.float32)
        np.rint(values, out=values)
        return np.clip(values, low, high, out=values)

    return _by_blocks(block, quantized_dtype(high), x, scale)


def quantized_dtype(high: int) -> Any:
    """uint8 for ranges above 127 (non-negative tensors), int8 otherwise."""
    return np.dtype(np.uint8) if high > INT8_MAX else np.dtype(np.int8)


def dequantize(q: Any, scale: Any) -> Any:
    """``q * scale`` in float32 (ONNX DequantizeLinear with zero point 0)."""
    xp = array_module(q, scale)
    return q.astype(xp.float32) * _as_float32(xp, scale)


def requantize(acc: Any, multiplier: Any, low: int = INT8_MIN, high: int = INT8_MAX) -> Any:
    """``clip(rint(float32(acc) * multiplier), low, high)`` as int8 (uint8 when ``high > 127``), in float32.

    ``multiplier`` is ``layer_multiplier(...)``, a scalar or per channel (broadcastable), float32: the
    arithmetic of onnxruntime's requantization (MlasRequantizeOutput), so the deployed QLinearConv
    gives the same int8 values. A fused ReLU is ``low=0``; a fused ReLU6 is
    ``high=min(127, rint(6 / out_scale))``."""
    _check_bounds(low, high)
    xp = array_module(acc, multiplier)
    multiplier = xp.asarray(multiplier, dtype=xp.float32)
    if uses_cuda(xp):
        from int8flow.kernels import cuda_kernels

        return cuda_kernels.requantize(acc, multiplier, low, high)

    def block(acc_part: np.ndarray, multiplier_part: np.ndarray) -> np.ndarray:
        values = np.multiply(acc_part.astype(np.float32), multiplier_part, dtype=np.float32)
        np.rint(values, out=values)
        return np.clip(values, low, high, out=values)

    return _by_blocks(block, quantized_dtype(high), acc, multiplier)


def layer_multiplier(input_scale: float, weight_scales: Any, output_scale: float) -> Any:
    """``input_scale x weight_scale / output_scale`` per output channel, each step in float32, as
    onnxruntime's QLinearConv computes its output scales."""
    xp = array_module(weight_scales)
    product = xp.float32(input_scale) * xp.asarray(weight_scales, dtype=xp.float32)
    return product / xp.float32(output_scale)


def rescale(q: Any, from_scale: float, to_scale: float, low: int = INT8_MIN, high: int = INT8_MAX) -> Any:
    """A quantized tensor moved to another scale (Concat inputs): ``clip(rint(q * from/to))``."""
    _check_bounds(low, high)
    xp = array_module(q)
    ratio = float(from_scale) / float(to_scale)

    def block(q_part: Any) -> Any:
        return xp.clip(xp.rint(q_part.astype(xp.float64) * ratio), low, high)

    return _by_blocks(block, quantized_dtype(high), q)


def add_int8(
    a: Any, a_scale: float, b: Any, b_scale: float, out_scale: float, low: int = INT8_MIN, high: int = INT8_MAX
) -> Any:
    """Int8 Add as onnxruntime's x86 QLinearAdd computes it on uint8 storage, clipped to ``low..high``.

    With ``a'`` = a + 128 for an int8 ``a`` (a itself for uint8), ``ra`` = float32(a_scale / out_scale),
    likewise ``b'`` and ``rb``, and the output's zero point ``z`` (128 signed, 0 unsigned):
    ``clip(rint(fma(a', ra, fma(b', rb, c))), 0, 255) - z`` with ``c = z - (ra * za + rb * zb)``, all in
    float32. The uint8 offsets change only how ties round: the real sum is the same.

    The result depends on the two stored bytes alone, so it is a table of 256 x 256 entries, built
    once per set of scales (``_add_table``) and read with one gather: the same bits on every backend."""
    _check_bounds(low, high)
    xp = array_module(a, b)
    table = _add_table(
        float(a_scale), a.dtype == np.uint8, float(b_scale), b.dtype == np.uint8, float(out_scale), low, high
    )
    index = (_stored_byte(xp, a).astype(xp.uint16) << 8) | _stored_byte(xp, b)
    return xp.asarray(table)[index]


def _stored_byte(xp: Any, q: Any) -> Any:
    """A tensor's uint8 storage: int8 values + 128 (the sign bit flipped), uint8 values as they are."""
    if q.dtype == np.uint8:
        return q
    return q.view(xp.uint8) ^ xp.uint8(SIGNED_ZERO_POINT)


@functools.lru_cache(maxsize=256)
def _add_table(
    a_scale: float, a_unsigned: bool, b_scale: float, b_unsigned: bool, out_scale: float, low: int, high: int
) -> np.ndarray:
    """``add_int8``'s result for every pair of stored bytes, indexed ``a' * 256 + b'``."""
    a_offset, b_offset, out_offset = _zero_point(a_unsigned), _zero_point(b_unsigned), _zero_point(high > INT8_MAX)
    out_scale32 = np.float32(out_scale)
    ratio_a, ratio_b = np.float32(a_scale) / out_scale32, np.float32(b_scale) / out_scale32
    constant = np.float32(out_offset) - (ratio_a * np.float32(a_offset) + ratio_b * np.float32(b_offset))
    stored = np.arange(UINT8_MAX + 1, dtype=np.float64)
    inner = _fused_multiply_add(stored, ratio_b, np.float64(constant))
    total = _fused_multiply_add(stored[:, None], ratio_a, inner[None, :].astype(np.float64))
    values = np.clip(np.clip(np.rint(total), 0, UINT8_MAX) - out_offset, low, high)
    table = values.astype(quantized_dtype(high)).reshape(-1)
    table.flags.writeable = False
    return table


def _zero_point(unsigned: bool) -> int:
    """A tensor's zero point in uint8 storage: 0 for uint8 values, 128 for int8 ones."""
    return 0 if unsigned else SIGNED_ZERO_POINT


def _fused_multiply_add(x: np.ndarray, ratio: np.float32, addend: Any) -> np.ndarray:
    """float32 ``fma(x, ratio, addend)``, rounded once, for small integers ``x`` (float64 holding
    |x| < 2**9), a float32 ``ratio`` and float32 ``addend`` (held in float64).

    ``x * ratio`` is exact in float64. The sum is rounded to odd in float64 (TwoSum gives its exact
    error; an inexact even result moves one step toward the true sum), and a float64 rounded to odd
    rounds to float32 exactly as the true sum would: float64 carries more than 24 + 1 bits."""
    product = x * np.float64(ratio)
    total = product + addend
    partial = total - product
    error = (product - (total - partial)) + (addend - partial)
    inexact_even = (error != 0) & ((total.view(np.int64) & 1) == 0)
    toward = np.where(error > 0, np.inf, -np.inf)
    return np.where(inexact_even, np.nextafter(total, toward), total).astype(np.float32)


def quantize_weights_per_channel(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scale per channel of ``axis``): scale = max|w| / 127 over the channel.

    An all-zero channel gets scale 1.0: its weights are exactly 0 whatever the scale, and a finite
    scale keeps the requantization multiplier and the bias scale finite."""
    w = np.asarray(w, dtype=np.float32)
    axis = axis % w.ndim
    others = tuple(i for i in range(w.ndim) if i != axis)
    scales = np.max(np.abs(w), axis=others) / np.float32(INT8_MAX) if others else np.abs(w) / np.float32(INT8_MAX)
    scales = np.where(scales > 0, scales, np.float32(1.0)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    return quantize(w, scales.reshape(shape)), scales


def quantize_weights_per_tensor(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """(int8 weights, one float32 scale = max|w| / 127; 1.0 for an all-zero tensor)."""
    w = np.asarray(w, dtype=np.float32)
    scale = np.float32(np.max(np.abs(w)) / np.float32(INT8_MAX)) if w.size else np.float32(0.0)
    scale = scale if scale > 0 else np.float32(1.0)
    return quantize(w, scale), scale


def accumulator_bound(fan_in: int, unsigned: bool) -> int:
    """The largest |int32 accumulator| a layer of ``fan_in`` inputs can reach: 128 (or 255 for uint8
    inputs) x 127 (weights stay within -127..127) per product."""
    return fan_in * (UINT8_MAX if unsigned else -INT8_MIN) * INT8_MAX


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scales: Any) -> np.ndarray:
    """Bias as int32 at scale input_scale x weight_scale, so it adds straight onto the accumulator.

    Raises BiasOverflowError, naming the channel, where ``rint(bias / scale)`` leaves int32 (a
    bias enormous against a tiny input or weight scale) instead of silently saturating."""
    scales = np.float64(input_scale) * np.asarray(weight_scales, dtype=np.float64)
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise ValueError(f"bias scale input_scale x weight_scale must be finite and > 0; got {scales}")
    values = np.rint(np.asarray(bias, dtype=np.float64) / scales)
    outside = np.flatnonzero(~(np.abs(values) <= INT32_MAX))
    if outside.size:
        channel = int(outside[0])
        flat_bias = np.broadcast_to(np.asarray(bias, dtype=np.float64), values.shape).ravel()
        flat_scale = np.broadcast_to(scales, values.shape).ravel()
        raise BiasOverflowError(
            f"bias of channel {channel} ({flat_bias[channel]!r}) at scale {flat_scale[channel]!r} "
            f"(input_scale x weight_scale) is {values.ravel()[channel]:.4g}, outside int32 "
            f"({outside.size} channel(s) overflow): check the calibration of the layer's input, or "
            "keep this layer in float"
        )
    return values.astype(np.int32)


def _by_blocks(func: Callable[..., Any], dtype: Any, *arrays: Any) -> Any:
    """``func(*arrays).astype(dtype)`` over blocks of the leading axis of their broadcast shape, so
    that the float temporaries of a large tensor stay in cache. One call on CuPy arrays."""
    xp = array_module(*arrays)
    shape = np.broadcast_shapes(*(np.shape(array) for array in arrays))
    size = int(np.prod(shape))
    if xp is not np or not shape or size <= BLOCK_ELEMENTS or shape[0] == 1:
        return xp.asarray(func(*arrays)).astype(dtype)
    arrays = tuple(np.broadcast_to(array, shape) for array in arrays)
    out = np.empty(shape, dtype=dtype)
    step = max(1, BLOCK_ELEMENTS // (size // shape[0]))
    for start in range(0, shape[0], step):
        rows = slice(start, start + step)
        out[rows] = func(*(array[rows] for array in arrays))
    return out


def _as_float32(xp: Any, scale: Any) -> Any:
    """The scale as float32 for arrays of ``xp``, checked > 0 where it lives.

    A graph's scales are host values: they are checked on the host, and a single one travels as a
    scalar kernel argument, so no QuantizeTensor waits for the device to answer a check. Only a
    scale already on the device is checked there (one synchronisation)."""
    if array_module(scale) is not np:
        scale = scale.astype(xp.float32, copy=False)
        valid = bool(xp.all(scale > 0))
    else:
        scale = np.asarray(scale, dtype=np.float32)
        valid = bool(np.all(scale > 0))
    if not valid:
        raise ValueError(f"quantization scale must be > 0; got {scale}")
    if scale.ndim == 0:
        return scale[()]
    return xp.asarray(scale)


def _check_bounds(low: int, high: int) -> None:
    """int8 bounds (-128..127), or uint8 bounds (0..255) for a non-negative tensor."""
    if not (INT8_MIN <= low <= high <= INT8_MAX or 0 <= low <= high <= UINT8_MAX):
        raise ValueError(
            f"clip bounds low={low}, high={high} must satisfy -128 <= low <= high <= 127 (int8) or "
            "0 <= low <= high <= 255 (uint8)"
        )

"""2-D pooling (NCHW, ONNX semantics): max and average in float, max and window sums in int8.

The windows come from ``int8flow.kernels.conv.Windows``: the input is padded and split into stride phases
once, then every tap of the window is one contiguous slice, combined into the result with one
vectorised ``maximum`` or ``add`` per tap. Images are processed in cache-sized blocks.

Element counts per window (the divisor of an average) depend only on the geometry, so they are
computed once per axis and multiplied: the count of window ``(h, w)`` is rows(h) x columns(w).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from int8flow.kernels.backend import array_module
from int8flow.kernels.conv import BLOCK_BYTES, Pads, Pair, Windows


def max_pool2d(
    x: Any, kernel: Pair, strides: Pair, pads: Pads, dilations: Pair = (1, 1), ceil_mode: bool = False
) -> Any:
    """ONNX MaxPool. Float pads are -inf; int8/uint8 pads are the type's minimum, so quantized max
    pooling is exact and keeps the dtype (max commutes with the monotone quantization)."""
    xp = array_module(x)
    fill: float
    if x.dtype in (xp.int8, xp.uint8):
        fill = int(np.iinfo(x.dtype).min)
    elif x.dtype.kind == "f":
        fill = -np.inf
    else:
        raise TypeError(f"max_pool2d takes a float, int8 or uint8 tensor; got {x.dtype}")
    windows = _windows(x, kernel, strides, pads, dilations, ceil_mode)
    return _reduce(x, windows, fill, x.dtype, xp.maximum)


def average_pool2d(
    x: Any, kernel: Pair, strides: Pair, pads: Pads, count_include_pad: bool = False, ceil_mode: bool = False
) -> Any:
    """ONNX AveragePool on floats: window sums over the count of input elements in the window,
    or of input and pad elements when ``count_include_pad``."""
    xp = array_module(x)
    if x.dtype.kind != "f":
        raise TypeError(f"average_pool2d takes a float tensor; got {x.dtype} (int8 uses window_sums_int32)")
    windows = _windows(x, kernel, strides, pads, (1, 1), ceil_mode)
    sums = _reduce(x, windows, 0, x.dtype, xp.add)
    sums /= xp.asarray(window_counts(windows, count_include_pad), dtype=x.dtype)
    return sums


def global_average_pool(x: Any) -> Any:
    """ONNX GlobalAveragePool: the mean over H and W, keeping them as size-1 axes."""
    xp = array_module(x)
    return xp.mean(x, axis=(2, 3), keepdims=True, dtype=x.dtype)


def window_sums_int32(
    x: Any, kernel: Pair, strides: Pair, pads: Pads, count_include_pad: bool = False, ceil_mode: bool = False
) -> tuple[Any, np.ndarray]:
    """Exact int32 sums of the windows of an int8 or uint8 tensor (zero padding), and the element count
    of each window as an int32 (Ho, Wo) array: the INT8 average pool divides by it when it requantizes."""
    xp = array_module(x)
    if x.dtype not in (xp.int8, xp.uint8):
        raise TypeError(f"window_sums_int32 takes an int8 or uint8 tensor; got {x.dtype}")
    windows = _windows(x, kernel, strides, pads, (1, 1), ceil_mode)
    return _reduce(x, windows, 0, xp.int32, xp.add), window_counts(windows, count_include_pad)


def window_counts(windows: Windows, count_include_pad: bool) -> np.ndarray:
    """Elements of each window (int32, (Ho, Wo)) that lie in the input, or in the input and its
    explicit pads. Positions that ceil mode adds past the pads never count."""
    per_axis = []
    for axis in (0, 1):
        size, kernel, stride = windows.in_hw[axis], windows.kernel_hw[axis], windows.strides[axis]
        before, after, dilation = windows.pads[axis], windows.pads[axis + 2], windows.dilations[axis]
        low, high = (-before, size + after) if count_include_pad else (0, size)
        starts = np.arange(windows.out_hw[axis]) * stride - before
        taps = starts[:, None] + np.arange(kernel)[None, :] * dilation
        per_axis.append(((taps >= low) & (taps < high)).sum(axis=1))
    return (per_axis[0][:, None] * per_axis[1][None, :]).astype(np.int32)


def _windows(x: Any, kernel: Pair, strides: Pair, pads: Pads, dilations: Pair, ceil_mode: bool) -> Windows:
    if x.ndim != 4:
        raise ValueError(f"input {tuple(x.shape)}: only 2-D pooling of (N, C, H, W) tensors is supported")
    return Windows.of(x.shape[2:], kernel, strides, pads, dilations, ceil_mode)


def _reduce(x: Any, windows: Windows, fill: float, dtype: Any, combine: Any) -> Any:
    """Combine (maximum or add) the taps of every window, in blocks of images that fit in cache."""
    xp = array_module(x)
    n, c = x.shape[:2]
    out = xp.empty((n, c, *windows.out_hw), dtype=dtype)
    image_bytes = c * windows.phase_hw[0] * windows.phase_hw[1] * np.dtype(dtype).itemsize * np.prod(windows.strides)
    step = max(1, BLOCK_BYTES // int(image_bytes)) if xp is np else n
    for n0 in range(0, n, step):
        phases = windows.phases(x[n0 : n0 + step], fill, dtype)
        result = None
        for _, a, b, window in windows.tap_slices():
            tap = phases[a, b, :, :, window]
            result = tap.copy() if result is None else combine(result, tap, out=result)
        out[n0 : n0 + step] = windows.narrow(result)
    return out

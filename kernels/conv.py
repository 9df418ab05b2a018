"""FP32 2-D convolution (NCHW, ONNX semantics), fast on a CPU at batch 32, and its window geometry.

Two shapes cover every convolution:

- **pointwise** (1x1 kernel, no padding): one matmul, weight ``(M, C)`` @ ``x`` viewed as
  ``(N, C, H*W)``, batched over groups; no copy of the input;
- **everything else** (the strided stem, depthwise 3x3/5x5 with stride 1 or 2 and any channel
  multiplier, grouped, dilated): im2col + batched matmul, block by block so that each column block
  (about ``BLOCK_BYTES``) is still in cache when the matmul reads it. Depthwise is the case of one
  input channel per group: per (image, channel), a ``(multiplier, kH*kW) @ (kH*kW, Ho*Wq)`` product.

The columns use a *wide* layout. The padded input is split into ``sh x sw`` stride phases
(``phase[a, b][q, r] = padded[q*sh + a, r*sw + b]``), so every tap of a strided window reads its
phase with stride 1, and an output row is computed ``Wq`` wide instead of ``Wo`` wide (the extra
columns are garbage, dropped when the block is copied out). The window of one tap over a whole
output plane is then one contiguous run of the flattened phase plane, and all the taps that read
one phase are a single strided view: im2col is one copy per stride phase (1, or 4 for stride 2).

Why not a per-tap multiply-add for depthwise: NumPy has no fused multiply-add, so each tap costs a
multiply and an add over the whole output (five memory streams); measured on EfficientNet-Lite0's
depthwise layers at batch 32 it was slower than im2col + matmul, as were channels-last taps and
einsum over the strided windows. Python threads over blocks made things slower on the 2-core
development machine.

``Windows`` holds the geometry; the INT8 convolution (``int8flow.kernels.int8_gemm``) and the pools
(``int8flow.kernels.pooling``) reuse it, so padding, ceil mode, strides and dilations live in one place.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from int8flow.kernels.backend import array_module
from int8flow.kernels.row_stable_matmul import DEVICE_IMAGES, in_fixed_blocks

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]

# Bytes of one im2col block: large enough that the per-block Python work is noise, small enough that
# the block is still in L2/L3 when the matmul reads it (measured best between 1 and 4 MiB).
BLOCK_BYTES = 2 << 20
# On a GPU, blocks only bound memory: fewer, larger launches are faster.
DEVICE_BLOCK_BYTES = 1 << 30

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def pad_amounts(
    auto_pad: str, in_hw: Pair, kernel_hw: Pair, strides: Pair, dilations: Pair, pads: Pads = (0, 0, 0, 0)
) -> Pads:
    """ONNX ``auto_pad`` as explicit (top, left, bottom, right) pads.

    SAME_* pad so that the output is ``ceil(in / stride)``; an odd total goes to the bottom/right for
    SAME_UPPER and to the top/left for SAME_LOWER. NOTSET returns the explicit ``pads``.
    """
    if auto_pad == "NOTSET":
        # Not length-checked here: pads of another length reach Windows.of, which rejects them.
        return cast(Pads, tuple(int(p) for p in pads))
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    if auto_pad not in AUTO_PADS:
        raise ValueError(f"auto_pad={auto_pad!r}: choose one of {', '.join(AUTO_PADS)}")
    before, after = [], []
    for size, kernel, stride, dilation in zip(in_hw, kernel_hw, strides, dilations):
        out = -(-int(size) // int(stride))
        total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size)
        small, large = total // 2, total - total // 2
        before.append(small if auto_pad == "SAME_UPPER" else large)
        after.append(large if auto_pad == "SAME_UPPER" else small)
    return (before[0], before[1], after[0], after[1])


def output_size(
    size: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int, ceil_mode: bool
) -> int:
    """Output length along one axis; in ceil mode the last window must start inside the input or its
    leading pad (the ONNX Runtime and PyTorch rule)."""
    span = size + pad_before + pad_after - (kernel - 1) * dilation - 1
    if span < 0:
        raise ValueError(
            f"the window ({kernel} taps, dilation {dilation}) is larger than the padded input "
            f"({size} + {pad_before} + {pad_after}): the output would be empty"
        )
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad_before else out


@dataclass(frozen=True)
class Windows:
    """Where the windows of a padded, strided, dilated 2-D input lie, in the wide phase layout."""

    in_hw: Pair
    kernel_hw: Pair
    strides: Pair
    pads: Pads
    dilations: Pair
    out_hw: Pair

    @classmethod
    def of(
        cls,
        in_hw: Pair,
        kernel_hw: Pair,
        strides: Pair = (1, 1),
        pads: Pads = (0, 0, 0, 0),
        dilations: Pair = (1, 1),
        ceil_mode: bool = False,
    ) -> Windows:
        in_hw, kernel_hw = _pair(in_hw, "input size"), _pair(kernel_hw, "kernel_shape")
        strides, dilations = _pair(strides, "strides"), _pair(dilations, "dilations")
        int_pads = tuple(int(p) for p in pads)
        if len(int_pads) != 4 or min(int_pads) < 0:
            raise ValueError(f"pads={int_pads}: expected four non-negative ints (top, left, bottom, right)")
        pads = int_pads
        for name, values in (("strides", strides), ("dilations", dilations), ("kernel_shape", kernel_hw)):
            if min(values) < 1:
                raise ValueError(f"{name}={values}: every value must be >= 1")
        out_h, out_w = (
            output_size(
                in_hw[axis], kernel_hw[axis], strides[axis], pads[axis], pads[axis + 2], dilations[axis], ceil_mode
            )
            for axis in (0, 1)
        )
        return cls(in_hw, kernel_hw, strides, pads, dilations, (out_h, out_w))

    @property
    def taps(self) -> int:
        return self.kernel_hw[0] * self.kernel_hw[1]

    @property
    def phase_hw(self) -> Pair:
        """Rows and columns of one stride phase: the output plus the largest tap offset, and one
        spare row so that the garbage columns of the last output row stay inside the buffer."""
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = self.kernel_hw, self.strides, self.dilations, self.out_hw
        return ho + (kh - 1) * dh // sh + 1, wo + (kw - 1) * dw // sw

    @property
    def wide_len(self) -> int:
        """Length of one output plane in the wide layout (``Ho`` rows of ``Wq``)."""
        return self.out_hw[0] * self.phase_hw[1]

    def tap_slices(self) -> Iterator[tuple[int, int, int, slice]]:
        """(tap index, phase row, phase column, slice of the flattened phase plane) for every tap."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_hw, self.strides, self.dilations
        wq, length = self.phase_hw[1], self.wide_len
        for i in range(kh):
            for j in range(kw):
                start = (i * dh // sh) * wq + j * dw // sw
                yield i * kw + j, i * dh % sh, j * dw % sw, slice(start, start + length)

    def phase_taps(self) -> list[tuple[int, int, list[int], list[int]]]:
        """(phase row, phase column, kernel rows, kernel columns) for each stride phase some tap
        reads. The rows of one phase sit at evenly spaced offsets in it (likewise the columns), so
        all its taps are one strided view of the phase plane."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_hw, self.strides, self.dilations
        groups = []
        for a in range(sh):
            rows = [i for i in range(kh) if i * dh % sh == a]
            for b in range(sw):
                cols = [j for j in range(kw) if j * dw % sw == b]
                if rows and cols:
                    groups.append((a, b, rows, cols))
        return groups

    def column_taps(self) -> list[int]:
        """Kernel tap (i * kW + j) of each row of ``columns``: grouped by stride phase."""
        kw = self.kernel_hw[1]
        return [i * kw + j for _, _, rows, cols in self.phase_taps() for i in rows for j in cols]

    def phases(self, x: Any, fill: float | int, dtype: Any) -> Any:
        """``x`` (N, C, H, W) padded with ``fill`` and split into stride phases, as ``dtype``:
        shape (sh, sw, N, C, Hq*Wq). Each phase is copied straight from ``x`` (one strided copy;
        the dtype conversion, e.g. int8 to float32, happens in that same copy)."""
        xp = array_module(x)
        n, c, h, w = x.shape
        (sh, sw), (hq, wq) = self.strides, self.phase_hw
        shape = (sh, sw, n, c, hq, wq)
        out = xp.zeros(shape, dtype=dtype) if fill == 0 else xp.full(shape, fill, dtype=dtype)
        for a in range(sh):
            q0, r0, rows = _phase_span(a, self.pads[0], sh, h, hq)
            for b in range(sw):
                p0, c0, cols = _phase_span(b, self.pads[1], sw, w, wq)
                if rows and cols:
                    source = x[:, :, r0 : r0 + (rows - 1) * sh + 1 : sh, c0 : c0 + (cols - 1) * sw + 1 : sw]
                    out[a, b, :, :, q0 : q0 + rows, p0 : p0 + cols] = source
        return out.reshape(sh, sw, n, c, hq * wq)

    def columns(self, x: Any, dtype: Any) -> Any:
        """im2col of ``x`` (N, C, H, W) with zero padding, wide layout: (N, C, kH*kW, Ho*Wq), the
        taps in ``column_taps`` order. One strided copy per stride phase (1 for stride 1, 4 for
        stride 2) instead of one per tap: fewer, longer copies."""
        xp = array_module(x)
        phases = self.phases(x, 0, dtype)
        n, c = x.shape[:2]
        (sh, sw), (dh, dw), wq, length = self.strides, self.dilations, self.phase_hw[1], self.wide_len
        as_strided = xp.lib.stride_tricks.as_strided
        item = phases.itemsize
        cols = xp.empty((n, c, self.taps, length), dtype=dtype)
        first = 0
        for a, b, rows, cols_j in self.phase_taps():
            shape = (n, c, len(rows), len(cols_j), length)
            plane = phases[a, b, :, :, (rows[0] * dh // sh) * wq + cols_j[0] * dw // sw :]
            row_step = (rows[1] - rows[0]) * dh // sh * wq if len(rows) > 1 else 0
            col_step = (cols_j[1] - cols_j[0]) * dw // sw if len(cols_j) > 1 else 0
            windows = as_strided(plane, shape, (*plane.strides[:2], row_step * item, col_step * item, item))
            target = cols[:, :, first:]
            target_strides = target.strides
            as_strided(target, shape, (*target_strides[:2], len(cols_j) * target_strides[2], *target_strides[2:]))[
                ...
            ] = windows
            first += len(rows) * len(cols_j)
        return cols

    def narrow(self, wide: Any) -> Any:
        """A wide result (..., Ho*Wq) as the real output (..., Ho, Wo): a view, no copy."""
        ho, wo = self.out_hw
        return wide.reshape(*wide.shape[:-1], ho, self.phase_hw[1])[..., :wo]


def conv2d(
    x: Any,
    weight: Any,
    bias: Any | None = None,
    strides: Pair = (1, 1),
    pads: Pads = (0, 0, 0, 0),
    dilations: Pair = (1, 1),
    groups: int = 1,
) -> Any:
    """ONNX Conv in float32: ``x`` (N, C, H, W), ``weight`` (M, C/groups, kH, kW), ``bias`` (M,)."""
    xp = array_module(x, weight)
    if x.dtype != xp.float32:
        raise TypeError(f"conv2d computes in float32 but the input is {x.dtype}: cast it first")
    weight = weight.astype(xp.float32, copy=False)
    windows = check_conv(x, weight, strides, pads, dilations, groups)
    if bias is not None:
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(
                f"bias has shape {tuple(bias.shape)}; expected ({weight.shape[0]},), one per output channel"
            )
        bias = xp.asarray(bias, dtype=xp.float32)

    def run(images: Any) -> Any:
        return convolve(images, weight, windows, groups, xp.matmul, xp.float32, xp.float32, bias)

    # On a device, batched GEMMs of a varying image count could sum differently: fixed blocks.
    return run(x) if xp is np else in_fixed_blocks(run, x, DEVICE_IMAGES)


def check_conv(x: Any, weight: Any, strides: Pair, pads: Pads, dilations: Pair, groups: int) -> Windows:
    """The window geometry of a convolution, after checking that input, weight and groups agree."""
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(
            f"input {tuple(x.shape)} and weight {tuple(weight.shape)}: only 2-D convolution is supported "
            "(input N, C, H, W and weight M, C/groups, kH, kW)"
        )
    channels, (out_channels, group_channels) = x.shape[1], weight.shape[:2]
    if groups < 1 or channels != group_channels * groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} does not fit input channels {channels}, weight {tuple(weight.shape)}: "
            "need C == weight.shape[1] * groups and M divisible by groups"
        )
    return Windows.of(x.shape[2:], weight.shape[2:], strides, pads, dilations)


def convolve(
    x: Any,
    weight: Any,
    windows: Windows,
    groups: int,
    product: Callable[[Any, Any], Any],
    col_dtype: Any,
    out_dtype: Any,
    bias: Any | None = None,
    k_multiple: int = 1,
) -> Any:
    """The shared convolution driver: ``product(weight (G, Mg, Kp), columns (n, G, K, L))`` does the
    arithmetic (float32 matmul, or the exact INT8 one) on blocks laid out here. A bias is added
    while each block is copied out, saving a pass over the output. The weights are laid out for the
    product once per weight array (``gemm_weights``), K zero-padded to ``k_multiple``."""
    xp = array_module(x)
    n, c = x.shape[:2]
    m = weight.shape[0]
    ho, wo = windows.out_hw
    per_channel = None if bias is None else bias.reshape(-1, 1, 1)
    pointwise = windows.kernel_hw == (1, 1) and windows.pads == (0, 0, 0, 0)
    tap_order = None if pointwise else _channel_tap_order(c // groups, windows)
    weights = gemm_weights(weight, groups, col_dtype, tap_order, k_multiple)
    if pointwise:
        sh, sw = windows.strides
        picked = x[:, :, ::sh, ::sw] if (sh, sw) != (1, 1) else x
        if picked.dtype == col_dtype and col_dtype == out_dtype:
            # One matmul writes the output: no conversion, no copy.
            out = product(weights, xp.ascontiguousarray(picked).reshape(n, groups, c // groups, ho * wo))
            out = out.reshape(n, m, ho, wo)
        else:
            # Convert (e.g. int8 -> float32 -> int32) in cache-sized blocks of images rather than
            # through full-size temporaries.
            out = xp.empty((n, m, ho, wo), dtype=out_dtype)
            step = n if xp is not np else max(1, BLOCK_BYTES // (c * ho * wo * np.dtype(col_dtype).itemsize))
            for n0 in range(0, n, step):
                columns = xp.ascontiguousarray(picked[n0 : n0 + step], dtype=col_dtype)
                columns = columns.reshape(columns.shape[0], groups, c // groups, ho * wo)
                out[n0 : n0 + step] = product(weights, columns).reshape(columns.shape[0], m, ho, wo)
        if per_channel is not None:
            out += per_channel
        return out
    out = xp.empty((n, m, ho, wo), dtype=out_dtype)
    group_bytes = (c // groups) * windows.taps * windows.wide_len * np.dtype(col_dtype).itemsize
    out_per_group = m // groups
    for n0, n1, g0, g1 in _blocks(n, groups, group_bytes, BLOCK_BYTES if xp is np else DEVICE_BLOCK_BYTES):
        channels = slice(g0 * (c // groups), g1 * (c // groups))
        outputs = slice(g0 * out_per_group, g1 * out_per_group)
        columns = windows.columns(x[n0:n1, channels], col_dtype).reshape(n1 - n0, g1 - g0, -1, windows.wide_len)
        block = windows.narrow(product(weights[g0:g1], columns).reshape(n1 - n0, (g1 - g0) * out_per_group, -1))
        if per_channel is None:
            out[n0:n1, outputs] = block
        else:
            xp.add(block, per_channel[outputs], out=out[n0:n1, outputs])
    return out


_PREPARED: dict[int, tuple[weakref.ref, tuple, Any]] = {}


def gemm_weights(weight: Any, groups: int, dtype: Any, tap_order: np.ndarray | None, k_multiple: int) -> Any:
    """``weight`` (M, C/groups, kH, kW) as the product's (G, M/G, Kp): converted, its columns in
    ``tap_order``, K zero-padded to a multiple of ``k_multiple``. Made once per weight array and kept
    while that array lives: a graph's weights are the same arrays batch after batch, so the copy
    (and, on the GPU, the padding cuBLAS needs) is not redone per call."""
    key = (groups, np.dtype(dtype).str, None if tap_order is None else tap_order.tobytes(), k_multiple)
    cached = _PREPARED.get(id(weight))
    if cached is not None and cached[0]() is weight and cached[1] == key:
        return cached[2]
    xp = array_module(weight)
    weights = weight.astype(dtype, copy=False).reshape(groups, weight.shape[0] // groups, -1)
    if tap_order is not None:
        weights = weights[:, :, xp.asarray(tap_order)]
    k = weights.shape[2]
    k_padded = -(-k // k_multiple) * k_multiple
    if k_padded != k:
        padded = xp.zeros((*weights.shape[:2], k_padded), dtype=dtype)
        padded[:, :, :k] = weights
        weights = padded
    weight_id = id(weight)
    cache = _PREPARED  # the callback may run at interpreter exit, after module globals are cleared

    def forget(_: weakref.ref) -> None:
        cache.pop(weight_id, None)

    _PREPARED[weight_id] = (weakref.ref(weight, forget), key, weights)
    return weights


def _channel_tap_order(group_channels: int, windows: Windows) -> np.ndarray:
    """Weight columns (channel * taps + tap) in the order of the column rows (channel, column_taps)."""
    taps = np.asarray(windows.column_taps())
    return (np.arange(group_channels)[:, None] * windows.taps + taps[None, :]).ravel()


def _blocks(n: int, groups: int, group_bytes: int, budget: int) -> Iterator[tuple[int, int, int, int]]:
    """(first image, end image, first group, end group) blocks of about ``budget`` bytes of columns:
    whole images when one fits, else runs of groups inside one image."""
    image_bytes = groups * group_bytes
    if image_bytes <= budget:
        step = budget // image_bytes
        for n0 in range(0, n, step):
            yield n0, min(n, n0 + step), 0, groups
        return
    step = max(1, budget // group_bytes)
    for image in range(n):
        for g0 in range(0, groups, step):
            yield image, image + 1, g0, min(groups, g0 + step)


def _phase_span(phase: int, pad: int, stride: int, size: int, phase_len: int) -> tuple[int, int, int]:
    """For one stride phase along one axis: (first phase index holding input data, the input index it
    holds, how many input samples land in the phase). Phase index q holds input q*stride + phase - pad."""
    first = max(0, -((phase - pad) // stride))
    start = first * stride + phase - pad
    count = max(0, min(phase_len - first, -(-(size - start) // stride)))
    return first, start, count


def _pair(values: Any, name: str) -> Pair:
    pair = tuple(int(v) for v in values)
    if len(pair) != 2:
        raise ValueError(f"{name}={tuple(values)}: expected two values (height, width); only 2-D is supported")
    return pair

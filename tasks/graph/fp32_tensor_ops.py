"""Tensor, shape and reduction ops: what exporters emit around the layers (channel shuffle, Split,
Slice, Resize, the Shape/Gather/Concat arithmetic of a dynamic batch), on NumPy or CuPy arrays.

Shape arithmetic stays exact and on the host: ``Shape`` and ``Size`` return NumPy int64 whatever
the array module of their input, int64 constants stay NumPy arrays (``executor``), so Gather,
Concat, Range and the rest of a shape computation run in int64 on the host, where Reshape, Expand,
Tile, Slice and Resize read it (their ``TENSOR_HOST_INPUTS``). Nothing is folded for a traced batch
size: the arithmetic runs for every batch, so a batch the exporter never saw gets its own shapes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from int8flow.kernels.backend import array_module, to_numpy
from int8flow.tasks.graph.ir import Node
from int8flow.tasks.graph.op_types import NodeCheck, OpFunction, UnsupportedModelError

AXES_INPUT_SINCE = {"ReduceSum": 13}
"""Reductions take their axes as an input from opset 18; ReduceSum already from 13."""
RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
RESIZE_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def host_ints(value: Any) -> list[int]:
    """An int64 tensor read on the host (an explicit copy when it lives on the device)."""
    return [int(item) for item in np.ravel(to_numpy(value)).tolist()]


def given(inputs: list[Any], position: int) -> bool:
    """Whether an optional input was given (present, not the empty name, not an empty tensor)."""
    return len(inputs) > position and inputs[position] is not None and math.prod(inputs[position].shape) > 0


def reduce_axes(node: Node, inputs: list[Any], opset: int, rank: int) -> tuple[int, ...]:
    """The reduced axes of a Reduce* node: its axes input or attribute, or every axis when none are
    given, unless ``noop_with_empty_axes`` asks for the identity."""
    from_input = opset >= AXES_INPUT_SINCE.get(node.op_type, 18)
    axes = (host_ints(inputs[1]) if given(inputs, 1) else None) if from_input else node.attribute("axes")
    if axes is None or len(axes) == 0:
        return () if node.attribute("noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(int(axis) % rank for axis in axes)


def reduction(fn: Any) -> OpFunction:
    """A Reduce* op from ``fn(x, axes, keepdims)``. Empty axes (``noop_with_empty_axes``) reduce over
    nothing, which is not quite the identity: onnxruntime's ReduceL2 then gives |x|, SumSquare x*x.
    A reduction to one value is a 0-d array, never a NumPy scalar."""

    def run(node: Node, inputs: list[Any], opset: int) -> list[Any]:
        x = inputs[0]
        axes = reduce_axes(node, inputs, opset, x.ndim)
        return [array_module(x).asarray(fn(x, axes, bool(node.attribute("keepdims", 1))))]

    return run


def _shape(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    shape = tuple(inputs[0].shape)
    start, end = node.attribute("start", 0), node.attribute("end")
    return [np.array(shape[start:end], dtype=np.int64)]


def _size(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    return [np.array(math.prod(inputs[0].shape), dtype=np.int64)]


def _constant_of_shape(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    value = node.attribute("value")
    fill = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value)
    return [np.full(tuple(host_ints(inputs[0])), fill.reshape(-1)[0], dtype=fill.dtype)]


def _range(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    start, limit, delta = (to_numpy(value).reshape(()) for value in inputs[:3])
    count = max(int(math.ceil((limit.item() - start.item()) / delta.item())), 0)
    return [(start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)]


def _squeeze(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    if given(inputs, 1):
        axes = tuple(axis % x.ndim for axis in host_ints(inputs[1]))
    else:
        axes = tuple(axis for axis, dim in enumerate(x.shape) if dim == 1)
    return [x.reshape(tuple(dim for axis, dim in enumerate(x.shape) if axis not in axes))]


def _unsqueeze(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    rank = x.ndim + len(host_ints(inputs[1]))
    axes = {axis % rank for axis in host_ints(inputs[1])}
    dims = iter(x.shape)
    return [x.reshape(tuple(1 if axis in axes else next(dims) for axis in range(rank)))]


def _expand(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    xp = array_module(x)
    shape = np.broadcast_shapes(tuple(x.shape), tuple(host_ints(inputs[1])))
    return [xp.ascontiguousarray(xp.broadcast_to(x, shape))]


def _tile(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    return [array_module(inputs[0]).tile(inputs[0], tuple(host_ints(inputs[1])))]


def from_the_start(indices: Any, dims: Any) -> Any:
    """Gather indices with the negative ones (counted from the end of their axis) made positive."""
    return array_module(indices).where(indices < 0, indices + dims, indices)


def _gather(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    data, indices = inputs
    xp = array_module(data, indices)
    axis = int(node.attribute("axis", 0)) % data.ndim
    return [xp.asarray(xp.take(data, from_the_start(indices, data.shape[axis]), axis=axis))]


def _gather_elements(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    data, indices = inputs
    xp = array_module(data, indices)
    axis = int(node.attribute("axis", 0)) % data.ndim
    return [xp.take_along_axis(data, from_the_start(indices, data.shape[axis]), axis=axis)]


def _gather_nd(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    """GatherND: the leading ``batch_dims`` axes pair data with indices; each index row of length k
    picks data[..., i_0, ..., i_k-1] (negative entries count from the end)."""
    data, indices = inputs
    xp = array_module(data, indices)
    batch = int(node.attribute("batch_dims", 0))
    depth = indices.shape[-1]
    batch_shape = tuple(data.shape[:batch])
    count = math.prod(batch_shape)
    flat_data = data.reshape((count, *data.shape[batch:]))
    flat_indices = indices.reshape((count, *indices.shape[batch:]))
    flat_indices = from_the_start(flat_indices, xp.asarray(np.array(data.shape[batch : batch + depth], np.int64)))
    rows = xp.arange(count).reshape((count,) + (1,) * (flat_indices.ndim - 2))
    picked = flat_data[(rows, *(flat_indices[..., axis] for axis in range(depth)))]
    return [picked.reshape(tuple(indices.shape[:-1]) + tuple(data.shape[batch + depth :]))]


def slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice's clamping as a Python slice: negative positions count from the end, then starts and
    ends clamp to the axis ([0, dim] forwards, [-1, dim - 1] backwards, -1 meaning before the first)."""
    start, end = (value + dim if value < 0 else value for value in (start, end))
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start, end = min(max(start, -1), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


def _slice(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    starts, ends = host_ints(inputs[1]), host_ints(inputs[2])
    axes = [axis % x.ndim for axis in host_ints(inputs[3])] if given(inputs, 3) else list(range(len(starts)))
    steps = host_ints(inputs[4]) if given(inputs, 4) else [1] * len(starts)
    key = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise UnsupportedModelError(f"node {node.name!r} (Slice): a step of 0 on axis {axis} is invalid")
        key[axis] = slice_bounds(start, end, step, x.shape[axis])
    return [x[tuple(key)]]


def _split(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    axis = int(node.attribute("axis", 0)) % x.ndim
    dim, count = x.shape[axis], len(node.outputs)
    if given(inputs, 1):
        sizes = host_ints(inputs[1])
    else:
        chunk = -(-dim // int(node.attribute("num_outputs", count)))
        sizes = [min(chunk, dim - chunk * index) for index in range(count)]
    if sum(sizes) != dim or len(sizes) != count or min(sizes) < 0:
        raise UnsupportedModelError(
            f"node {node.name!r} (Split): parts {sizes} do not split axis {axis} of size {dim} into {count} outputs"
        )
    bounds = np.cumsum([0, *sizes]).tolist()
    key = [slice(None)] * x.ndim
    return [x[tuple(key[:axis] + [slice(low, high)] + key[axis + 1 :])] for low, high in zip(bounds, bounds[1:])]


def _arg_extreme(pick: str) -> OpFunction:
    """ArgMax/ArgMin: the first extreme index, or the last with ``select_last_index``."""

    def run(node: Node, inputs: list[Any], opset: int) -> list[Any]:
        x = inputs[0]
        xp = array_module(x)
        axis = int(node.attribute("axis", 0)) % x.ndim
        choose = getattr(xp, pick)
        if node.attribute("select_last_index", 0):
            index = x.shape[axis] - 1 - choose(xp.flip(x, axis=axis), axis=axis)
        else:
            index = choose(x, axis=axis)
        index = index.astype(np.int64)
        return [xp.expand_dims(index, axis) if node.attribute("keepdims", 1) else index]

    return run


def _depth_to_space(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    block = int(node.attribute("blocksize"))
    n, c, h, w = x.shape
    depth = c // (block * block)
    if node.attribute("mode", "DCR") == "DCR":
        moved = x.reshape(n, block, block, depth, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        moved = x.reshape(n, depth, block, block, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [moved.reshape(n, depth, h * block, w * block)]


def _space_to_depth(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    block = int(node.attribute("blocksize"))
    n, c, h, w = x.shape
    moved = x.reshape(n, c, h // block, block, w // block, block).transpose(0, 3, 5, 1, 2, 4)
    return [moved.reshape(n, c * block * block, h // block, w // block)]


def resize_plan(node: Node, inputs: list[Any], opset: int) -> list[tuple[int, int, np.float32]]:
    """(axis, output length, scale) of every axis, from the scales or the sizes (of ``axes`` only, from
    opset 18); scales of sizes are out/in in float32, as onnxruntime computes them."""
    x = inputs[0]
    axes = [axis % x.ndim for axis in node.attribute("axes", range(x.ndim))]
    lengths = [int(dim) for dim in x.shape]
    scales = [np.float32(1.0)] * x.ndim
    if given(inputs, 2):
        for axis, scale in zip(axes, np.ravel(to_numpy(inputs[2])).astype(np.float32)):
            lengths[axis], scales[axis] = int(math.floor(x.shape[axis] * float(scale))), scale
    elif given(inputs, 3):
        for axis, size in zip(axes, host_ints(inputs[3])):
            lengths[axis], scales[axis] = size, np.float32(size) / np.float32(x.shape[axis])
    else:
        raise UnsupportedModelError(f"node {node.name!r} (Resize): neither scales nor sizes is given")
    return [(axis, lengths[axis], scales[axis]) for axis in range(x.ndim)]


def source_coordinates(node: Node, length_in: int, length_out: int, scale: np.float32) -> np.ndarray:
    """Where each output position samples the input, in float32 like onnxruntime."""
    out = np.arange(length_out, dtype=np.float32)
    mode = node.attribute("coordinate_transformation_mode", "half_pixel")
    if mode == "asymmetric":
        return out / scale
    if mode == "align_corners":
        if length_out == 1:
            return np.zeros(1, dtype=np.float32)
        return out * np.float32(length_in - 1) / np.float32(length_out - 1)
    if mode == "pytorch_half_pixel" and length_out == 1:
        return np.zeros(1, dtype=np.float32)
    return (out + np.float32(0.5)) / scale - np.float32(0.5)


def nearest_indices(node: Node, coordinates: np.ndarray, length_in: int) -> np.ndarray:
    mode = node.attribute("nearest_mode", "round_prefer_floor")
    if mode == "floor":
        index = np.floor(coordinates)
    elif mode == "ceil":
        index = np.ceil(coordinates)
    elif mode == "round_prefer_ceil":
        index = np.floor(coordinates + np.float32(0.5))
    else:
        index = np.ceil(coordinates - np.float32(0.5))
    return np.clip(index, 0, length_in - 1).astype(np.int64)


def _resize(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    """Nearest and (multi)linear Resize, one axis at a time: both are separable, so every axis whose
    length or scale changes is resampled in turn; indices and weights are built on the host."""
    x = inputs[0]
    xp = array_module(x)
    linear = node.attribute("mode", "nearest") == "linear"
    for axis, length_out, scale in resize_plan(node, inputs, opset):
        length_in = x.shape[axis]
        if length_out == length_in and scale == 1:
            continue
        coordinates = source_coordinates(node, length_in, length_out, scale)
        if not linear:
            x = xp.take(x, xp.asarray(nearest_indices(node, coordinates, length_in)), axis=axis)
            continue
        clamped = np.clip(coordinates, np.float32(0.0), np.float32(length_in - 1))
        low = np.floor(clamped).astype(np.int64)
        high = np.minimum(low + 1, length_in - 1)
        weight_shape = [1] * x.ndim
        weight_shape[axis] = length_out
        weight = xp.asarray((clamped - low).astype(x.dtype).reshape(weight_shape))
        below = xp.take(x, xp.asarray(low), axis=axis)
        above = xp.take(x, xp.asarray(high), axis=axis)
        x = below + (above - below) * weight
    return [x]


def _resize_check(node: Node, opset: int) -> str | None:
    mode = node.attribute("mode", "nearest")
    coordinates = node.attribute("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        return f"Resize mode {mode!r} is not supported (nearest and linear are): re-export with one of them"
    if coordinates not in RESIZE_COORDINATE_MODES:
        return (
            f"Resize coordinate_transformation_mode {coordinates!r} is not supported "
            f"({', '.join(RESIZE_COORDINATE_MODES)} are)"
        )
    nearest = node.attribute("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in RESIZE_NEAREST_MODES:
        return f"Resize nearest_mode {nearest!r} is not supported ({', '.join(RESIZE_NEAREST_MODES)} are)"
    if node.attribute("antialias", 0):
        return "Resize antialias=1 is not supported: re-export without antialiasing"
    policy = node.attribute("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        return f"Resize keep_aspect_ratio_policy {policy!r} is not supported (stretch is)"
    return None


def _depth_to_space_check(node: Node, opset: int) -> str | None:
    mode = node.attribute("mode", "DCR")
    return None if mode in ("DCR", "CRD") else f"DepthToSpace mode {mode!r} is not defined (DCR, CRD are)"


def _sum_squares(x: Any, axes: tuple[int, ...], keepdims: bool) -> Any:
    return (x * x).sum(axis=axes, keepdims=keepdims, dtype=x.dtype)


TENSOR_OPS: dict[str, OpFunction] = {
    "Shape": _shape,
    "Size": _size,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Expand": _expand,
    "Tile": _tile,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "GatherND": _gather_nd,
    "Slice": _slice,
    "Split": _split,
    "ReduceMax": reduction(lambda x, axes, keepdims: x.max(axis=axes, keepdims=keepdims)),
    "ReduceMin": reduction(lambda x, axes, keepdims: x.min(axis=axes, keepdims=keepdims)),
    "ReduceSum": reduction(lambda x, axes, keepdims: x.sum(axis=axes, keepdims=keepdims, dtype=x.dtype)),
    "ReduceProd": reduction(lambda x, axes, keepdims: x.prod(axis=axes, keepdims=keepdims, dtype=x.dtype)),
    "ReduceSumSquare": reduction(_sum_squares),
    "ReduceL2": reduction(lambda x, axes, keepdims: array_module(x).sqrt(_sum_squares(x, axes, keepdims))),
    "ArgMax": _arg_extreme("argmax"),
    "ArgMin": _arg_extreme("argmin"),
    "GlobalMaxPool": lambda node, inputs, opset: [inputs[0].max(axis=tuple(range(2, inputs[0].ndim)), keepdims=True)],
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "Resize": _resize,
}
TENSOR_HOST_INPUTS: dict[str, frozenset[int]] = {
    "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Split": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    **{op: frozenset({1}) for op in TENSOR_OPS if op.startswith("Reduce")},
}
TENSOR_CHECKS: dict[str, NodeCheck] = {"Resize": _resize_check, "DepthToSpace": _depth_to_space_check}

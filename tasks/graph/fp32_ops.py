"""FP32 implementations of the supported ONNX ops, on NumPy or CuPy arrays.

Each op is ``fn(node, inputs, opset) -> list of outputs``; the array module follows the inputs.
The set is what image classifiers exported from PyTorch/TensorFlow use after simplification;
anything else is refused at load time (``check_supported``) rather than run wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from int8flow.kernels.backend import array_module, to_numpy
from int8flow.kernels.conv import conv2d, pad_amounts
from int8flow.kernels.pooling import average_pool2d, global_average_pool, max_pool2d
from int8flow.kernels.row_stable_matmul import row_stable_matmul
from int8flow.tasks.graph.fp32_elementwise import ELEMENTWISE_CHECKS, ELEMENTWISE_HOST_INPUTS, ELEMENTWISE_OPS
from int8flow.tasks.graph.fp32_tensor_ops import TENSOR_CHECKS, TENSOR_HOST_INPUTS, TENSOR_OPS, reduction
from int8flow.tasks.graph.ir import Graph, Node
from int8flow.tasks.graph.op_types import NodeCheck, OpFunction, UnsupportedModelError

__all__ = ["FP32_OPS", "HOST_INPUTS", "OpFunction", "SUPPORTED_OPS", "UnsupportedModelError", "check_supported"]
OPSETS = range(13, 22)
"""The default-domain opsets whose op definitions the executors follow; ops change meaning between
opsets (Split, Resize, Reduce*), so a model outside the range is refused, not run by guesswork."""


def window_geometry(node: Node, in_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> tuple[tuple, tuple, tuple]:
    """(strides, pads as top/left/bottom/right, dilations) of a Conv or pool node."""
    strides = tuple(node.attribute("strides", [1, 1]))
    dilations = tuple(node.attribute("dilations", [1, 1]))
    auto_pad = node.attribute("auto_pad", "NOTSET")
    if auto_pad != "NOTSET":
        pads = pad_amounts(auto_pad, in_hw, kernel_hw, strides, dilations)
    else:
        pads = tuple(node.attribute("pads", [0, 0, 0, 0]))
    return strides, pads, dilations


def _conv(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    strides, pads, dilations = window_geometry(node, x.shape[2:], weight.shape[2:])
    return [conv2d(x, weight, bias, strides, pads, dilations, int(node.attribute("group", 1)))]


def _gemm(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    a, b = inputs[0], inputs[1]
    if node.attribute("transA", 0):
        a = a.T
    if node.attribute("transB", 0):
        b = b.T
    result = row_stable_matmul(a, b)
    alpha, beta = node.attribute("alpha", 1.0), node.attribute("beta", 1.0)
    if alpha != 1.0:
        result = result * np.float32(alpha)
    if len(inputs) > 2 and inputs[2] is not None:
        result = result + (inputs[2] if beta == 1.0 else inputs[2] * np.float32(beta))
    return [result]


def _clip_bounds(node: Node, inputs: list[Any], opset: int) -> tuple[float | None, float | None]:
    low = float(to_numpy(inputs[1])) if len(inputs) > 1 and inputs[1] is not None else None
    high = float(to_numpy(inputs[2])) if len(inputs) > 2 and inputs[2] is not None else None
    return low, high


def _clip(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    xp = array_module(inputs[0])
    low, high = _clip_bounds(node, inputs, opset)
    return [xp.clip(inputs[0], low, high)]


def _hard_sigmoid(x: Any, alpha: float, beta: float) -> Any:
    xp = array_module(x)
    return xp.clip(x * np.float32(alpha) + np.float32(beta), 0.0, 1.0)


def _unary(fn: Callable[[Node, Any], Any]) -> OpFunction:
    return lambda node, inputs, opset: [fn(node, inputs[0])]


def _binary(fn: Callable[[Any, Any], Any]) -> OpFunction:
    return lambda node, inputs, opset: [fn(inputs[0], inputs[1])]


def _max_pool(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    kernel = tuple(node.attribute("kernel_shape"))
    strides, pads, dilations = window_geometry(node, x.shape[2:], kernel)
    return [max_pool2d(x, kernel, strides, pads, dilations, bool(node.attribute("ceil_mode", 0)))]


def _average_pool(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    kernel = tuple(node.attribute("kernel_shape"))
    strides, pads, _ = window_geometry(node, x.shape[2:], kernel)
    include = bool(node.attribute("count_include_pad", 0))
    return [average_pool2d(x, kernel, strides, pads, include, bool(node.attribute("ceil_mode", 0)))]


def _flatten(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    axis = int(node.attribute("axis", 1)) % max(x.ndim, 1)
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


def reshape_target(node: Node, data_shape: tuple[int, ...], shape: Any) -> tuple[int, ...]:
    target = [int(v) for v in to_numpy(shape).tolist()]
    if not node.attribute("allowzero", 0):
        target = [data_shape[i] if v == 0 else v for i, v in enumerate(target)]
    return tuple(target)


def _reshape(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    return [inputs[0].reshape(reshape_target(node, inputs[0].shape, inputs[1]))]


def _transpose(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    perm = node.attribute("perm")
    return [inputs[0].transpose(perm) if perm is not None else inputs[0].T]


def pad_widths(node: Node, inputs: list[Any], opset: int, rank: int) -> list[tuple[int, int]]:
    pads = to_numpy(inputs[1]).tolist()
    axes = list(range(rank))
    if opset >= 18 and len(inputs) > 3 and inputs[3] is not None:
        axes = [int(a) % rank for a in to_numpy(inputs[3]).tolist()]
    widths = [(0, 0)] * rank
    for position, axis in enumerate(axes):
        widths[axis] = (int(pads[position]), int(pads[position + len(axes)]))
    return widths


def _pad(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    xp = array_module(x)
    widths = pad_widths(node, inputs, opset, x.ndim)
    if any(low < 0 or high < 0 for low, high in widths):
        raise UnsupportedModelError(f"node {node.name!r} (Pad): negative pads (cropping) are not supported")
    mode = node.attribute("mode", "constant")
    if mode == "constant":
        value = float(to_numpy(inputs[2])) if len(inputs) > 2 and inputs[2] is not None else 0.0
        return [xp.pad(x, widths, mode="constant", constant_values=value)]
    return [xp.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])]


def _softmax(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    xp = array_module(x)
    axis = int(node.attribute("axis", -1)) % x.ndim
    shifted = xp.exp(x - x.max(axis=axis, keepdims=True))
    return [shifted / shifted.sum(axis=axis, keepdims=True)]


def _concat(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    xp = array_module(*inputs)
    return [xp.concatenate(inputs, axis=int(node.attribute("axis")))]


def _sigmoid(node: Node, x: Any) -> Any:
    xp = array_module(x)
    return (1.0 / (1.0 + xp.exp(-x))).astype(x.dtype)


CORE_OPS: dict[str, OpFunction] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _binary(lambda a, b: row_stable_matmul(a, b) if a.ndim == 2 and b.ndim == 2 else a @ b),
    "Relu": _unary(lambda node, x: array_module(x).maximum(x, np.float32(0.0))),
    "Clip": _clip,
    "LeakyRelu": _unary(
        lambda node, x: array_module(x).where(x >= 0, x, x * np.float32(node.attribute("alpha", 0.01)))
    ),
    "Sigmoid": _unary(_sigmoid),
    "HardSigmoid": _unary(lambda node, x: _hard_sigmoid(x, node.attribute("alpha", 0.2), node.attribute("beta", 0.5))),
    "HardSwish": _unary(lambda node, x: x * _hard_sigmoid(x, 1.0 / 6.0, 0.5)),
    "Add": _binary(lambda a, b: a + b),
    "Mul": _binary(lambda a, b: a * b),
    "Concat": _concat,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _unary(lambda node, x: global_average_pool(x)),
    "ReduceMean": reduction(lambda x, axes, keepdims: x.mean(axis=axes, keepdims=keepdims, dtype=np.float32)),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Pad": _pad,
    "Softmax": _softmax,
}
FP32_OPS: dict[str, OpFunction] = {**CORE_OPS, **ELEMENTWISE_OPS, **TENSOR_OPS}
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(FP32_OPS))

HOST_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Pad": frozenset({1, 2, 3}),
    "ReduceMean": frozenset({1}),
    "Clip": frozenset({1, 2}),
    **ELEMENTWISE_HOST_INPUTS,
    **TENSOR_HOST_INPUTS,
}
"""Input positions an op reads on the host (a shape, pads, axes, bounds), by op type.

CuPy refuses implicit device-to-host conversion, so the executor keeps constants read only here on
the host, and the ops read these inputs with ``to_numpy``: an explicit copy when one was computed
on the device. Every op that turns an input into Python numbers must list it here."""


def _conv_check(node: Node, opset: int) -> str | None:
    if len(node.attribute("kernel_shape", [0, 0]) or [0, 0]) != 2:
        return "only 2-D (NCHW) Conv is supported"
    return None


def _pad_check(node: Node, opset: int) -> str | None:
    if node.attribute("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"Pad mode {node.attribute('mode')!r} is not supported (constant, reflect, edge, wrap are)"
    return None


NODE_CHECKS: dict[str, NodeCheck] = {"Conv": _conv_check, "Pad": _pad_check, **ELEMENTWISE_CHECKS, **TENSOR_CHECKS}


def check_supported(graph: Graph) -> None:
    """Refuse, up front, any node the executors cannot run: the op, the node, the opset, and what to do."""
    if graph.opset not in OPSETS:
        raise UnsupportedModelError(
            f"{graph.source}: the model uses ONNX opset {graph.opset}; int8flow runs opsets {OPSETS.start} to "
            f"{OPSETS.stop - 1}: re-export it with an opset in that range (torch.onnx.export(..., opset_version=17))"
        )
    for node in graph.nodes:
        if node.op_type not in FP32_OPS:
            raise UnsupportedModelError(
                f"{graph.source}: node {node.name!r} has op type {node.op_type!r} (opset {graph.opset}), which "
                f"int8flow does not run; re-export the model without it, or file an issue naming the op; "
                f"supported ops: {', '.join(SUPPORTED_OPS)}"
            )
        check = NODE_CHECKS.get(node.op_type)
        problem = check(node, graph.opset) if check else None
        if problem:
            raise UnsupportedModelError(
                f"{graph.source}: node {node.name!r} ({node.op_type}, opset {graph.opset}): {problem}"
            )

"""The ops of a quantized graph: int8 tensors in and out, int32 accumulation inside.

A quantized graph also holds FP32 nodes (excluded or unquantizable ops), so the INT8 op table is
the FP32 table plus these. Scales travel as node attributes; per-channel arrays as constants.
"""

from __future__ import annotations

from typing import Any

from int8flow.kernels.backend import array_module
from int8flow.kernels.int8_gemm import int8_conv2d, int8_matmul
from int8flow.kernels.pooling import window_sums_int32
from int8flow.kernels.quantize import add_int8, dequantize, layer_multiplier, quantize, requantize, rescale
from int8flow.tasks.graph.fp32_ops import FP32_OPS, OpFunction, window_geometry
from int8flow.tasks.graph.ir import Node


def _quantize(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    return [quantize(inputs[0], node.attributes["scale"], bool(node.attributes.get("unsigned", False)))]


def _dequantize(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    return [dequantize(inputs[0], node.attributes["scale"])]


def _multiplier(node: Node, weight_scales: Any) -> Any:
    attributes = node.attributes
    return layer_multiplier(attributes["input_scale"], weight_scales, attributes["output_scale"])


def _int8_conv(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x, weight, weight_scales = inputs[:3]
    strides, pads, dilations = window_geometry(node, x.shape[2:], weight.shape[2:])
    accumulators = int8_conv2d(x, weight, strides, pads, dilations, int(node.attribute("group", 1)))
    if len(inputs) > 3:
        accumulators += inputs[3].reshape(1, -1, 1, 1)
    multiplier = _multiplier(node, weight_scales).reshape(1, -1, 1, 1)
    return [requantize(accumulators, multiplier, node.attributes["low"], node.attributes["high"])]


def _int8_matmul(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x, weight, weight_scales = inputs[:3]
    accumulators = int8_matmul(x, weight)
    if len(inputs) > 3:
        accumulators += inputs[3]
    return [requantize(accumulators, _multiplier(node, weight_scales), node.attributes["low"], node.attributes["high"])]


def _int8_add(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    a = node.attributes
    return [add_int8(inputs[0], a["a_scale"], inputs[1], a["b_scale"], a["output_scale"], a["low"], a["high"])]


def _int8_concat(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    xp = array_module(*inputs)
    a = node.attributes
    parts = [rescale(q, scale, a["output_scale"], a["low"], a["high"]) for q, scale in zip(inputs, a["input_scales"])]
    return [xp.concatenate(parts, axis=node.attributes["axis"])]


def _int8_average(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    """Window sums in int32, then one requantization by input_scale / (count x output_scale)."""
    x = inputs[0]
    xp = array_module(x)
    attributes = node.attributes
    kind = attributes["float_op"]
    if kind == "AveragePool":
        kernel = tuple(node.attribute("kernel_shape"))
        strides, pads, _ = window_geometry(node, x.shape[2:], kernel)
        sums, counts = window_sums_int32(
            x, kernel, strides, pads, bool(node.attribute("count_include_pad", 0)), bool(node.attribute("ceil_mode", 0))
        )
    else:
        keepdims = kind == "GlobalAveragePool" or bool(node.attribute("keepdims", 1))
        sums = x.sum(axis=(2, 3), dtype=xp.int32, keepdims=keepdims)
        counts = x.shape[2] * x.shape[3]
    multiplier = attributes["input_scale"] / (xp.asarray(counts, dtype=xp.float64) * attributes["output_scale"])
    return [requantize(sums, multiplier, attributes["low"], attributes["high"])]


def _int8_clip(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    xp = array_module(inputs[0])
    return [xp.clip(inputs[0], node.attributes["low"], node.attributes["high"]).astype(xp.int8)]


INT8_OPS: dict[str, OpFunction] = {
    **FP32_OPS,
    "QuantizeTensor": _quantize,
    "DequantizeTensor": _dequantize,
    "Int8Conv": _int8_conv,
    "Int8MatMul": _int8_matmul,
    "Int8Add": _int8_add,
    "Int8Concat": _int8_concat,
    "Int8MaxPool": FP32_OPS["MaxPool"],  # max_pool2d pads int8 with -128 and returns int8: exact
    "Int8AveragePool": _int8_average,
    "Int8Clip": _int8_clip,
}

"""Bias correction: the second pass over the calibration data, and the shifts it gives each layer.

As NNCF's FastBiasCorrection does, each Conv/Gemm/MatMul is corrected for its own quantization
alone: its INT8 output is computed from the FP32 model's input to it, quantized as the INT8 graph
quantizes it, so corrections do not compound and no layer waits for another (one pass). A worker
runs the FP32 model over its shard and keeps, per layer input, two integer sums per position
(``int8flow.kernels.bias_correction``); per layer it writes the sums over the layer's windows, which
merge across shards by integer addition. The shift is computed once, from the merged integers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from int8flow.kernels.bias_correction import (
    bias_shift,
    conv_output_sums,
    fixed_point_exponent,
    fixed_point_sum,
    linear_output_sums,
    patch_sums,
    quantized_sum,
)
from int8flow.tasks.graph.fp32_ops import window_geometry
from int8flow.tasks.graph.ir import Graph, Node
from int8flow.tasks.graph.onnxruntime_engine import FP32Executor
from int8flow.tasks.graph.quantize_pass import linear_weight, quantized_tensors

LAYER_OPS = {"Int8Conv": "Conv", "Int8MatMul": "Linear"}


@dataclass(frozen=True)
class CorrectedLayer:
    """A quantized layer and how the INT8 graph quantizes its input."""

    node: str
    kind: str  # "Conv" or "Linear"
    tensor: str  # the FP32 model's input tensor of the layer
    scale: float
    unsigned: bool

    @property
    def exponent(self) -> int:
        return fixed_point_exponent(self.scale)


@dataclass(frozen=True)
class LayerSums:
    """A layer's input sums over its windows (kernel offsets, or features), FP32 in fixed point at
    ``2 ** exponent`` and INT8 in steps, both int64, and how many output positions they cover."""

    node: str
    exponent: int
    fp32: np.ndarray
    int8: np.ndarray
    positions: int

    def merge(self, other: LayerSums) -> LayerSums:
        return LayerSums(
            self.node, self.exponent, self.fp32 + other.fp32, self.int8 + other.int8, self.positions + other.positions
        )


def corrected_layers(fp32: Graph, int8: Graph) -> list[CorrectedLayer]:
    """The layers of the INT8 graph (before any correction) with the FP32 tensor each one reads."""
    encodings = quantized_tensors(int8)
    fp32_nodes = {node.name: node for node in fp32.nodes}
    return [
        CorrectedLayer(
            node.name,
            LAYER_OPS[node.op_type],
            fp32_nodes[node.name].inputs[0],
            encodings[node.inputs[0]].scale,
            encodings[node.inputs[0]].unsigned,
        )
        for node in int8.nodes
        if node.op_type in LAYER_OPS
    ]


class InputSums:
    """An FP32 executor observer: per layer input tensor, its per-position sums over the batches."""

    def __init__(self, layers: Iterable[CorrectedLayer]) -> None:
        self.encodings = {layer.tensor: layer for layer in layers}
        self.fp32: dict[str, np.ndarray] = {}
        self.int8: dict[str, np.ndarray] = {}

    @property
    def tensors(self) -> frozenset[str]:
        return frozenset(self.encodings)

    def __call__(self, name: str, values: np.ndarray) -> None:
        layer = self.encodings[name]
        fp32 = fixed_point_sum(values, layer.exponent)
        int8 = quantized_sum(values, layer.scale, layer.unsigned)
        if name in self.fp32:
            fp32 += self.fp32[name]
            int8 += self.int8[name]
        self.fp32[name], self.int8[name] = fp32, int8

    def layer_sums(self, fp32: Graph, layers: Iterable[CorrectedLayer], examples: int) -> list[LayerSums]:
        """Each layer's window sums of the inputs seen, for ``examples`` examples."""
        nodes = {node.name: node for node in fp32.nodes}
        return [self._layer(fp32, nodes[layer.node], layer, examples) for layer in layers if layer.tensor in self.fp32]

    def _layer(self, fp32: Graph, node: Node, layer: CorrectedLayer, examples: int) -> LayerSums:
        fp32_sums, int8_sums = self.fp32[layer.tensor], self.int8[layer.tensor]
        if layer.kind == "Linear":
            features = fp32_sums.shape[-1]
            rows = fp32_sums.size // features
            return LayerSums(
                layer.node,
                layer.exponent,
                fp32_sums.reshape(rows, features).sum(axis=0),
                int8_sums.reshape(rows, features).sum(axis=0),
                rows * examples,
            )
        kernel = fp32.initializers[node.inputs[1]].shape[2:]
        strides, pads, dilations = window_geometry(node, fp32_sums.shape[1:], kernel)
        fp32_windows, positions = patch_sums(fp32_sums, kernel, strides, pads, dilations)
        int8_windows, _ = patch_sums(int8_sums, kernel, strides, pads, dilations)
        return LayerSums(layer.node, layer.exponent, fp32_windows, int8_windows, positions * examples)


def bias_shifts(fp32: Graph, int8: Graph, sums: Mapping[str, LayerSums]) -> dict[str, tuple[float, ...]]:
    """Per layer, what to add to each output channel's bias: mean FP32 output minus mean INT8 output,
    for the weights the INT8 graph (built without corrections) holds."""
    fp32_nodes = {node.name: node for node in fp32.nodes}
    shifts = {}
    for node in int8.nodes:
        if node.op_type not in LAYER_OPS or node.name not in sums:
            continue
        layer = sums[node.name]
        source = fp32_nodes[node.name]
        weight_q, weight_scales = int8.initializers[node.inputs[1]], int8.initializers[node.inputs[2]]
        if node.op_type == "Int8Conv":
            group = int(source.attribute("group", 1))
            weight = fp32.initializers[source.inputs[1]]
            fp32_out = conv_output_sums(weight, layer.fp32, group)
            int8_out = conv_output_sums(weight_q, layer.int8, group)
        else:
            fp32_out = linear_output_sums(linear_weight(fp32, source), layer.fp32)
            int8_out = linear_output_sums(weight_q, layer.int8)
        shift = bias_shift(
            fp32_out, layer.exponent, int8_out, node.attributes["input_scale"], weight_scales, layer.positions
        )
        shifts[node.name] = tuple(float(value) for value in shift)
    return shifts


def measure_bias_corrections(
    fp32: Graph, int8: Graph, executor: FP32Executor, batches: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, tuple[float, ...]]:
    """The shifts the correction stage computes, in one process (benchmarks): one shard, no files."""
    layers = corrected_layers(fp32, int8)
    sums = InputSums(layers)
    examples = 0
    for batch in batches:
        executor.run(batch, sums, sums.tensors)
        examples += len(next(iter(batch.values())))
    return bias_shifts(fp32, int8, {layer.node: layer for layer in sums.layer_sums(fp32, layers, examples)})

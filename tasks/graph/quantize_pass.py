"""Rewriting an FP32 graph to INT8 from a calibration table.

Every tensor of the new graph is either float32 or 8-bit with a per-tensor scale and zero point 0:
symmetric int8 (threshold / 127), or, with ``unsigned_activations``, uint8 (threshold / 255) for
tensors calibrated non-negative. Compute ops (Conv, Gemm, MatMul, residual Add, Concat, pools,
spatial ReduceMean) become ``Int8*`` nodes that read and write int8; a MatMul's bias Add becomes its
int32 bias, and a ReLU/Clip right after Conv/Gemm/MatMul/Add is fused into its requantization
bounds; MaxPool and the ops that only move, copy or select elements
(``PASS_THROUGH_OPS``: reshapes, slices, splits, gathers, nearest Resize, zero Pad) pass int8
through unchanged (exact), and Shape reads the int8 tensor's shape. Everything else, and every
excluded node, runs in FP32: conversions are inserted lazily, one Quantize or Dequantize per tensor,
where a reader needs the other kind.

Weights are int8 per output channel (per tensor as an option); biases int32 with scale
input_scale x weight_scale, so the int32 accumulator needs no rescaling before the bias. A table
with bias corrections (``int8flow.tasks.calibration.bias_correction``) adds each layer's shift to
its float bias before the bias is quantized.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from int8flow.kernels.quantize import (
    INT8_MIN,
    INT32_MAX,
    UINT8_MAX,
    accumulator_bound,
    quantize,
    quantize_bias,
    quantize_weights_per_channel,
    quantize_weights_per_tensor,
)
from int8flow.schemas.calibration_table import INT8_MAX, CalibrationTable
from int8flow.schemas.threshold_settings import ThresholdSettings
from int8flow.tasks.graph.fp32_tensor_ops import reduce_axes
from int8flow.tasks.graph.ir import Graph, Node

COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean")
ACTIVATION_OPS = ("Relu", "Clip")
PASS_THROUGH_OPS = (
    "Flatten", "Reshape", "Transpose", "Pad", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather", "Expand", "Tile",
    "Resize",
)  # fmt: skip
FUSABLE_PRODUCERS = ("Conv", "Gemm", "MatMul", "Add")
FIRST_CONV = ":first-conv"
LAST_LAYER = ":last-layer"


class QuantizationError(ValueError):
    """The graph cannot be quantized with the given table or options."""


@dataclass(frozen=True)
class QuantizationOptions:
    """``exclude``: node names, op types, or the policies ':first-conv' and ':last-layer'.

    ``unsigned_activations``: tensors calibrated non-negative (ReLU/ReLU6 outputs) become uint8 with
    scale threshold / 255, twice the levels of symmetric int8 over the same range.
    """

    exclude: tuple[str, ...] = ()
    per_channel: bool = True
    unsigned_activations: bool = ThresholdSettings.unsigned_activations


@dataclass(frozen=True)
class Encoding:
    """How one tensor is stored in the quantized graph: scale and int8 vs uint8 (zero point 0)."""

    scale: float
    unsigned: bool = False

    @property
    def limits(self) -> tuple[int, int]:
        return (0, UINT8_MAX) if self.unsigned else (INT8_MIN, INT8_MAX)


def calibration_tensors(graph: Graph) -> list[str]:
    """Tensors that may need an activation scale: the float inputs and outputs of the ops that run in
    int8 (a Concat of int64 shape dimensions is not one).

    Independent of exclusions, so a fallback that excludes more nodes needs no new calibration.
    """
    wanted: set[str] = set()
    for node in graph.nodes:
        if node.op_type in COMPUTE_OPS or node.op_type in ACTIVATION_OPS:
            first_inputs = node.inputs if node.op_type in ("Add", "Concat") else node.inputs[:1]
            wanted.update(name for name in first_inputs if name and name not in graph.initializers)
            wanted.update(node.outputs[:1])
    order = [info.name for info in graph.inputs] + [out for node in graph.nodes for out in node.outputs]
    return [name for name in order if name in wanted and graph.is_float(name)]


def excluded_nodes(graph: Graph, exclude: Iterable[str]) -> set[str]:
    """Names of the nodes that stay FP32; an entry that matches nothing is an error (likely a typo)."""
    names = {node.name for node in graph.nodes}
    op_types = {node.op_type for node in graph.nodes}
    chosen: set[str] = set()
    for entry in exclude:
        if entry == FIRST_CONV:
            chosen.update([node.name for node in graph.nodes if node.op_type == "Conv"][:1])
        elif entry == LAST_LAYER:
            layers = [node.name for node in graph.nodes if node.op_type in ("Conv", "Gemm", "MatMul")]
            chosen.update(layers[-1:])
        elif entry in names:
            chosen.add(entry)
        elif entry in op_types:
            chosen.update(node.name for node in graph.nodes if node.op_type == entry)
        else:
            raise QuantizationError(
                f"--exclude {entry!r} matches no node name or op type of {graph.source}; op types present: "
                f"{', '.join(sorted(op_types))}"
            )
    return chosen


def quantize_graph(
    graph: Graph, table: CalibrationTable, options: QuantizationOptions = QuantizationOptions()
) -> Graph:
    """The INT8 graph: same inputs and outputs (float32), int8 inside wherever possible."""
    return _Rewriter(graph, table, options).run()


class _Rewriter:
    def __init__(self, graph: Graph, table: CalibrationTable, options: QuantizationOptions) -> None:
        self.source = graph
        self.records = table.by_name()
        self.bias_corrections = table.bias_corrections
        self.options = options
        self.excluded = excluded_nodes(graph, options.exclude)
        self.consumers = graph.consumers()
        self.graph_outputs = {info.name for info in graph.outputs}
        self.nodes: list[Node] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.int8: dict[str, tuple[str, Encoding]] = {}  # original tensor -> (quantized name, encoding)
        self.float: set[str] = {info.name for info in graph.inputs}  # original tensors available as float
        self.fused: set[str] = set()  # activation nodes folded into their producer

    def run(self) -> Graph:
        for node in self.source.nodes:
            if node.name in self.fused:
                continue
            if node.name not in self.excluded and self._rewrite(node):
                continue
            self._keep_float(node)
        for info in self.source.outputs:
            self._float_version(info.name)
        result = Graph(
            self.nodes,
            self.initializers,
            list(self.source.inputs),
            list(self.source.outputs),
            self.source.opset,
            self.source.source,
            dict(self.source.shapes),
            dict(self.source.dtypes),
        )
        result.remove_unused()
        return result

    # -- tensors -------------------------------------------------------------------------------

    def _encoding(self, tensor: str) -> Encoding:
        if tensor not in self.records:
            raise QuantizationError(
                f"tensor {tensor!r} has no threshold in the calibration table; calibrate this model "
                "again (the table belongs to another model or version)"
            )
        record = self.records[tensor]
        if self.options.unsigned_activations and not record.signed:
            return Encoding(record.threshold / UINT8_MAX, True)
        return Encoding(record.threshold / INT8_MAX)

    def _is_constant(self, tensor: str) -> bool:
        return tensor in self.source.initializers

    def _int8_version(self, tensor: str) -> tuple[str, Encoding]:
        if tensor not in self.int8:
            encoding = self._encoding(tensor)
            attributes = {"scale": encoding.scale, "unsigned": encoding.unsigned}
            source = self._float_version(tensor)
            name = self._produce_int8(tensor, encoding)
            self.nodes.append(Node(f"{tensor}/quantize", "QuantizeTensor", [source], [name], attributes))
        return self.int8[tensor]

    def _float_version(self, tensor: str) -> str:
        if tensor in self.float or self._is_constant(tensor) or not tensor:
            if self._is_constant(tensor):
                self.initializers[tensor] = self.source.initializers[tensor]
            return tensor
        name, encoding = self.int8[tensor]
        attributes = {"scale": encoding.scale, "unsigned": encoding.unsigned}
        self.nodes.append(Node(f"{tensor}/dequantize", "DequantizeTensor", [name], [tensor], attributes))
        self.float.add(tensor)
        return tensor

    def _produce_int8(self, tensor: str, encoding: Encoding) -> str:
        name = f"{tensor}_int8"
        self.int8[tensor] = (name, encoding)
        return name

    def _keep_float(self, node: Node) -> None:
        inputs = [self._float_version(name) for name in node.inputs]
        self.nodes.append(Node(node.name, node.op_type, inputs, list(node.outputs), dict(node.attributes)))
        self.float.update(node.outputs)

    def _constant(self, name: str, value: np.ndarray) -> str:
        self.initializers[name] = value
        return name

    # -- fusion --------------------------------------------------------------------------------

    def _fused_activation(self, node: Node) -> tuple[str, Encoding, dict]:
        """(output tensor, its encoding, the requantization attributes) after fusing a following
        ReLU/Clip, if any: the activation becomes the clip bounds of the requantization."""
        output = node.outputs[0]
        readers = self.consumers.get(output, [])
        if node.op_type in FUSABLE_PRODUCERS and len(readers) == 1 and output not in self.graph_outputs:
            activation = readers[0]
            bounds = self._activation_bounds(activation)
            if activation.name not in self.excluded and bounds is not None:
                self.fused.add(activation.name)
                final = activation.outputs[0]
                encoding = self._encoding(final)
                low, high = _int_bounds(bounds, encoding)
                return final, encoding, _output_attributes(encoding, low, high, activation.op_type)
        encoding = self._encoding(output)
        return output, encoding, _output_attributes(encoding, *encoding.limits, "")

    def _activation_bounds(self, node: Node) -> tuple[float | None, float | None] | None:
        if node.op_type == "Relu":
            return 0.0, None
        if node.op_type == "Clip":
            bounds = []
            for position in (1, 2):
                name = node.inputs[position] if len(node.inputs) > position else ""
                if name and not self._is_constant(name):
                    return None
                bounds.append(float(self.source.initializers[name]) if name else None)
            return bounds[0], bounds[1]
        return None

    # -- rewriting -----------------------------------------------------------------------------

    def _rewrite(self, node: Node) -> bool:
        op = node.op_type
        if op != "Shape" and not all(self.source.is_float(name) for name in node.outputs if name):
            return False  # shape arithmetic (a Concat of int64 dims) stays exact
        if op == "Conv" and self._is_constant(node.inputs[1]) and not self._is_constant(node.inputs[0]):
            self._conv(node)
        elif op in ("Gemm", "MatMul") and linear_weight(self.source, node) is not None:
            self._linear(node)
        elif op == "Add" and not any(self._is_constant(name) for name in node.inputs):
            self._add(node)
        elif op == "Concat" and not any(self._is_constant(name) for name in node.inputs):
            self._concat(node)
        elif op == "MaxPool" and len(node.outputs) == 1:
            self._pass_through(node, "Int8MaxPool")
        elif op in ("AveragePool", "GlobalAveragePool") or (op == "ReduceMean" and self._spatial_mean(node)):
            self._average(node)
        elif op in ACTIVATION_OPS and self._activation_bounds(node) is not None and node.inputs[0] in self.int8:
            self._standalone_activation(node)
        elif op in PASS_THROUGH_OPS and node.inputs[0] in self.int8 and self._moves_values(node):
            self._pass_through(node, op)
        elif op == "Shape" and node.inputs[0] in self.int8:
            self.nodes.append(Node(node.name, op, [self.int8[node.inputs[0]][0]], list(node.outputs), node.attributes))
            self.float.update(node.outputs)
        else:
            return False
        return True

    def _conv(self, node: Node) -> None:
        x_name, x_encoding = self._int8_version(node.inputs[0])
        weight = self.source.initializers[node.inputs[1]]
        bias = self._corrected(node, self._bias(node, 2))
        weight_q, weight_scales = self._quantize_weight(node, weight, 0, bias, x_encoding)
        output, encoding, requantization = self._fused_activation(node)
        attributes = {
            **node.attributes,
            "kernel_shape": list(weight.shape[2:]),
            "input_scale": x_encoding.scale,
            **requantization,
        }
        self._emit_layer(
            node, "Int8Conv", x_name, x_encoding.scale, weight_q, weight_scales, bias, output, encoding, attributes
        )

    def _linear(self, node: Node) -> None:
        weight = linear_weight(self.source, node)
        x_name, x_encoding = self._int8_version(node.inputs[0])
        bias = None
        producer = node
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2]:
            bias_value = np.broadcast_to(self.source.initializers[node.inputs[2]], (weight.shape[1],))
            bias = (bias_value * np.float32(node.attribute("beta", 1.0))).astype(np.float32)
        elif (bias_add := self._bias_add(node, weight.shape[1])) is not None:
            constant = next(name for name in bias_add.inputs if self._is_constant(name))
            bias = np.asarray(self.source.initializers[constant], dtype=np.float32).reshape(-1)
            self.fused.add(bias_add.name)
            producer = bias_add
        bias = self._corrected(node, bias)
        weight_q, weight_scales = self._quantize_weight(node, weight, 1, bias, x_encoding)
        output, encoding, requantization = self._fused_activation(producer)
        attributes = {"input_scale": x_encoding.scale, **requantization}
        self._emit_layer(
            node, "Int8MatMul", x_name, x_encoding.scale, weight_q, weight_scales, bias, output, encoding, attributes
        )

    def _bias_add(self, node: Node, channels: int) -> Node | None:
        """The Add of a constant per-output-channel bias that is the only reader of a MatMul (how
        exporters write a Linear on N-D tokens): it becomes the layer's int32 bias."""
        readers = self.consumers.get(node.outputs[0], [])
        if len(readers) != 1 or node.outputs[0] in self.graph_outputs:
            return None
        add = readers[0]
        constants = [name for name in add.inputs if self._is_constant(name)]
        if add.op_type != "Add" or add.name in self.excluded or len(constants) != 1 or len(add.inputs) != 2:
            return None
        shape = self.source.initializers[constants[0]].shape
        if not shape or shape[-1] != channels or any(dim != 1 for dim in shape[:-1]):
            return None
        return add

    def _emit_layer(
        self,
        node: Node,
        op_type: str,
        x_name: str,
        x_scale: float,
        weight_q: np.ndarray,
        weight_scales: np.ndarray,
        bias: np.ndarray | None,
        output: str,
        encoding: Encoding,
        attributes: dict,
    ) -> None:
        inputs = [
            x_name,
            self._constant(f"{node.name}/weight_int8", weight_q),
            self._constant(f"{node.name}/weight_scale", weight_scales),
        ]
        if bias is not None:
            inputs.append(self._constant(f"{node.name}/bias_int32", quantize_bias(bias, x_scale, weight_scales)))
        self.nodes.append(Node(node.name, op_type, inputs, [self._produce_int8(output, encoding)], attributes))

    def _quantize_weight(
        self, node: Node, weight: np.ndarray, axis: int, bias: np.ndarray | None, x_encoding: Encoding
    ) -> tuple[np.ndarray, np.ndarray]:
        """Int8 weights and their scales, widened where the bias would not fit int32 beside the sum.

        The bias is stored at input_scale x weight_scale; a channel with near-zero weights (a dead
        depthwise filter) and a real bias would need more than 32 bits, so its weight scale grows
        until the bias fits, as onnxruntime's quantizer does. Such weights are ~0 anyway. The bias
        must fit with room for the largest accumulator (fan-in x 128 or 255 x 127): a bias that
        merely fits int32 wraps the int32 sum around in our executor and in onnxruntime's kernels.
        """
        if self.options.per_channel:
            weight_q, scales = quantize_weights_per_channel(weight, axis=axis)
        else:
            weight_q, scale = quantize_weights_per_tensor(weight)
            scales = np.full(weight.shape[axis], scale, dtype=np.float32)
        if bias is None:
            return weight_q, scales
        fan_in = weight.size // weight.shape[axis]
        room = INT32_MAX - accumulator_bound(fan_in, x_encoding.unsigned)
        if room <= 0:
            raise QuantizationError(
                f"node {node.name!r} ({node.op_type}): a fan-in of {fan_in} can overflow "
                "the int32 accumulator; keep this node in float (--exclude)"
            )
        needed = np.abs(bias.astype(np.float64)) / (x_encoding.scale * room) * (1.0 + 1e-6)
        widened = np.maximum(scales.astype(np.float64), needed)
        if not self.options.per_channel:
            widened = np.full_like(widened, widened.max())
        if (widened > scales).any():
            scales = widened.astype(np.float32)
            shape = [1] * weight.ndim
            shape[axis] = -1
            weight_q = quantize(np.asarray(weight, dtype=np.float32), scales.reshape(shape))
        return weight_q, scales

    def _corrected(self, node: Node, bias: np.ndarray | None) -> np.ndarray | None:
        """The bias plus the table's bias correction of this layer, if it has one (a layer without
        a bias gets the correction as its bias)."""
        shift = self.bias_corrections.get(node.name)
        if shift is None:
            return bias
        shift_values = np.asarray(shift, dtype=np.float32)
        return shift_values if bias is None else (bias + shift_values).astype(np.float32)

    def _bias(self, node: Node, position: int) -> np.ndarray | None:
        if len(node.inputs) > position and node.inputs[position]:
            return np.asarray(self.source.initializers[node.inputs[position]], dtype=np.float32)
        return None

    def _add(self, node: Node) -> None:
        """A sum of two activations (a residual). An Add of a constant stays FP32: a constant such as a
        norm's epsilon or GELU's +1 falls below one step of the sum's scale, and ``variance + eps``
        rounded to zero then divides by zero."""
        operands = [self._int8_version(name) for name in node.inputs]
        output, encoding, requantization = self._fused_activation(node)
        attributes = {
            "a_scale": operands[0][1].scale,
            "a_unsigned": operands[0][1].unsigned,
            "b_scale": operands[1][1].scale,
            "b_unsigned": operands[1][1].unsigned,
            **requantization,
        }
        outputs = [self._produce_int8(output, encoding)]
        self.nodes.append(Node(node.name, "Int8Add", [operands[0][0], operands[1][0]], outputs, attributes))

    def _concat(self, node: Node) -> None:
        operands = [self._int8_version(name) for name in node.inputs]
        encoding = self._encoding(node.outputs[0])
        attributes = {
            "axis": int(node.attribute("axis")),
            "input_scales": [operand.scale for _, operand in operands],
            "input_unsigned": [int(operand.unsigned) for _, operand in operands],
            **_output_attributes(encoding, *encoding.limits, ""),
        }
        outputs = [self._produce_int8(node.outputs[0], encoding)]
        self.nodes.append(Node(node.name, "Int8Concat", [name for name, _ in operands], outputs, attributes))

    def _spatial_mean(self, node: Node) -> bool:
        shape = self.source.shapes.get(node.inputs[0])
        if shape is None or len(shape) != 4:
            return False
        axes = reduce_axes(
            node,
            [None, self.source.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None],
            self.source.opset,
            4,
        )
        return set(axes) == {2, 3}

    def _average(self, node: Node) -> None:
        x_name, x_encoding = self._int8_version(node.inputs[0])
        encoding = self._encoding(node.outputs[0])
        attributes = dict(node.attributes)
        if node.op_type == "ReduceMean":
            attributes = {"keepdims": int(node.attribute("keepdims", 1))}
        attributes.update(
            {
                "input_scale": x_encoding.scale,
                "input_unsigned": x_encoding.unsigned,
                "float_op": node.op_type,
                **_output_attributes(encoding, *encoding.limits, ""),
            }
        )
        outputs = [self._produce_int8(node.outputs[0], encoding)]
        self.nodes.append(Node(node.name, "Int8AveragePool", [x_name], outputs, attributes))

    def _standalone_activation(self, node: Node) -> None:
        x_name, encoding = self.int8[node.inputs[0]]
        low, high = _int_bounds(self._activation_bounds(node), encoding)
        attributes = {
            "low": low,
            "high": high,
            "scale": encoding.scale,
            "unsigned": encoding.unsigned,
            "float_op": node.op_type,
        }
        self.nodes.append(
            Node(node.name, "Int8Clip", [x_name], [self._produce_int8(node.outputs[0], encoding)], attributes)
        )

    def _moves_values(self, node: Node) -> bool:
        """Whether every output element is a copy of an input element (or the zero point): a Pad of
        zeros or of the edge, a nearest Resize; then the int8 tensor goes through unchanged."""
        if node.op_type == "Resize":
            return node.attribute("mode", "nearest") == "nearest"
        if node.op_type != "Pad" or node.attribute("mode", "constant") != "constant":
            return True
        value_name = node.inputs[2] if len(node.inputs) > 2 else ""
        value = self.source.initializers.get(value_name, 0.0)
        return float(np.asarray(value)) == 0.0

    def _pass_through(self, node: Node, op_type: str) -> None:
        x_name, encoding = self._int8_version(node.inputs[0])
        inputs = [x_name] + [self._float_version(name) for name in node.inputs[1:]]
        outputs = [self._produce_int8(name, encoding) if name else name for name in node.outputs]
        self.nodes.append(Node(node.name, op_type, inputs, outputs, dict(node.attributes)))


def linear_weight(graph: Graph, node: Node) -> np.ndarray | None:
    """A Gemm's or MatMul's weight as (K, N) so that the layer is ``x @ weight`` (alpha folded in);
    None if it is not a constant 2-D weight."""
    if len(node.inputs) < 2 or node.inputs[1] not in graph.initializers or node.inputs[0] in graph.initializers:
        return None
    weight = graph.initializers[node.inputs[1]]
    if weight.ndim != 2:
        return None
    if node.op_type == "Gemm":
        if node.attribute("transA", 0):
            return None
        if node.attribute("transB", 0):
            weight = weight.T
        weight = weight * np.float32(node.attribute("alpha", 1.0))
    return np.ascontiguousarray(weight)


def _int_bounds(bounds: tuple[float | None, float | None], encoding: Encoding) -> tuple[int, int]:
    floor, ceiling = encoding.limits
    low, high = bounds
    int_low = floor if low is None else int(np.clip(np.rint(low / encoding.scale), floor, ceiling))
    int_high = ceiling if high is None else int(np.clip(np.rint(high / encoding.scale), floor, ceiling))
    return int_low, int_high


def _output_attributes(encoding: Encoding, low: int, high: int, activation: str) -> dict:
    return {
        "output_scale": encoding.scale,
        "output_unsigned": encoding.unsigned,
        "low": low,
        "high": high,
        "activation": activation,
    }


def quantized_tensors(graph: Graph) -> Mapping[str, Encoding]:
    """Encoding of every int8/uint8 tensor of a quantized graph, read back from its nodes (exports)."""
    encodings: dict[str, Encoding] = {}
    for node in graph.nodes:
        attributes = node.attributes
        if node.op_type in ("QuantizeTensor", "Int8Clip"):
            encodings[node.outputs[0]] = Encoding(attributes["scale"], attributes["unsigned"])
        elif "output_scale" in attributes:
            encodings[node.outputs[0]] = Encoding(attributes["output_scale"], attributes["output_unsigned"])
        elif node.op_type in ("Int8MaxPool", *PASS_THROUGH_OPS) and node.inputs[0] in encodings:
            encodings.update((name, encodings[node.inputs[0]]) for name in node.outputs if name)
    return encodings

"""The quantized graph as a standard ONNX QDQ model (QuantizeLinear/DequantizeLinear).

Each ``Int8*`` node becomes DequantizeLinear on its int8 inputs, the float op it replaced (with the
fused ReLU/Clip), and QuantizeLinear to its output scale; weights stay int8 with per-channel scales
on their output axis, biases int32 with scale input_scale x weight_scale. onnxruntime recognises
these groups and runs them as QLinear ops, and any ONNX consumer can read the scales back.

Signed activations are stored one of two ways (``SIGNED_STORAGE``): "uint8", at zero point 128, what
onnxruntime's x86 integer kernels take, so that every Conv, Gemm and Add of a graph whose
non-negative tensors are uint8 runs as QLinearConv/QGemm/QLinearAdd, with int8flow's own arithmetic
(``int8flow.kernels.quantize``); or "int8", at zero point 0, the symmetric QDQ that TensorRT reads.
The real values are the same; only the stored bytes differ.
"""

from __future__ import annotations

import numpy as np
import onnx

from int8flow.kernels.quantize import SIGNED_ZERO_POINT
from int8flow.tasks.graph.ir import Graph, Node
from int8flow.tasks.graph.onnx_build import graph_to_model
from int8flow.tasks.graph.quantize_pass import quantized_tensors

QDQ_MIN_OPSET = 13
CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
INT8_NODE_ATTRIBUTES = (
    "input_scale",
    "input_unsigned",
    "output_scale",
    "output_unsigned",
    "low",
    "high",
    "activation",
    "float_op",
    "scale",
    "unsigned",
    "input_scales",
)


SIGNED_STORAGE = {"uint8": np.uint8(SIGNED_ZERO_POINT), "int8": np.int8(0)}
"""How a signed tensor is stored in the QDQ model: its zero point, whose type is the storage type."""


class QDQExportError(ValueError):
    """The quantized graph cannot be written as QDQ ONNX."""


def export_qdq(graph: Graph, signed_storage: str = "uint8") -> onnx.ModelProto:
    if graph.opset < QDQ_MIN_OPSET:
        raise QDQExportError(
            f"{graph.source}: QDQ export needs opset >= {QDQ_MIN_OPSET} (per-channel DequantizeLinear); the model "
            f"has opset {graph.opset}: re-export it with a newer opset"
        )
    if signed_storage not in SIGNED_STORAGE:
        raise QDQExportError(f"signed_storage must be one of {', '.join(SIGNED_STORAGE)}; got {signed_storage!r}")
    builder = _QDQBuilder(graph, SIGNED_STORAGE[signed_storage])
    for node in graph.nodes:
        builder.add(node)
    exported = Graph(builder.nodes, builder.initializers, graph.inputs, graph.outputs, graph.opset, graph.source)
    model = graph_to_model(exported, name="int8flow-qdq")
    onnx.checker.check_model(model)
    return model


class _QDQBuilder:
    def __init__(self, graph: Graph, signed_zero_point: np.integer) -> None:
        self.signed_zero_point = signed_zero_point
        self.encodings = quantized_tensors(graph)
        self.opset = graph.opset
        self.initializers = dict(graph.initializers)
        self.nodes: list[Node] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers[name] = value
        return name

    def zero_value(self, unsigned: bool) -> np.integer:
        """The zero point of a tensor, whose type is its storage type."""
        return np.uint8(0) if unsigned else self.signed_zero_point

    def zero_point(self, prefix: str, unsigned: bool) -> str:
        return self.constant(f"{prefix}/zero_point", self.zero_value(unsigned))

    def dequantize(
        self, tensor: str, scale: float | str, prefix: str, axis: int | None = None, zero: str | None = None
    ) -> str:
        scale_name = scale if isinstance(scale, str) else self.constant(f"{prefix}/scale", np.float32(scale))
        encoding = self.encodings.get(tensor)
        zero_name = zero or self.zero_point(prefix, bool(encoding and encoding.unsigned))
        output = f"{prefix}/dequantized"
        attributes = {} if axis is None else {"axis": axis}
        self.nodes.append(
            Node(
                f"{prefix}/DequantizeLinear", "DequantizeLinear", [tensor, scale_name, zero_name], [output], attributes
            )
        )
        return output

    def quantize(self, tensor: str, output: str, prefix: str) -> None:
        encoding = self.encodings[output]
        scale_name = self.constant(f"{prefix}/scale", np.float32(encoding.scale))
        zero_name = self.zero_point(prefix, encoding.unsigned)
        self.nodes.append(Node(f"{prefix}/QuantizeLinear", "QuantizeLinear", [tensor, scale_name, zero_name], [output]))

    def activation(self, node: Node, tensor: str) -> str:
        """The fused ReLU/Clip as a float op, bounds taken from the integer limits."""
        kind = node.attributes.get("activation", "")
        if not kind:
            return tensor
        output = f"{node.name}/activation"
        if kind == "Relu":
            self.nodes.append(Node(f"{node.name}/Relu", "Relu", [tensor], [output]))
            return output
        scale = node.attributes["output_scale"]
        low = self.constant(f"{node.name}/clip_min", np.float32(node.attributes["low"] * scale))
        high = self.constant(f"{node.name}/clip_max", np.float32(node.attributes["high"] * scale))
        self.nodes.append(Node(f"{node.name}/Clip", "Clip", [tensor, low, high], [output]))
        return output

    def add(self, node: Node) -> None:
        handler = getattr(self, f"_{node.op_type}", None)
        if handler is not None:
            handler(node)
        elif node.op_type == "Int8MaxPool":
            self.nodes.append(Node(node.name, "MaxPool", list(node.inputs), list(node.outputs), dict(node.attributes)))
        elif node.op_type == "Pad" and node.inputs[0] in self.encodings:
            inputs = list(node.inputs)
            if len(inputs) > 2 and inputs[2]:
                inputs[2] = self.zero_point(f"{node.name}/pad_value", self.encodings[node.inputs[0]].unsigned)
            self.nodes.append(Node(node.name, "Pad", inputs, list(node.outputs), dict(node.attributes)))
        else:
            self.nodes.append(node)

    def _QuantizeTensor(self, node: Node) -> None:
        self.quantize(node.inputs[0], node.outputs[0], node.name)

    def _DequantizeTensor(self, node: Node) -> None:
        scale = self.constant(f"{node.name}/scale", np.float32(node.attributes["scale"]))
        zero = self.zero_point(node.name, node.attributes["unsigned"])
        self.nodes.append(
            Node(f"{node.name}/DequantizeLinear", "DequantizeLinear", [node.inputs[0], scale, zero], list(node.outputs))
        )

    def _layer(self, node: Node, weight_axis: int) -> tuple[str, str, str | None]:
        x_name, weight, weight_scales = node.inputs[:3]
        input_scale = node.attributes["input_scale"]
        x = self.dequantize(x_name, input_scale, f"{node.name}/input")
        channels = self.initializers[weight_scales].shape[0]
        weight_zero = self.constant(f"{node.name}/weight_zero_point", np.zeros(channels, dtype=np.int8))
        w = self.dequantize(weight, weight_scales, f"{node.name}/weight", axis=weight_axis, zero=weight_zero)
        bias = None
        if len(node.inputs) > 3:
            bias_scale = (input_scale * self.initializers[weight_scales].astype(np.float64)).astype(np.float32)
            bias_scale_name = self.constant(f"{node.name}/bias/scale", bias_scale)
            bias_zero = self.constant(f"{node.name}/bias_zero_point", np.zeros(channels, dtype=np.int32))
            bias = self.dequantize(node.inputs[3], bias_scale_name, f"{node.name}/bias", axis=0, zero=bias_zero)
        return x, w, bias

    def _Int8Conv(self, node: Node) -> None:
        x, w, bias = self._layer(node, weight_axis=0)
        attributes = {key: value for key, value in node.attributes.items() if key in CONV_ATTRIBUTES}
        if attributes.get("auto_pad", "NOTSET") != "NOTSET":
            attributes.pop("pads", None)
        output = f"{node.name}/float_output"
        self.nodes.append(Node(node.name, "Conv", [x, w] + ([bias] if bias else []), [output], attributes))
        self.quantize(self.activation(node, output), node.outputs[0], f"{node.name}/output")

    def _Int8MatMul(self, node: Node) -> None:
        x, w, bias = self._layer(node, weight_axis=1)
        output = f"{node.name}/float_output"
        self.nodes.append(Node(node.name, "MatMul", [x, w], [output]))
        if bias:
            self.nodes.append(Node(f"{node.name}/bias_add", "Add", [output, bias], [f"{node.name}/biased"]))
            output = f"{node.name}/biased"
        self.quantize(self.activation(node, output), node.outputs[0], f"{node.name}/output")

    def _Int8Add(self, node: Node) -> None:
        a = self.dequantize(node.inputs[0], node.attributes["a_scale"], f"{node.name}/a")
        b = self.dequantize(node.inputs[1], node.attributes["b_scale"], f"{node.name}/b")
        output = f"{node.name}/float_output"
        self.nodes.append(Node(node.name, "Add", [a, b], [output]))
        self.quantize(self.activation(node, output), node.outputs[0], f"{node.name}/output")

    def _Int8Concat(self, node: Node) -> None:
        parts = [
            self.dequantize(name, scale, f"{node.name}/input{index}")
            for index, (name, scale) in enumerate(zip(node.inputs, node.attributes["input_scales"]))
        ]
        output = f"{node.name}/float_output"
        self.nodes.append(Node(node.name, "Concat", parts, [output], {"axis": node.attributes["axis"]}))
        self.quantize(output, node.outputs[0], f"{node.name}/output")

    def _Int8AveragePool(self, node: Node) -> None:
        x = self.dequantize(node.inputs[0], node.attributes["input_scale"], f"{node.name}/input")
        attributes = {key: value for key, value in node.attributes.items() if key not in INT8_NODE_ATTRIBUTES}
        kind = node.attributes["float_op"]
        output = f"{node.name}/float_output"
        if kind == "ReduceMean":
            if self.opset >= 18:
                axes = self.constant(f"{node.name}/axes", np.array([2, 3], dtype=np.int64))
                self.nodes.append(Node(node.name, "ReduceMean", [x, axes], [output], attributes))
            else:
                self.nodes.append(Node(node.name, "ReduceMean", [x], [output], {**attributes, "axes": [2, 3]}))
        else:
            self.nodes.append(Node(node.name, kind, [x], [output], attributes))
        self.quantize(output, node.outputs[0], f"{node.name}/output")

    def _Int8Clip(self, node: Node) -> None:
        zero = self.zero_value(node.attributes["unsigned"])
        dtype = zero.dtype.type
        low = self.constant(f"{node.name}/min", dtype(node.attributes["low"] + int(zero)))
        high = self.constant(f"{node.name}/max", dtype(node.attributes["high"] + int(zero)))
        self.nodes.append(Node(node.name, "Clip", [node.inputs[0], low, high], list(node.outputs)))

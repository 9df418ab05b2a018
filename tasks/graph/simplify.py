"""Graph clean-up before execution and quantization.

Exporters leave behind work that belongs to export time, not run time: Constant nodes, constant
subgraphs (the legacy torch exporter computes Pad amounts with Shape/Gather/Concat chains),
Identity and Dropout nodes, and BatchNormalization after Conv, which costs a full pass over the
activations and would need its own INT8 kernel. Folding them keeps the executors small and makes
the quantized Conv see the weights that actually run.

Folding evaluates nodes with ONNX's reference implementation at load time, before any check of the
model, so it is bounded: only ops the executors run or shape arithmetic are folded (anything else
stays in the graph, where the supported-op check names it), and a node whose output would exceed
``MAX_FOLDED_BYTES`` is refused before it is evaluated (a malformed ``ConstantOfShape`` asked for
4 PiB and died in a MemoryError).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from int8flow.tasks.graph.fp32_ops import FP32_OPS, UnsupportedModelError
from int8flow.tasks.graph.ir import Graph, Node
from int8flow.tasks.graph.onnx_build import node_to_proto

PASS_THROUGH_OPS = ("Identity", "Dropout")
# Shape arithmetic exporters emit on constants, foldable though the executors do not run it.
SHAPE_ARITHMETIC_OPS = frozenset(
    {
        "Shape", "Size", "Gather", "Slice", "Squeeze", "Unsqueeze", "Cast", "ConstantOfShape", "Range", "Expand",
        "Tile", "Sub", "Div", "Neg", "Floor", "Ceil", "Min", "Max", "Equal", "Less", "Greater", "Not", "And",
        "Or", "Where", "ReduceProd", "ReduceSum", "ReduceMin", "ReduceMax", "Sqrt", "Mod",
    }
)  # fmt: skip
FOLDABLE_OPS = SHAPE_ARITHMETIC_OPS | frozenset(FP32_OPS)
# The largest constant folding may make: far above any CNN's weight tensor, far below a machine's memory.
MAX_FOLDED_BYTES = 1 << 31
_MAX_ITEM_BYTES = 8


def simplify(graph: Graph) -> Graph:
    """All passes, in an order where each one exposes work for the next."""
    constants_to_initializers(graph)
    fold_constant_nodes(graph)
    drop_pass_through_nodes(graph)
    fold_batch_norm(graph)
    graph.remove_unused()
    return graph


def constants_to_initializers(graph: Graph) -> None:
    kept = []
    for node in graph.nodes:
        if node.op_type == "Constant":
            graph.initializers[node.outputs[0]] = _constant_value(node)
        else:
            kept.append(node)
    graph.nodes = kept


def fold_constant_nodes(graph: Graph) -> None:
    """Evaluate, once, every node whose inputs are all known (ONNX's reference implementation)."""
    kept = []
    for node in graph.nodes:
        static_shape = node.op_type == "Shape" and _static_shape(graph, node.inputs[0])
        inputs_known = node.op_type in FOLDABLE_OPS and all(
            not name or name in graph.initializers for name in node.inputs
        )
        if static_shape:
            shape = np.asarray(graph.shapes[node.inputs[0]], dtype=np.int64)
            start, end = node.attribute("start", 0), node.attribute("end", None)
            graph.initializers[node.outputs[0]] = shape[start:end]
        elif inputs_known and node.inputs:
            for name, value in zip(node.outputs, _evaluate(graph, node)):
                graph.initializers[name] = value
        else:
            kept.append(node)
    graph.nodes = kept


def drop_pass_through_nodes(graph: Graph) -> None:
    """Remove Identity/Dropout (inference mode): readers use the node's input directly."""
    graph_outputs = {output.name for output in graph.outputs}
    for node in [n for n in graph.nodes if n.op_type in PASS_THROUGH_OPS]:
        source, result = node.inputs[0], node.outputs[0]
        graph.nodes.remove(node)
        if result in graph_outputs:
            # Keep the graph's output name: the producer writes it, other readers follow.
            for producer in graph.nodes:
                producer.outputs = [result if name == source else name for name in producer.outputs]
            graph.rename_uses(source, result)
            if source in graph.initializers:
                graph.initializers[result] = graph.initializers[source]
        else:
            graph.rename_uses(result, source)


def fold_batch_norm(graph: Graph) -> None:
    """Scale a Conv's weights and shift its bias so that the BatchNormalization after it vanishes."""
    consumers = graph.consumers()
    producers = graph.producers()
    graph_outputs = {output.name for output in graph.outputs}
    for bn in [n for n in graph.nodes if n.op_type == "BatchNormalization"]:
        conv = producers.get(bn.inputs[0])
        if (
            conv is None
            or conv.op_type != "Conv"
            or conv.inputs[1] not in graph.initializers
            or len(consumers.get(bn.inputs[0], [])) != 1
            or bn.inputs[0] in graph_outputs
            or not all(name in graph.initializers for name in bn.inputs[1:5])
        ):
            continue
        scale, shift, mean, variance = (graph.initializers[name].astype(np.float64) for name in bn.inputs[1:5])
        factor = scale / np.sqrt(variance + float(bn.attribute("epsilon", 1e-5)))
        weight = graph.initializers[conv.inputs[1]].astype(np.float64)
        has_bias = len(conv.inputs) > 2 and conv.inputs[2]
        bias = graph.initializers[conv.inputs[2]].astype(np.float64) if has_bias else np.zeros_like(mean)
        weight_name, bias_name = f"{conv.name}/bn_folded_weight", f"{conv.name}/bn_folded_bias"
        graph.initializers[weight_name] = (weight * factor[:, None, None, None]).astype(np.float32)
        graph.initializers[bias_name] = ((bias - mean) * factor + shift).astype(np.float32)
        conv.inputs = [conv.inputs[0], weight_name, bias_name]
        conv.outputs = [bn.outputs[0]]
        graph.nodes.remove(bn)


def _static_shape(graph: Graph, name: str) -> bool:
    shape = graph.shapes.get(name)
    return shape is not None and all(dim is not None for dim in shape)


def _evaluate(graph: Graph, node: Node) -> list[np.ndarray]:
    inputs = [name for name in node.inputs if name]
    try:
        elements = _output_elements_bound(node, [np.asarray(graph.initializers[name]) for name in inputs])
    except (IndexError, ValueError):  # inputs the op cannot take: evaluating it below says how
        elements = 0
    if elements * _MAX_ITEM_BYTES > MAX_FOLDED_BYTES:
        raise UnsupportedModelError(
            f"{graph.source}: node {node.name!r} ({node.op_type}) on constant inputs would make a tensor of up to "
            f"{elements:,} elements, more than the {MAX_FOLDED_BYTES >> 30} GiB int8flow folds at load time; the "
            "shape its exporter computed is likely wrong: check the node's inputs"
        )
    proto = helper.make_graph(
        [node_to_proto(node)],
        "fold",
        [],
        [helper.make_empty_tensor_value_info(name) for name in node.outputs if name],
        initializer=[numpy_helper.from_array(np.asarray(graph.initializers[name]), name) for name in inputs],
    )
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", graph.opset)])
    try:
        return [np.asarray(value) for value in ReferenceEvaluator(model).run(None, {})]
    except Exception as error:  # noqa: BLE001 - the reference implementation raises many types
        raise UnsupportedModelError(
            f"{graph.source}: node {node.name!r} ({node.op_type}) cannot be evaluated on its constant inputs: "
            f"{type(error).__name__}: {error}; check the node's inputs and attributes"
        ) from None


def _output_elements_bound(node: Node, values: list[np.ndarray]) -> int:
    """At least the number of elements ``node`` outputs, from its inputs alone (Python ints: no overflow).

    The ops that make more than they read are bounded by what they are asked for; any other op by
    its broadcast or the sum of its inputs, whichever is larger.
    """
    if node.op_type == "ConstantOfShape" and values:
        return math.prod(max(0, int(dim)) for dim in values[0].reshape(-1))
    if node.op_type == "Expand" and len(values) == 2:
        wanted = [int(dim) for dim in values[1].reshape(-1)]
        rank = max(values[0].ndim, len(wanted))
        dims = [1] * (rank - values[0].ndim) + list(values[0].shape)
        wanted = [1] * (rank - len(wanted)) + wanted
        return math.prod(max(have, want, 0) for have, want in zip(dims, wanted))
    if node.op_type == "Tile" and len(values) == 2:
        return values[0].size * math.prod(max(0, int(count)) for count in values[1].reshape(-1))
    if node.op_type == "Range" and len(values) == 3:
        start, limit, delta = (float(value) for value in values)
        return max(0, math.ceil((limit - start) / delta)) if delta and math.isfinite(limit - start) else 0
    sizes = [value.size for value in values]
    try:
        broadcast = math.prod(np.broadcast_shapes(*(value.shape for value in values))) if values else 0
    except ValueError:
        broadcast = 0
    if node.op_type in ("MatMul", "Gemm") and len(values) >= 2 and values[0].ndim:
        transposed = node.op_type == "Gemm" and node.attribute("transA", 0)
        inner = max(1, values[0].shape[0] if transposed else values[0].shape[-1])
        return max(broadcast, sum(sizes), sizes[0] // inner * (sizes[1] // inner))
    if node.op_type == "Gather" and len(values) == 2 and values[0].ndim:
        return values[0].size // max(1, values[0].shape[node.attribute("axis", 0)]) * max(1, sizes[1])
    return max(broadcast, sum(sizes))


def _constant_value(node: Node) -> np.ndarray:
    for key, dtype in (
        ("value", None),
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in node.attributes:
            return np.asarray(node.attributes[key], dtype=dtype)
    raise UnsupportedModelError(
        f"Constant node {node.name!r} holds its value as {', '.join(sorted(node.attributes)) or 'nothing'}; "
        "int8flow reads value, value_float(s) and value_int(s): re-export the model with dense constants"
    )

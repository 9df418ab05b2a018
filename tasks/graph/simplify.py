"""Graph clean-up before execution and quantization.

Exporters leave behind work that belongs to export time, not run time: Constant nodes, constant
subgraphs (the legacy torch exporter computes Pad amounts with Shape/Gather/Concat chains),
Identity and Dropout nodes, and BatchNormalization after Conv, which costs a full pass over the
activations and would need its own INT8 kernel. Folding them keeps the executors small and makes
the quantized Conv see the weights that actually run.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from int8flow.tasks.graph.ir import Graph, Node
from int8flow.tasks.graph.onnx_build import node_to_proto

PASS_THROUGH_OPS = ("Identity", "Dropout")


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
        inputs_known = all(not name or name in graph.initializers for name in node.inputs)
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
    proto = helper.make_graph(
        [node_to_proto(node)],
        "fold",
        [],
        [helper.make_empty_tensor_value_info(name) for name in node.outputs if name],
        initializer=[numpy_helper.from_array(np.asarray(graph.initializers[name]), name) for name in inputs],
    )
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", graph.opset)])
    return [np.asarray(value) for value in ReferenceEvaluator(model).run(None, {})]


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
    raise onnx.checker.ValidationError(f"Constant node {node.name!r} has no supported value attribute")

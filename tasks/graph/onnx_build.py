"""Turning IR nodes and graphs back into ONNX protos (for constant folding and for exports)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from int8flow.tasks.graph.ir import Graph, Node, TensorInfo


def node_to_proto(node: Node) -> onnx.NodeProto:
    attributes = {key: _attribute(value) for key, value in node.attributes.items()}
    return helper.make_node(node.op_type, node.inputs, node.outputs, name=node.name, **attributes)


def value_info(info: TensorInfo) -> onnx.ValueInfoProto:
    shape = [dim if dim is not None else "N" for dim in info.shape]
    return helper.make_tensor_value_info(info.name, helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype)), shape)


def graph_to_model(graph: Graph, name: str = "int8flow", opset: int | None = None) -> onnx.ModelProto:
    proto = helper.make_graph(
        [node_to_proto(node) for node in graph.nodes],
        name,
        [value_info(info) for info in graph.inputs],
        [value_info(info) for info in graph.outputs],
        initializer=[numpy_helper.from_array(np.asarray(value), name) for name, value in graph.initializers.items()],
    )
    model = helper.make_model(
        proto, opset_imports=[helper.make_opsetid("", opset or graph.opset)], producer_name="int8flow"
    )
    model.ir_version = min(model.ir_version, 10)
    return model


def _attribute(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    return value

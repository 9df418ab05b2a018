"""Reading ONNX models from a path or any fsspec URL into the IR.

Every failure names the file and says what to do: a model that cannot be read is the first thing a
nightly run hits, and "DecodeError" alone tells an operator nothing.
"""

from __future__ import annotations

import hashlib

import fsspec
import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from int8flow.tasks.graph.ir import Graph, Node, TensorInfo


class ModelLoadError(ValueError):
    """The model file is missing, unreadable, not ONNX, or not a model int8flow can run."""


def read_model_bytes(uri: str) -> bytes:
    try:
        with fsspec.open(uri, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise ModelLoadError(f"{uri}: model file not found; check the path or URL") from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{uri}: cannot read the model ({error})") from None


def model_fingerprint(data: bytes) -> str:
    """sha256 of the model file: ties histograms and tables to the exact model they came from."""
    return hashlib.sha256(data).hexdigest()


def parse_model(data: bytes, source: str) -> onnx.ModelProto:
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # noqa: BLE001 - protobuf raises several unrelated types
        raise ModelLoadError(
            f"{source}: not an ONNX model ({type(error).__name__}); export the model to ONNX"
        ) from None
    if not model.graph.node:
        raise ModelLoadError(f"{source}: not an ONNX model (no graph nodes); export the model to ONNX")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelLoadError(f"{source}: invalid ONNX model: {first_line}") from None
    return model


def load_graph(uri: str) -> tuple[Graph, str]:
    """The IR of the model at ``uri`` and the model's fingerprint."""
    data = read_model_bytes(uri)
    return import_model(parse_model(data, uri), uri), model_fingerprint(data)


def import_model(model: onnx.ModelProto, source: str = "<memory>") -> Graph:
    """Convert a (checked) ModelProto to the IR, with every shape ONNX can infer."""
    try:
        model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a help, not a requirement
        pass
    graph = model.graph
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    nodes = []
    for index, proto in enumerate(graph.node):
        if proto.domain not in ("", "ai.onnx"):
            raise ModelLoadError(
                f"{source}: node {proto.name or index!r} uses op {proto.domain}::{proto.op_type} from a custom "
                "domain; export the model with standard ONNX ops"
            )
        attributes = {attr.name: _attribute_value(attr) for attr in proto.attribute}
        nodes.append(
            Node(
                proto.name or f"{proto.op_type}_{index}",
                proto.op_type,
                list(proto.input),
                list(proto.output),
                attributes,
            )
        )
    inputs = [_tensor_info(value) for value in graph.input if value.name not in initializers]
    outputs = [_tensor_info(value) for value in graph.output]
    shapes = {
        value.name: _tensor_info(value).shape
        for value in [*graph.input, *graph.value_info, *graph.output]
        if value.type.HasField("tensor_type")
    }
    return Graph(nodes, initializers, inputs, outputs, opset, source, shapes)


def _attribute_value(attribute: onnx.AttributeProto) -> object:
    value = helper.get_attribute_value(attribute)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [item.decode() for item in value]
    return value


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    dims = tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim)
    dtype = (
        np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if tensor_type.elem_type
        else np.dtype("float32")
    )
    return TensorInfo(value.name, dims, dtype)

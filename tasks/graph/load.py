"""Reading ONNX models from a path or any fsspec URL into the IR.

Every failure names the file and says what to do: a model that cannot be read is the first thing a
nightly run hits, and "DecodeError" alone tells an operator nothing.

Weights saved as ONNX external data (``model.onnx`` + ``model.onnx.data``) are read from the model's
own folder or URL prefix, never from the working directory, and are part of the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import fsspec
import numpy as np
import onnx
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from onnx import helper, numpy_helper, shape_inference
from onnx.checker import MAXIMUM_PROTOBUF
from onnx.external_data_helper import uses_external_data

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


def model_fingerprint(data: bytes, external_files: Mapping[str, bytes] | None = None) -> str:
    """Ties histograms and tables to the exact model they came from, weights in data files included.

    Without external data this is the sha256 of the .onnx bytes, as it always was. With it, the sha256
    of a JSON record of the .onnx file's sha256 and each data file's name and sha256 (sorted by name),
    so rewriting any data file, or renaming which file holds which weights, gives another fingerprint.
    """
    onnx_digest = hashlib.sha256(data).hexdigest()
    if not external_files:
        return onnx_digest
    record = {
        "onnx": onnx_digest,
        "external_data": [[name, hashlib.sha256(external_files[name]).hexdigest()] for name in sorted(external_files)],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LoadedModel:
    """A checked model with every weight in memory, the .onnx bytes as read, and its fingerprint.

    ``data`` is what a copy of a self-contained model must write to keep the fingerprint;
    ``external_files`` names the data files next to the model (empty for a self-contained one).
    """

    proto: onnx.ModelProto
    data: bytes
    external_files: tuple[str, ...]
    fingerprint: str


def load_model(uri: str, source: str | None = None, planned_fingerprint: str | None = None) -> LoadedModel:
    """Read, fingerprint and check the model at ``uri``, with its external data read next to it.

    ``source`` is the name errors use (the URI the user gave, where ``uri`` is a downloaded copy).
    With ``planned_fingerprint`` (a worker re-reading the planned model), a model whose .onnx or data
    files changed is refused before it is checked, so the error says what happened.
    """
    source = source or uri
    data = read_model_bytes(uri)
    try:
        model = _decode(data, source)
    except ModelLoadError:
        if planned_fingerprint is not None:  # the planned model decoded, so these bytes are new
            raise _changed(source, model_fingerprint(data), planned_fingerprint) from None
        raise
    files = read_external_data(model, uri, source)
    fingerprint = model_fingerprint(data, files)
    if planned_fingerprint is not None and fingerprint != planned_fingerprint:
        raise _changed(source, fingerprint, planned_fingerprint)
    fill_external_data(model, files, uri, source)
    _check(model, source, uri if files else None)
    return LoadedModel(model, data, tuple(sorted(files)), fingerprint)


def _changed(source: str, found: str, planned: str) -> ModelLoadError:
    return ModelLoadError(
        f"{source}: the model changed since the run was planned (sha256 {found[:12]} instead of {planned[:12]}); "
        "start the run again"
    )


def _decode(data: bytes, source: str) -> onnx.ModelProto:
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # noqa: BLE001 - protobuf raises several unrelated types
        raise ModelLoadError(
            f"{source}: not an ONNX model ({type(error).__name__}); export the model to ONNX"
        ) from None
    if not model.graph.node:
        raise ModelLoadError(f"{source}: not an ONNX model (no graph nodes); export the model to ONNX")
    return model


def _check(model: onnx.ModelProto, source: str, local_fallback: str | None) -> None:
    """The ONNX checker on the in-memory model (weights loaded, so it never looks at the working directory).

    A model over protobuf's 2 GiB limit cannot be checked in memory: a local file is checked by path
    (onnx then resolves its data next to it, as we did); a remote one is refused.
    """
    try:
        if model.ByteSize() <= MAXIMUM_PROTOBUF:
            onnx.checker.check_model(model)
        elif local_fallback is not None and isinstance(url_to_fs(local_fallback)[0], LocalFileSystem):
            onnx.checker.check_model(url_to_fs(local_fallback)[1])
        else:
            raise ModelLoadError(
                f"{source}: the model with its weights is over 2 GiB, too large to check from a URL; "
                "copy the model and its data files to a local folder"
            )
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelLoadError(f"{source}: invalid ONNX model: {first_line}") from None


def model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model (initializers, sparse ones, node attributes, subgraphs, functions):
    external data may sit in any of them."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
            for sparse in attribute.sparse_tensors:
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def read_external_data(model: onnx.ModelProto, uri: str, source: str | None = None) -> dict[str, bytes]:
    """The bytes of every external-data file the model names, read from the folder or URL prefix of ``uri``.

    Keys are the locations relative to that folder (``./a`` and ``a`` are one file). Each file is read
    once and whole, because the whole file is fingerprinted.
    """
    source = source or uri
    fs, model_path = url_to_fs(uri)
    folder = model_path.rsplit("/", 1)[0] if "/" in model_path else ""
    files: dict[str, bytes] = {}
    for tensor, entries, name in _external_tensors(model, source):
        if name in files:
            continue
        path = f"{folder}/{name}" if folder else name
        shown = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
        try:
            with fs.open(path, "rb") as file:
                files[name] = file.read()
        except FileNotFoundError:
            raise ModelLoadError(
                f"{source}: tensor {tensor.name!r} keeps its data in {entries['location']!r}, but {shown} does not "
                "exist; copy the data file next to the model under that name, or save the model without "
                "external data"
            ) from None
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelLoadError(
                f"{source}: tensor {tensor.name!r}: cannot read its external data file {shown} ({reason})"
            ) from None
    return files


def _external_tensors(model: onnx.ModelProto, source: str) -> Iterator[tuple[onnx.TensorProto, dict[str, str], str]]:
    """Each tensor kept in an external file, with its ``external_data`` entries and its checked file name."""
    for tensor in model_tensors(model):
        if uses_external_data(tensor):
            entries = {entry.key: entry.value for entry in tensor.external_data}
            yield tensor, entries, _data_file_name(entries.get("location", ""), tensor.name, source)


def _data_file_name(location: str, tensor: str, source: str) -> str:
    """``location`` as a path inside the model's folder; anything that could leave the folder is refused."""
    parts = [part for part in re.split(r"[/\\]", location) if part not in ("", ".")]
    escapes = (
        location.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", location) is not None
        or "://" in location
        or ".." in parts
    )
    if escapes or not parts:
        what = "outside the model's folder" if escapes else "that is not a file in the model's folder"
        raise ModelLoadError(
            f"{source}: tensor {tensor!r} names external data file {location!r} {what}; keep the data file next "
            "to the model and save the model with a relative location (onnx.save_model(..., location='<file name>'))"
        )
    return "/".join(parts)


def fill_external_data(model: onnx.ModelProto, files: Mapping[str, bytes], uri: str, source: str | None = None) -> None:
    """Move each external tensor's bytes (its ``offset``/``length`` slice of its file) into the model.

    The tensor then describes no file at all (``external_data`` and ``data_location`` cleared), so
    nothing later, onnx or numpy_helper, goes looking for the file relative to the working directory.
    """
    source = source or uri
    for tensor, entries, name in _external_tensors(model, source):
        content = files[name]
        try:
            offset = int(entries.get("offset", "0"))
            end = len(content) if entries.get("length") is None else offset + int(entries["length"])
        except ValueError:
            raise ModelLoadError(
                f"{source}: tensor {tensor.name!r} has a malformed offset or length for {name!r}; re-save the model"
            ) from None
        if not 0 <= offset <= end <= len(content):
            raise ModelLoadError(
                f"{source}: tensor {tensor.name!r} reads bytes {offset}..{end} of {name!r}, which holds "
                f"{len(content)} bytes; the data file does not belong to this model, copy the right one next to it"
            )
        tensor.raw_data = content[offset:end]
        tensor.ClearField("external_data")
        tensor.ClearField("data_location")


def load_graph(uri: str) -> tuple[Graph, str]:
    """The IR of the model at ``uri`` and the model's fingerprint."""
    loaded = load_model(uri)
    return import_model(loaded.proto, uri), loaded.fingerprint


def import_model(model: onnx.ModelProto, source: str = "<memory>") -> Graph:
    """Convert a (checked) ModelProto to the IR, with every shape ONNX can infer.

    A tensor still naming an external file is refused: numpy_helper would read it relative to the
    working directory, possibly from another model's data file.
    """
    external = next((tensor for tensor in model_tensors(model) if uses_external_data(tensor)), None)
    if external is not None:
        raise ModelLoadError(
            f"{source}: tensor {external.name!r} keeps its data in an external file that was not loaded; "
            "load the model with load_model (or load_graph) so the file is read next to the model"
        )
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
    typed = [value for value in [*graph.input, *graph.value_info, *graph.output] if value.type.HasField("tensor_type")]
    shapes = {value.name: _tensor_info(value).shape for value in typed}
    dtypes = {value.name: _tensor_info(value).dtype for value in typed if value.type.tensor_type.elem_type}
    return Graph(nodes, initializers, inputs, outputs, opset, source, shapes, dtypes)


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

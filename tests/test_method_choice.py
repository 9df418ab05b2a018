"""The per-tensor method choice of ``--method auto``: where each tensor's error is measured, what the
measure is, and that it does not depend on how the slice is batched (the Dask split is covered by
test_distributed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from graph_builders import cnn_model, residual_model

from int8flow.kernels.histogram import Histogram
from int8flow.kernels.quantize import dequantize, quantize
from int8flow.kernels.thresholds import ThresholdChoice
from int8flow.schemas.threshold_settings import AUTO_CANDIDATES
from int8flow.tasks.calibration.method_choice import (
    TensorCandidates,
    TensorErrors,
    auto_table,
    measure_errors,
    tensor_candidates,
    threshold_readers,
)
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.load import import_model
from int8flow.tasks.graph.quantize_pass import QuantizationOptions
from int8flow.tasks.graph.simplify import simplify


def graph_of(model) -> Graph:  # type: ignore[no-untyped-def]
    return simplify(import_model(model, "test"))


def inputs(graph: Graph, count: int, seed: int = 0) -> np.ndarray:
    shape = (count, *graph.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)


def test_a_layer_is_measured_on_the_tensor_whose_scale_its_input_takes() -> None:
    """The Gemm reads Flatten's output, stored with the scale of the pool before it; the Conv after
    a Pad reads the padded tensor's own scale; a Conv after a fused Clip reads the Clip's output."""
    options = QuantizationOptions()
    cnn = {name: layers for name, layers in threshold_readers(graph_of(cnn_model()), options).items() if layers}
    assert cnn == {
        "input": ("Conv_3",),
        "relu9_0": ("Conv_12",),
        "clip15_0": ("Conv_17",),
        "globalaveragepool21_0": ("Gemm_25",),
    }
    residual = threshold_readers(graph_of(residual_model()), options)
    assert {name: layers for name, layers in residual.items() if layers} == {
        "input": ("Conv_3",),
        "pad20_0": ("Conv_22",),
        "reducemean23_0": ("MatMul_25",),
    }
    excluded = threshold_readers(graph_of(cnn_model()), QuantizationOptions(exclude=("Gemm_25",)))
    assert excluded["globalaveragepool21_0"] == ()


def observed(graph: Graph, x: np.ndarray, tensor: str) -> np.ndarray:
    seen: dict[str, np.ndarray] = {}
    GraphExecutor(graph).run({graph.inputs[0].name: x}, lambda name, values: seen.update({name: values}), {tensor})
    return seen[tensor]


def test_a_candidate_costs_the_layer_applied_to_its_quantization_error() -> None:
    """Gemm: sum over the slice of |(dequantize(quantize(x)) - x) @ W|^2, W its (transposed) weight."""
    graph = graph_of(cnn_model())
    x = inputs(graph, 12)
    pooled = observed(graph, x, "globalaveragepool21_0")
    gemm = next(node for node in graph.nodes if node.name == "Gemm_25")
    weight = graph.initializers[gemm.inputs[1]].astype(np.float64).T
    thresholds = (float(np.abs(pooled).max()), float(np.abs(pooled).max()) / 3)
    measured = TensorCandidates(
        "globalaveragepool21_0", (("percentile", thresholds[0]), ("mse", thresholds[1])), False, ("Gemm_25",)
    )
    [errors] = measure_errors(graph, GraphExecutor(graph), [measured], [{graph.inputs[0].name: x}], debiased=False)
    for (_, error), threshold in zip(errors.errors, thresholds):
        scale = np.float32(threshold / 127)
        difference = (dequantize(quantize(pooled, scale), scale) - pooled).astype(np.float64).reshape(12, -1)
        assert error == pytest.approx(float(((difference @ weight) ** 2).sum()), rel=1e-5)
    assert errors.errors[1][1] > 10 * errors.errors[0][1]  # clipping at a third of the range costs most


def test_a_tensor_no_layer_reads_is_measured_on_itself() -> None:
    graph = graph_of(cnn_model())
    x = inputs(graph, 6)
    pooled = observed(graph, x, "averagepool20_0")
    threshold = float(np.abs(pooled).max()) / 2
    measured = TensorCandidates("averagepool20_0", (("entropy", threshold),), False, ())
    [errors] = measure_errors(graph, GraphExecutor(graph), [measured], [{graph.inputs[0].name: x}], debiased=True)
    scale = np.float32(threshold / 127)
    difference = (dequantize(quantize(pooled, scale), scale) - pooled).astype(np.float64).reshape(6, -1)
    assert errors.errors == (("entropy", math.fsum((difference**2).sum(axis=1))),)


def test_debiasing_leaves_no_error_when_quantization_shifts_every_example_alike() -> None:
    """The same example six times: the Gemm's output error is one vector, which a per-channel bias
    shift (bias correction) removes entirely."""
    graph = graph_of(cnn_model())
    x = np.repeat(inputs(graph, 1), 6, axis=0)
    pooled = observed(graph, x, "globalaveragepool21_0")
    measured = TensorCandidates(
        "globalaveragepool21_0", (("mse", float(np.abs(pooled).max()) / 3),), False, ("Gemm_25",)
    )
    batch = [{graph.inputs[0].name: x}]
    [raw] = measure_errors(graph, GraphExecutor(graph), [measured], batch, debiased=False)
    [debiased] = measure_errors(graph, GraphExecutor(graph), [measured], batch, debiased=True)
    assert raw.errors[0][1] > 0.0
    assert debiased.errors[0][1] <= 1e-9 * raw.errors[0][1]


def test_the_errors_do_not_depend_on_the_batches() -> None:
    graph = graph_of(residual_model())
    x = inputs(graph, 20)
    name = graph.inputs[0].name
    tensors = [
        TensorCandidates("input", (("percentile", 2.5), ("entropy", 1.5), ("mse", 3.0)), False, ("Conv_3",)),
        TensorCandidates("reducemean23_0", (("percentile", 0.5), ("mse", 0.2)), False, ("MatMul_25",)),
        TensorCandidates("relu5_0", (("percentile", 1.0), ("mse", 2.0)), True, ()),
    ]
    whole = measure_errors(graph, GraphExecutor(graph), tensors, [{name: x}], debiased=True)
    pieces = [{name: x[start : start + 7]} for start in range(0, 20, 7)]
    assert measure_errors(graph, GraphExecutor(graph), tensors, pieces, debiased=True) == whole


def histogram(signed: bool) -> Histogram:
    counts = np.zeros(8, dtype=np.int64)
    counts[4 if signed else 0] = 10
    return Histogram(counts, -2, signed, -1.0 if signed else 0.0, 1.0, 10)


def test_only_distinct_thresholds_are_measured_and_the_least_error_wins() -> None:
    histograms = {"a": histogram(True), "b": histogram(False), "c": histogram(False)}
    choices = {
        "percentile": {
            "a": ThresholdChoice(1.0, math.nan),
            "b": ThresholdChoice(2.0, math.nan),
            "c": ThresholdChoice(1.0, math.nan),
        },
        "entropy": {"a": ThresholdChoice(0.5, 0.1), "b": ThresholdChoice(2.0, 0.2), "c": ThresholdChoice(1.0, 0.3)},
        "mse": {"a": ThresholdChoice(1.0, 0.01), "b": ThresholdChoice(1.5, 0.02), "c": ThresholdChoice(1.0, 0.03)},
    }
    assert AUTO_CANDIDATES == ("percentile", "entropy", "mse")
    measured = tensor_candidates(choices, histograms, {"a": ("Conv",)}, unsigned_activations=True)
    assert measured == [
        TensorCandidates("a", (("percentile", 1.0), ("entropy", 0.5)), False, ("Conv",)),
        TensorCandidates("b", (("percentile", 2.0), ("mse", 1.5)), True, ()),
    ]
    errors = [
        TensorErrors("a", (("percentile", 3.0), ("entropy", 2.0))),
        TensorErrors("b", (("percentile", 1.0), ("mse", 1.0))),
    ]
    table = auto_table(choices, histograms, errors, {"method": "auto"})
    assert [(t.name, t.method, t.threshold, t.signed) for t in table.tensors] == [
        ("a", "entropy", 0.5, True),
        ("b", "percentile", 2.0, False),  # a tie: the first candidate
        ("c", "percentile", 1.0, False),  # nothing to choose between
    ]
    assert table.by_name()["a"].divergence == 0.1 and table.metadata == {"method": "auto"}

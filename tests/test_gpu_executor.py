"""The executors on CuPy: FP32 close to NumPy, INT8 bit-identical to NumPy. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEMO_MODEL
from graph_builders import INPUT_SHAPES, MODELS

from int8flow.kernels.backend import gpu_available
from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.load import import_model, load_graph
from int8flow.tasks.graph.quantize_pass import calibration_tensors, quantize_graph
from int8flow.tasks.graph.simplify import simplify

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU and CuPy")]

FASHION_MODEL = DEMO_MODEL


def run_both(graph, batch: np.ndarray, ops=None) -> tuple[np.ndarray, np.ndarray]:
    import cupy

    name = graph.inputs[0].name
    kwargs = {"ops": ops} if ops else {}
    on_cpu = GraphExecutor(graph, **kwargs).run({name: batch})[graph.outputs[0].name]
    on_gpu = GraphExecutor(graph, xp=cupy, **kwargs).run({name: cupy.asarray(batch)})[graph.outputs[0].name]
    return on_cpu, cupy.asnumpy(on_gpu)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fp32_on_the_gpu_matches_numpy(name: str) -> None:
    graph = simplify(import_model(MODELS[name](), name))
    batch = np.random.default_rng(0).normal(0, 1, (8, *INPUT_SHAPES[name])).astype(np.float32)
    on_cpu, on_gpu = run_both(graph, batch)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("source", ["layout", "fashion"])
def test_int8_on_the_gpu_is_bit_identical(source: str) -> None:
    if source == "fashion":
        graph = simplify(load_graph(str(FASHION_MODEL))[0])
        batch = np.random.default_rng(1).random((16, 1, 28, 28), dtype=np.float32)
    else:
        graph = simplify(import_model(MODELS[source](), source))
        batch = np.random.default_rng(1).normal(0, 1, (16, *INPUT_SHAPES[source])).astype(np.float32)
    name = graph.inputs[0].name
    histograms = collect_histograms(GraphExecutor(graph), [{name: batch}], calibration_tensors(graph))
    quantized = quantize_graph(graph, build_calibration_table(histograms, ThresholdSettings(), {}))
    on_cpu, on_gpu = run_both(quantized, batch, INT8_OPS)
    np.testing.assert_array_equal(on_gpu, on_cpu)


@pytest.mark.parametrize("name", ["fashion", *sorted(MODELS)])
def test_fp32_rows_on_the_gpu_do_not_depend_on_the_batch(name: str) -> None:
    """cuBLAS picks kernels by shape: one image's FP32 outputs (and so its histograms) must still be
    the same bits in a batch of 37 as in batches of 5, or GPU tables would follow the sharding."""
    import cupy

    if name == "fashion":
        graph, shape = simplify(load_graph(str(FASHION_MODEL))[0]), (1, 28, 28)
    else:
        graph, shape = simplify(import_model(MODELS[name](), name)), INPUT_SHAPES[name]
    batch = cupy.asarray(np.random.default_rng(3).normal(0, 1, (37, *shape)).astype(np.float32))
    executor = GraphExecutor(graph, xp=cupy)
    input_name, output = graph.inputs[0].name, graph.outputs[0].name
    whole = executor.run({input_name: batch})[output]
    parts = cupy.concatenate([executor.run({input_name: batch[i : i + 5]})[output] for i in range(0, 37, 5)])
    np.testing.assert_array_equal(cupy.asnumpy(parts).view(np.uint32), cupy.asnumpy(whole).view(np.uint32))

"""The executors and kernels never convert a device array implicitly: run on the strict CuPy stand-in
(``strict_device``), every test graph gives the NumPy results. A CPU finds here what would otherwise
crash on the first GPU run (an int64 Reshape target moved to the device and read with np.asarray)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEMO_MODEL, EFFICIENTNET_MODEL, distributions
from graph_builders import INPUT_SHAPES, MODELS
from strict_device import IMPLICIT_CONVERSION, STRICT, HostArrayOperandError, StrictArray, on_strict_device

from int8flow.kernels.backend import array_module, to_numpy, uses_cuda
from int8flow.kernels.histogram import Histogram, exact_extremes, negative
from int8flow.kernels.row_stable_matmul import in_fixed_blocks
from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.load import import_model, load_graph
from int8flow.tasks.graph.quantize_pass import QuantizationOptions, calibration_tensors, quantize_graph
from int8flow.tasks.graph.simplify import simplify


def test_the_stand_in_refuses_what_cupy_refuses() -> None:
    device = on_strict_device(np.arange(6, dtype=np.int64))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(device)
    with pytest.raises(HostArrayOperandError):
        _ = device + np.ones(6, dtype=np.int64)
    with pytest.raises(HostArrayOperandError):
        STRICT.concatenate([device, np.ones(2, dtype=np.int64)])
    assert IMPLICIT_CONVERSION.startswith("Implicit conversion")
    assert array_module(device) is STRICT and not uses_cuda(STRICT)
    np.testing.assert_array_equal(to_numpy(device * 2 + 1), np.arange(6) * 2 + 1)
    assert isinstance(STRICT.asarray(np.ones(2)), StrictArray)


def run_both(graph: Graph, batch: np.ndarray, ops=None) -> tuple[np.ndarray, np.ndarray]:
    name, output = graph.inputs[0].name, graph.outputs[0].name
    kwargs = {"ops": ops} if ops else {}
    on_host = GraphExecutor(graph, **kwargs).run({name: batch})[output]
    on_device = GraphExecutor(graph, xp=STRICT, **kwargs).run({name: on_strict_device(batch)})[output]
    assert isinstance(on_device, StrictArray)
    return on_host, on_device.get()


GRAPHS = {
    **{name: (lambda name=name: simplify(import_model(MODELS[name](), name)), INPUT_SHAPES[name]) for name in MODELS},
    "fashion_mnist_resnet": (lambda: simplify(load_graph(str(DEMO_MODEL))[0]), (1, 28, 28)),
    "efficientnet_lite0": (lambda: simplify(load_graph(str(EFFICIENTNET_MODEL))[0]), (3, 224, 224)),
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_fp32_on_the_strict_device_matches_numpy(name: str) -> None:
    build, shape = GRAPHS[name]
    graph = build()
    batch = np.random.default_rng(0).normal(0, 1, (3, *shape)).astype(np.float32)
    on_host, on_device = run_both(graph, batch)
    np.testing.assert_allclose(on_device, on_host, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unsigned", [False, True], ids=["int8", "uint8"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_int8_on_the_strict_device_is_bit_identical(name: str, unsigned: bool) -> None:
    build, shape = GRAPHS[name]
    graph = build()
    batch = np.random.default_rng(1).normal(0, 1, (3, *shape)).astype(np.float32)
    histograms = collect_histograms(GraphExecutor(graph), [{graph.inputs[0].name: batch}], calibration_tensors(graph))
    table = build_calibration_table(histograms, ThresholdSettings(), {})
    quantized = quantize_graph(graph, table, QuantizationOptions(unsigned_activations=unsigned))
    on_host, on_device = run_both(quantized, batch, INT8_OPS)
    np.testing.assert_array_equal(on_device, on_host)


@pytest.mark.parametrize("name", sorted(distributions(10)))
def test_histograms_on_the_strict_device_are_bit_identical(name: str) -> None:
    values = distributions(20_000, seed=3)[name]
    assert Histogram.of(on_strict_device(values)).to_host().same_as(Histogram.of(values))


def test_device_products_see_one_block_shape_whatever_the_batch() -> None:
    shapes: list[tuple[int, ...]] = []

    def record(block: StrictArray) -> StrictArray:
        shapes.append(tuple(block.shape))
        return block * 2

    for count in (1, 31, 32, 70):
        x = on_strict_device(np.arange(count * 3, dtype=np.float32).reshape(count, 3))
        np.testing.assert_array_equal(in_fixed_blocks(record, x, 32).get(), x.get() * 2)
    assert set(shapes) == {(32, 3)} and len(shapes) == 1 + 1 + 1 + 3


def test_fp32_rows_on_the_strict_device_do_not_depend_on_the_batch() -> None:
    graph = GRAPHS["cnn"][0]()
    batch = np.random.default_rng(2).normal(0, 1, (37, *GRAPHS["cnn"][1])).astype(np.float32)
    name, output = graph.inputs[0].name, graph.outputs[0].name
    executor = GraphExecutor(graph, xp=STRICT)
    whole = executor.run({name: on_strict_device(batch)})[output].get()
    parts = [executor.run({name: on_strict_device(batch[i : i + 5])})[output].get() for i in range(0, 37, 5)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_extremes_and_signs_on_a_device_come_from_the_bits() -> None:
    tiny = np.float32(1e-40)  # subnormal: a flush-to-zero GPU compares it as zero
    for values in (
        np.array([-tiny, 1.0, 0.5], np.float32),
        np.array([tiny, -0.0, 3.0], np.float32),
        np.array([-2.5, -tiny, -7.0], np.float32),
        np.array([5e-324, -1.0, 2.0], np.float64),
    ):
        assert exact_extremes(on_strict_device(values)) == exact_extremes(values) == (values.min(), values.max())
        np.testing.assert_array_equal(negative(on_strict_device(values)).get(), values < 0)
    mixed = np.concatenate([np.random.default_rng(4).normal(0, 1, 999), [-1e-310]])
    assert Histogram.of(on_strict_device(mixed)).to_host().same_as(Histogram.of(mixed))

"""Calibration memory: one batch of activations plus the histograms, whatever the number of batches."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
from graph_builders import INPUT_SHAPES, MODELS

from int8flow.kernels.histogram import Histogram
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.load import import_model
from int8flow.tasks.graph.quantize_pass import calibration_tensors
from int8flow.tasks.graph.simplify import simplify


def stream(count: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches made on demand, as a data loader would read them."""
    rng = np.random.default_rng(0)
    for _ in range(count):
        yield {"input": rng.normal(0, 1, (64, *INPUT_SHAPES["cnn"])).astype(np.float32)}


def peak_bytes(batches: int) -> int:
    graph = simplify(import_model(MODELS["cnn"](), "cnn"))
    executor = GraphExecutor(graph)
    tensors = calibration_tensors(graph)
    tracemalloc.start()
    collect_histograms(executor, stream(batches), tensors, 1024)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_peak_memory_does_not_grow_with_the_number_of_batches() -> None:
    few, many = peak_bytes(2), peak_bytes(16)
    assert many < few * 1.1


def test_streamed_histograms_equal_one_pass_over_all_examples() -> None:
    graph = simplify(import_model(MODELS["cnn"](), "cnn"))
    streamed = collect_histograms(GraphExecutor(graph), stream(3), ["input"], 1024)["input"]
    everything = np.concatenate([batch["input"] for batch in stream(3)])
    assert streamed.same_as(Histogram.of(everything, 1024))

"""onnxruntime as the CPU engine: what the split-invariance contract needs of it, checked on real models.

Each example's activations must be the same bits however it was batched (alone, at any position of
a batch of any size) and whatever the intra-op thread count; the engine must show the observer the
same tensors as int8flow's executor, with values within float32 rounding of it.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEMO_MODEL, EFFICIENTNET_MODEL

from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.onnxruntime_engine import OnnxRuntimeExecutor
from int8flow.tasks.graph.quantize_pass import calibration_tensors
from int8flow.tasks.graph.simplify import simplify

EXAMPLES = 9
MODELS = {"fashion_mnist_resnet": str(DEMO_MODEL), "efficientnet_lite0": str(EFFICIENTNET_MODEL)}


def graph_of(name: str) -> Graph:
    return simplify(load_graph(MODELS[name])[0])


def example_inputs(graph: Graph, count: int) -> np.ndarray:
    shape = [count, *(1 if dim is None else dim for dim in graph.inputs[0].shape[1:])]
    return np.random.default_rng(7).standard_normal(shape).astype(np.float32)


def observed_per_example(executor: OnnxRuntimeExecutor, batch: np.ndarray, tensors: list[str]) -> list[dict]:
    seen: dict[str, np.ndarray] = {}
    outputs = executor.run(
        {executor.graph.inputs[0].name: batch}, lambda name, value: seen.update({name: value}), tensors
    )
    seen.update(outputs)
    return [{name: value[index] for name, value in seen.items()} for index in range(len(batch))]


@pytest.mark.parametrize("name", MODELS)
def test_every_activation_is_the_same_bits_for_any_batch_and_thread_count(name: str) -> None:
    graph = graph_of(name)
    tensors = calibration_tensors(graph)
    inputs = example_inputs(graph, EXAMPLES)
    alone = [
        observed_per_example(OnnxRuntimeExecutor(graph, 1), inputs[i : i + 1], tensors)[0] for i in range(EXAMPLES)
    ]
    for threads in (1, 2):
        executor = OnnxRuntimeExecutor(graph, threads)
        for batch_size in (2, 4, EXAMPLES):
            batched = [
                example
                for start in range(0, EXAMPLES, batch_size)
                for example in observed_per_example(executor, inputs[start : start + batch_size], tensors)
            ]
            for index, (one, other) in enumerate(zip(alone, batched)):
                differing = [tensor for tensor in one if not np.array_equal(one[tensor], other[tensor])]
                assert not differing, (threads, batch_size, index, differing[:3])


def test_the_engine_observes_what_the_reference_executor_observes() -> None:
    graph = graph_of("efficientnet_lite0")
    tensors = calibration_tensors(graph)
    inputs = {graph.inputs[0].name: example_inputs(graph, 2)}
    expected: dict[str, np.ndarray] = {}
    found: dict[str, np.ndarray] = {}
    reference_outputs = GraphExecutor(graph).run(inputs, lambda name, value: expected.update({name: value}), tensors)
    outputs = OnnxRuntimeExecutor(graph, 2).run(inputs, lambda name, value: found.update({name: value}), tensors)
    assert sorted(found) == sorted(expected) == sorted(tensors)
    for name in tensors:
        scale = float(np.max(np.abs(expected[name]))) or 1.0
        assert found[name].dtype == np.float32 and found[name].shape == expected[name].shape, name
        assert np.max(np.abs(found[name] - expected[name])) <= 1e-4 * scale, name
    (output,) = reference_outputs
    assert np.max(np.abs(outputs[output] - reference_outputs[output])) <= 1e-4 * np.max(
        np.abs(reference_outputs[output])
    )

"""Graph outputs do not depend on BLAS threads: the caller's setting, or several graphs at once.

Multi-threaded OpenBLAS sums some float32 products differently by thread count; the wide MLP's
1000-wide Gemms are such products on the CI machines (SkylakeX, OpenBLAS 0.3.31), EfficientNet-Lite0
is the real model. Every activation is compared, not only the logits: the histograms see them all.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import EFFICIENTNET_MODEL
from graph_builders import wide_mlp_model
from threadpoolctl import threadpool_info, threadpool_limits

from int8flow.tasks.data.mnist_idx import fashion_mnist_folder, load_mnist_split
from int8flow.tasks.data.photos import photo_crops
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.load import import_model, load_graph
from int8flow.tasks.graph.simplify import simplify

THREAD_COUNTS = (1, 2, 4)


def wide_mlp() -> tuple[Graph, np.ndarray]:
    images, _ = load_mnist_split(fashion_mnist_folder(), "train")
    return simplify(import_model(wide_mlp_model(), "wide_mlp.onnx")), (images[:100] / 255.0).astype(np.float32)[:, None]


def efficientnet() -> tuple[Graph, np.ndarray]:
    graph, _ = load_graph(str(EFFICIENTNET_MODEL))
    return simplify(graph), photo_crops(4, seed=5)


def blas_threads() -> int:
    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def every_activation(graph: Graph, executor: GraphExecutor, batch: np.ndarray) -> dict[str, np.ndarray]:
    seen: dict[str, np.ndarray] = {}
    names = [name for node in graph.nodes for name in node.outputs]
    executor.run({graph.inputs[0].name: batch}, lambda name, value: seen.__setitem__(name, value.copy()), names)
    return seen


@pytest.mark.parametrize("model", [wide_mlp, efficientnet], ids=["wide_mlp", "efficientnet_lite0"])
def test_every_activation_is_the_same_bits_whatever_the_callers_blas_threads(
    model: Callable[[], tuple[Graph, np.ndarray]],
) -> None:
    graph, batch = model()
    executor = GraphExecutor(graph)
    runs = []
    for threads in THREAD_COUNTS:
        with threadpool_limits(threads, user_api="blas"):
            runs.append(every_activation(graph, executor, batch))
    for threads, run in zip(THREAD_COUNTS[1:], runs[1:]):
        differing = [name for name in runs[0] if not np.array_equal(runs[0][name], run[name])]
        assert not differing, f"{threads} BLAS threads changed {differing}"


def test_a_graph_runs_on_one_blas_thread_and_restores_the_callers_setting() -> None:
    graph, batch = wide_mlp()
    seen_threads: list[int] = []
    with threadpool_limits(4, user_api="blas"):
        GraphExecutor(graph).run({"input": batch}, lambda name, value: seen_threads.append(blas_threads()), ["input"])
        assert blas_threads() == 4
    assert seen_threads == [1]


def test_graphs_running_on_several_threads_at_once_all_keep_one_blas_thread() -> None:
    """A Dask worker runs tasks on several threads: one finishing must not restore the count under another."""
    graph, batch = wide_mlp()
    executor = GraphExecutor(graph)
    with threadpool_limits(1, user_api="blas"):
        reference = executor.run({"input": batch})
    seen_threads: list[int] = []

    def run_observed(_: int) -> dict[str, np.ndarray]:
        return executor.run({"input": batch}, lambda name, value: seen_threads.append(blas_threads()), ["input"])

    with threadpool_limits(4, user_api="blas"), ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run_observed, range(12)))
        assert blas_threads() == 4
    assert seen_threads == [1] * 12
    for result in results:
        assert all(np.array_equal(result[name], reference[name]) for name in reference)

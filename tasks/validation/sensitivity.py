"""Per-node sensitivity: which quantized nodes the accuracy-gate fallback moves back to FP32 first.

When INT8 top-1 drops more than allowed, the pipeline excludes the most sensitive nodes one at a
time, in the order ranked here, re-quantizing with the same calibration table each time (the table
covers every tensor whatever is excluded, see ``calibration_tensors``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import ModuleType

import numpy as np

from int8flow.kernels.backend import to_numpy
from int8flow.schemas.calibration_table import CalibrationTable, TensorCalibration
from int8flow.schemas.stage_records import NodeSensitivity
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.quantize_pass import COMPUTE_OPS, QuantizationOptions, calibration_tensors, quantize_graph

DEFAULT_BATCH_SIZE = 32


def quantizable_nodes(graph: Graph, options: QuantizationOptions) -> list[str]:
    """Nodes, in graph order, that the pass turns into int8 compute: the fallback's candidates.

    These are the ``COMPUTE_OPS`` nodes the pass rewrites (Conv, Gemm/MatMul with a constant 2-D
    weight, Add, Concat, MaxPool, average pools, spatial ReduceMean), because each of them quantizes
    its float inputs or requantizes its output, so each can add error alone. Activations and
    Flatten/Reshape/Transpose/Pad are not candidates: the pass makes them int8 only when their input
    is already int8, so they carry their producer's encoding and add no error of their own. Hence
    excluding every candidate leaves no int8 tensor at all.

    The pass is asked rather than its rules copied: which nodes it rewrites depends on constants,
    shapes and exclusions, never on threshold values, so placeholder thresholds give the same answer
    as the real table.
    """
    placeholder = CalibrationTable(
        tuple(TensorCalibration(name, "placeholder", 1.0, True, math.nan) for name in calibration_tensors(graph))
    )
    rewritten = {node.name: node.op_type for node in quantize_graph(graph, placeholder, options).nodes}
    return [
        node.name
        for node in graph.nodes
        if node.op_type in COMPUTE_OPS and rewritten.get(node.name, node.op_type) != node.op_type
    ]


@dataclass(frozen=True)
class Fp32Reference:
    """The FP32 side of a ranking, the same for every candidate: the slice in batches and the FP32
    outputs of each batch (on the host), with their total energy, the errors' normaliser."""

    batches: tuple[dict[str, np.ndarray], ...]
    outputs: tuple[dict[str, np.ndarray], ...]
    energy: float

    @property
    def examples(self) -> int:
        return sum(len(next(iter(batch.values()))) for batch in self.batches)


def fp32_reference(
    graph: Graph, inputs: Mapping[str, np.ndarray], xp: ModuleType = np, batch_size: int = DEFAULT_BATCH_SIZE
) -> Fp32Reference:
    """Run ``inputs`` through the FP32 graph ``batch_size`` at a time (bounded memory)."""
    batches = tuple(_batches(inputs, batch_size))
    fp32 = GraphExecutor(graph, xp)
    outputs = tuple(_host_outputs(fp32, batch) for batch in batches)
    energy = math.fsum(value for output in outputs for y in output.values() for value in example_squares(y))
    if energy == 0.0:
        raise ValueError(
            f"{graph.source}: the FP32 outputs are all zero on these inputs; the normalised error is undefined"
        )
    return Fp32Reference(batches, outputs, energy)


def rank_sensitivity(
    graph: Graph,
    table: CalibrationTable,
    options: QuantizationOptions,
    inputs: Mapping[str, np.ndarray],
    xp: ModuleType = np,
    batch_size: int = DEFAULT_BATCH_SIZE,
    candidates: Sequence[str] | None = None,
) -> list[NodeSensitivity]:
    """Every candidate's error when it alone is INT8 (all other candidates and the user's
    exclusions FP32), most sensitive first; ties keep graph order.

    Alone rather than leave-one-out: both cost one INT8 run per candidate, but with every other node
    quantized, removing one changes the total error by a small difference of two large, noisy
    numbers that interactions between the remaining nodes can even make negative. Against an FP32
    background each node's own contribution is measured cleanly, and since independent quantization
    noise adds up in squared error, these contributions are what the fallback takes away. One
    ranking serves every fallback attempt; re-ranking after each exclusion would be quadratic.

    ``inputs``: a small slice of validation data (a few hundred examples), run ``batch_size`` at a
    time to bound memory; the FP32 reference is computed once and kept on the host. Per-example sums
    are added exactly (``math.fsum``), so the result does not depend on how the examples are batched
    as long as the backend's per-example outputs do not.

    ``candidates``: rank only these (a worker's share of ``quantizable_nodes``); see ``node_errors``.
    """
    return node_errors(graph, table, options, fp32_reference(graph, inputs, xp, batch_size), xp, candidates)


def node_errors(
    graph: Graph,
    table: CalibrationTable,
    options: QuantizationOptions,
    reference: Fp32Reference,
    xp: ModuleType = np,
    candidates: Sequence[str] | None = None,
) -> list[NodeSensitivity]:
    """``rank_sensitivity`` against a reference computed before, so that ranking the candidates a few
    at a time (one Dask task per node, for progress) runs the FP32 slice once per worker, not per task.

    ``candidates``: rank only these; every other candidate stays FP32 as before, and the
    normalisation is the same, so candidates ranked on different workers merge into the ranking of
    the whole.
    """
    everyone = quantizable_nodes(graph, options)
    mine = everyone if candidates is None else list(candidates)
    op_types = {node.name: node.op_type for node in graph.nodes}
    ranking = []
    for name in mine:
        alone = replace(options, exclude=options.exclude + tuple(other for other in everyone if other != name))
        executor = GraphExecutor(quantize_graph(graph, table, alone), xp, INT8_OPS)
        squared = math.fsum(
            value
            for batch, expected in zip(reference.batches, reference.outputs)
            for output, y in _host_outputs(executor, batch).items()
            for value in example_squares(y.astype(np.float64) - expected[output])
        )
        ranking.append(NodeSensitivity(name, op_types[name], squared / reference.energy))
    return sorted(ranking, key=lambda item: item.error, reverse=True)


def _batches(inputs: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    counts = {name: len(array) for name, array in inputs.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every input needs the same number of examples, got {counts}")
    total = next(iter(counts.values()))
    for start in range(0, total, batch_size):
        yield {name: array[start : start + batch_size] for name, array in inputs.items()}


def _host_outputs(executor: GraphExecutor, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: to_numpy(value) for name, value in executor.run(batch).items()}


def example_squares(values: np.ndarray) -> np.ndarray:
    """Sum of squares per example in float64; each row is reduced on its own, so the sums do not
    depend on the batch the example came in."""
    flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    return (flat * flat).sum(axis=1)

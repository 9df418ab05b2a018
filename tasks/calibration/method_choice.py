"""Per-tensor method choice (``--method auto``): each tensor's threshold from the method whose
quantization costs the least error where it matters, in the layers that read the tensor.

Every candidate method (``AUTO_CANDIDATES``) proposes a threshold from the merged histograms. A
tensor's quantization error ``e = dequantize(quantize(x)) - x`` reaches the model through the
Conv/Gemm/MatMul layers that read it, weighted by their weights: clipping a channel that a layer
multiplies by large weights costs more than the tensor's own squared error says. So the measure of
a candidate is the energy of the layer applied to ``e`` (bias left out: a difference of inputs is
all that moves the output), summed over the layers relative to each one's output energy when more
than one reads the tensor; with bias correction on, less the part a per-channel shift removes. A
tensor that no layer reads (a residual branch, a pool output) is measured on itself.

The measure runs on a slice of the calibration data (``--auto-examples``), in Dask tasks that each
take a contiguous share of the tensors and the whole slice, as the sensitivity ranking does: every
tensor's error is computed in one process from the same examples, each example's figure in float64
on its own and the examples added exactly (``math.fsum``), so the choice is the same whatever the
workers, shards or batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from int8flow.kernels.backend import to_numpy
from int8flow.kernels.conv import conv2d
from int8flow.kernels.histogram import Histogram
from int8flow.kernels.quantize import dequantize, quantize
from int8flow.kernels.row_stable_matmul import row_stable_matmul
from int8flow.kernels.thresholds import INT8_LEVELS, UINT8_LEVELS, ThresholdChoice, choose_thresholds
from int8flow.schemas.calibration_table import CalibrationTable, TensorCalibration
from int8flow.schemas.threshold_settings import AUTO_CANDIDATES, ThresholdSettings
from int8flow.tasks.graph.blas_threads import fixed_blas_threads
from int8flow.tasks.graph.fp32_ops import window_geometry
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.onnxruntime_engine import FP32Executor
from int8flow.tasks.graph.quantize_pass import (
    QuantizationOptions,
    calibration_tensors,
    linear_weight,
    quantize_graph,
    quantized_tensors,
)
from int8flow.tasks.validation.sensitivity import example_squares

LAYER_OPS = ("Int8Conv", "Int8MatMul")


@dataclass(frozen=True)
class TensorCandidates:
    """One tensor's distinct candidate thresholds (the first method proposing each), how it is
    stored, and where its error is measured: the FP32 layers whose INT8 input takes its scale, or,
    when there are none, the tensor itself."""

    tensor: str
    candidates: tuple[tuple[str, float], ...]
    unsigned: bool
    layers: tuple[str, ...]


@dataclass(frozen=True)
class TensorErrors:
    """Each candidate's error, in candidate order: comparable between the candidates of one tensor
    (absolute for one layer or none, relative to the outputs for several), not across tensors."""

    tensor: str
    errors: tuple[tuple[str, float], ...]

    def best(self) -> str:
        """The method of the least error; the first candidate wins a tie."""
        return min(self.errors, key=lambda item: item[1])[0]


def candidate_choices(
    histograms: Mapping[str, Histogram], settings: ThresholdSettings
) -> dict[str, dict[str, ThresholdChoice]]:
    """Per candidate method, its choice for every tensor, as that method alone would make it."""
    return {
        method: choose_thresholds(histograms, dataclasses.replace(settings, method=method))
        for method in AUTO_CANDIDATES
    }


def threshold_readers(graph: Graph, options: QuantizationOptions) -> dict[str, tuple[str, ...]]:
    """Per tensor of the table, the layers whose INT8 input is quantized with its threshold.

    The pass is asked rather than its rules copied: a layer's input may take the scale of a tensor
    further up (through Flatten, MaxPool or a fused activation). Each tensor gets a placeholder
    threshold of its own (its position plus one), so the input scale of each layer names its source.
    """
    names = calibration_tensors(graph)
    placeholder = CalibrationTable(
        tuple(
            TensorCalibration(name, "placeholder", float(index + 1), True, math.nan) for index, name in enumerate(names)
        )
    )
    int8 = quantize_graph(graph, placeholder, options)
    encodings = quantized_tensors(int8)
    readers: dict[str, list[str]] = {name: [] for name in names}
    for node in int8.nodes:
        if node.op_type in LAYER_OPS:
            readers[names[round(encodings[node.inputs[0]].scale * INT8_LEVELS) - 1]].append(node.name)
    return {name: tuple(layers) for name, layers in readers.items()}


def tensor_candidates(
    choices: Mapping[str, Mapping[str, ThresholdChoice]],
    histograms: Mapping[str, Histogram],
    readers: Mapping[str, tuple[str, ...]],
    unsigned_activations: bool,
) -> list[TensorCandidates]:
    """What the workers measure: the tensors with more than one distinct candidate threshold."""
    measured = []
    for name in sorted(histograms):
        distinct: dict[float, str] = {}
        for method in AUTO_CANDIDATES:
            distinct.setdefault(choices[method][name].threshold, method)
        if len(distinct) > 1:
            unsigned = unsigned_activations and not histograms[name].signed
            candidates = tuple((method, threshold) for threshold, method in distinct.items())
            measured.append(TensorCandidates(name, candidates, unsigned, readers.get(name, ())))
    return measured


def measure_errors(
    graph: Graph,
    executor: FP32Executor,
    tensors: Iterable[TensorCandidates],
    batches: Iterable[Mapping[str, np.ndarray]],
    debiased: bool,
) -> list[TensorErrors]:
    """Every candidate's relative error over ``batches`` (the slice), computed one example at a time;
    ``debiased`` (bias correction on): the error left after each layer's output channels are shifted
    by their mean error, which the correction stage removes."""
    meter = _ErrorMeter(graph, list(tensors), debiased)
    for batch in batches:
        executor.run(batch, meter, meter.observed)
    return meter.errors()


def auto_table(
    choices: Mapping[str, Mapping[str, ThresholdChoice]],
    histograms: Mapping[str, Histogram],
    errors: Iterable[TensorErrors],
    metadata: Mapping[str, str],
) -> CalibrationTable:
    """The table of each tensor's best method (the first candidate where all candidates agree)."""
    chosen = {name: AUTO_CANDIDATES[0] for name in histograms}
    chosen.update((measured.tensor, measured.best()) for measured in errors)
    records = tuple(
        TensorCalibration(
            name,
            chosen[name],
            choices[chosen[name]][name].threshold,
            histograms[name].signed,
            choices[chosen[name]][name].divergence,
        )
        for name in sorted(histograms)
    )
    return CalibrationTable(records, dict(metadata))


class _ErrorMeter:
    """An FP32 executor observer: per example, each candidate's error energy and the reference energy."""

    def __init__(self, graph: Graph, tensors: list[TensorCandidates], debiased: bool) -> None:
        self.graph = graph
        self.nodes = {node.name: node for node in graph.nodes}
        self.tensors = tensors
        self.by_input: dict[str, list[tuple[TensorCandidates, str | None]]] = {}
        for measured in tensors:
            for layer in measured.layers or (None,):
                observed = measured.tensor if layer is None else self.nodes[layer].inputs[0]
                self.by_input.setdefault(observed, []).append((measured, layer))
        self.debiased = debiased
        self.squares: dict[tuple[str, str | None, str], list[float]] = {}
        self.channel_sums: dict[tuple[str, str | None, str], list[np.ndarray]] = {}
        self.energy: dict[tuple[str, str | None], list[float]] = {}
        self.positions: dict[tuple[str, str | None], int] = {}

    @property
    def observed(self) -> frozenset[str]:
        return frozenset(self.by_input)

    def __call__(self, name: str, values: np.ndarray) -> None:
        x = to_numpy(values).astype(np.float32, copy=False)  # on the host: a device run copies each batch once
        with fixed_blas_threads():
            for measured, layer in self.by_input[name]:
                levels = UINT8_LEVELS if measured.unsigned else INT8_LEVELS
                if len(measured.layers) > 1:  # the layers' errors are added relative to their outputs
                    self.energy.setdefault((measured.tensor, layer), []).extend(
                        example_squares(self._apply(layer, x)).tolist()
                    )
                for method, threshold in measured.candidates:
                    scale = np.float32(threshold / levels)
                    error = self._apply(layer, dequantize(quantize(x, scale, measured.unsigned), scale) - x)
                    key = (measured.tensor, layer, method)
                    self.squares.setdefault(key, []).extend(example_squares(error).tolist())
                    if self.debiased and layer is not None:
                        channels = error.reshape(len(error), error.shape[1], -1).astype(np.float64)
                        self.positions[key[:2]] = channels.shape[2]
                        self.channel_sums.setdefault(key, []).append(channels.sum(axis=2))

    def _apply(self, layer: str | None, x: np.ndarray) -> np.ndarray:
        """The layer without its bias (the identity for a tensor measured on itself)."""
        if layer is None:
            return x
        node = self.nodes[layer]
        if node.op_type == "Conv":
            weight = self.graph.initializers[node.inputs[1]]
            strides, pads, dilations = window_geometry(node, x.shape[2:], weight.shape[2:])
            return conv2d(x, weight, None, strides, pads, dilations, int(node.attribute("group", 1)))
        weight = linear_weight(self.graph, node)
        assert weight is not None  # the pass made it an Int8MatMul: a constant 2-D weight
        return row_stable_matmul(x.reshape(-1, weight.shape[0]), weight).reshape(len(x), -1)

    def errors(self) -> list[TensorErrors]:
        results = []
        for measured in self.tensors:
            layers = measured.layers or (None,)
            relative = []
            for method, _ in measured.candidates:
                total = 0.0
                for layer in layers:
                    energy = math.fsum(self.energy.get((measured.tensor, layer), ()))
                    squares = self._squares(measured.tensor, layer, method)
                    total += squares / energy if energy > 0.0 else squares
                relative.append((method, total))
            results.append(TensorErrors(measured.tensor, tuple(relative)))
        return results

    def _squares(self, tensor: str, layer: str | None, method: str) -> float:
        """The error energy over the slice; debiased, less what a per-channel shift takes away
        (the count times each channel's squared mean error), each channel's sum added exactly."""
        squares = math.fsum(self.squares.get((tensor, layer, method), ()))
        sums = self.channel_sums.get((tensor, layer, method))
        if not sums:
            return squares
        per_channel = np.concatenate(sums)
        count = per_channel.shape[0] * self.positions[(tensor, layer)]
        removed = math.fsum(math.fsum(column) ** 2 for column in per_channel.T) / count
        return max(squares - removed, 0.0)


def measure_auto_table(
    graph: Graph,
    histograms: Mapping[str, Histogram],
    settings: ThresholdSettings,
    options: QuantizationOptions,
    executor: FP32Executor,
    batches: Iterable[Mapping[str, np.ndarray]],
    metadata: Mapping[str, str],
    debiased: bool,
) -> CalibrationTable:
    """The table ``--method auto`` writes, in one process (benchmarks): ``batches`` are the slice."""
    choices = candidate_choices(histograms, settings)
    measured = tensor_candidates(choices, histograms, threshold_readers(graph, options), settings.unsigned_activations)
    errors = measure_errors(graph, executor, measured, batches, debiased)
    return auto_table(choices, histograms, errors, metadata)

"""What one Dask task does with one shard: read its own examples, run the model, write or count.

Only small, picklable descriptions travel to a worker (paths, fingerprints, index rules) and only
paths and counts come back; the examples and activations never leave the worker. Models, data sets
and INT8 graphs are loaded once per worker process and cached by their content's fingerprint (the
one the plan recorded), not by their location: a long-lived worker (an external cluster that serves
every nightly run) must not read yesterday's file listing or Parquet footers for a URI whose data
has been rewritten since.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import onnxruntime

from int8flow.kernels.backend import select_backend, to_numpy
from int8flow.kernels.int8_gemm import gemm_fallbacks
from int8flow.schemas.calibration_table import CalibrationTable, CalibrationTableError
from int8flow.schemas.stage_records import NodeSensitivity
from int8flow.tasks.calibration.bias_correction import InputSums, corrected_layers
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.method_choice import TensorCandidates, TensorErrors, measure_errors
from int8flow.tasks.calibration.partial_files import write_partial_histograms
from int8flow.tasks.calibration.sums_files import write_partial_sums
from int8flow.tasks.data.mnist_idx import DatasetError
from int8flow.tasks.data.preprocess import parse_preprocess
from int8flow.tasks.data.sharding import batch_ranges, shard_range
from int8flow.tasks.data.sources import Batch, ImageDataset, load_batch, open_dataset
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.export_qdq import export_qdq
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.load import import_model, load_model
from int8flow.tasks.graph.onnxruntime_engine import FP32Executor, OnnxRuntimeExecutor, deployment_session
from int8flow.tasks.graph.quantize_pass import QuantizationOptions, quantize_graph
from int8flow.tasks.graph.simplify import simplify
from int8flow.tasks.validation.sensitivity import Fp32Reference, fp32_reference, node_errors

TOP_K = 5


@dataclass(frozen=True)
class ModelRef:
    """The FP32 model as every worker finds it: where to read it, the bytes it must hash to, and what
    runs it (``device``; on CPU workers, ``engine``)."""

    path: str
    sha256: str
    device: str
    engine: str


@dataclass(frozen=True)
class ShardSpec:
    """Which examples shard ``shard`` of ``shards`` holds, and how to turn them into model inputs.

    The examples are a seeded sample of ``sample`` out of ``total`` (all of them when ``sample`` is
    ``total``, and the first ``sample`` when ``seed`` is None), split into contiguous ranges.
    """

    data_uri: str
    data_fingerprint: str
    total: int
    sample: int
    seed: int | None
    shard: int
    shards: int
    batch_size: int
    preprocess: str
    on_bad_image: str

    def indices(self) -> np.ndarray:
        chosen = sample_indices(self.total, self.sample, self.seed)
        mine = shard_range(len(chosen), self.shards, self.shard)
        return chosen[mine.start : mine.stop]


@dataclass(frozen=True)
class Int8Ref:
    """How a worker rebuilds the INT8 graph: the calibration table file and the pass options, and how
    model.int8.onnx stores signed tensors (``export_qdq``), for the deployment check."""

    table_path: str
    table_sha256: str
    options: QuantizationOptions
    signed_storage: str


@dataclass(frozen=True)
class ObservedShard:
    path: str
    shard: int
    examples: int
    skipped: int
    skipped_sources: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class ValidatedShard:
    """Hit counts of one validation shard; sums of these are the run's accuracy."""

    shard: int
    examples: int
    skipped: int
    fp32_top1: int
    fp32_top5: int
    int8_top1: int
    int8_top5: int
    agreement_top1: int
    deploy_top1: int
    deploy_top5: int
    deploy_agreement_top1: int
    gemm_fallbacks: int
    seconds: float


@dataclass(frozen=True)
class MeasuredShare:
    """One share of the per-tensor method choice: each of its tensors' candidate errors, in order.
    ``examples``: slice examples run, for progress."""

    shard: int
    examples: int
    tensors: tuple[TensorErrors, ...]


@dataclass(frozen=True)
class RankedNodes:
    """One share of the sensitivity ranking: each of its candidates' error, in candidate order.
    ``examples``: INT8 passes over examples it ran (slice size times candidates), for progress."""

    shard: int
    examples: int
    nodes: tuple[NodeSensitivity, ...]


def sample_indices(total: int, sample: int, seed: int | None) -> np.ndarray:
    """Sorted example indices: a seeded sample spreads calibration over every class of a sorted set."""
    if sample >= total:
        return np.arange(total)
    if seed is None:
        return np.arange(sample)
    return np.sort(np.random.default_rng(seed).choice(total, size=sample, replace=False))


def observe_shard(
    model: ModelRef, spec: ShardSpec, tensors: tuple[str, ...], num_bins: int, path: str, run_key: str, threads: int
) -> ObservedShard:
    """Histograms of ``tensors`` over the shard, written atomically to ``path``."""
    started = time.perf_counter()
    graph, executor = _fp32_executor(model, threads)
    tally = _Tally()
    inputs = ({graph.inputs[0].name: batch.inputs} for batch in tally.usable(_batches(spec, graph)))
    histograms = collect_histograms(executor, inputs, tensors, num_bins)
    write_partial_histograms(path, run_key, model.sha256, spec.shard, histograms)
    return ObservedShard(
        path, spec.shard, tally.examples, tally.skipped, tuple(tally.sources), time.perf_counter() - started
    )


def correct_shard(
    model: ModelRef, spec: ShardSpec, int8: Int8Ref, path: str, run_key: str, threads: int
) -> ObservedShard:
    """The bias-correction sums of the shard's calibration examples, written atomically to ``path``."""
    started = time.perf_counter()
    graph, executor = _fp32_executor(model, threads)
    layers = corrected_layers(graph, uncorrected_int8_graph(model, int8))
    sums = InputSums(layers)
    tally = _Tally()
    for batch in tally.usable(_batches(spec, graph)):
        executor.run({graph.inputs[0].name: batch.inputs}, sums, sums.tensors)
    write_partial_sums(path, run_key, int8.table_sha256, spec.shard, sums.layer_sums(graph, layers, tally.examples))
    return ObservedShard(
        path, spec.shard, tally.examples, tally.skipped, tuple(tally.sources), time.perf_counter() - started
    )


def measure_share(
    model: ModelRef, spec: ShardSpec, tensors: tuple[TensorCandidates, ...], debiased: bool, share: int, threads: int
) -> MeasuredShare:
    """The candidate errors of ``tensors`` (share ``share`` of the measured tensors) on the slice ``spec``."""
    graph, executor = _fp32_executor(model, threads)
    tally = _Tally()
    inputs = ({graph.inputs[0].name: batch.inputs} for batch in tally.usable(_batches(spec, graph)))
    errors = measure_errors(graph, executor, tensors, inputs, debiased)
    return MeasuredShare(share, tally.examples, tuple(errors))


def validate_shard(
    model: ModelRef, spec: ShardSpec, int8: Int8Ref, deploy_runtime: str, threads: int
) -> ValidatedShard:
    """FP32, INT8 and deployed-INT8 top-1/top-5 hits and top-1 agreements over the shard's labelled examples.

    ``deploy_runtime`` "onnxruntime" also runs the QDQ export of the same INT8 graph (the bytes of
    ``model.int8.onnx``) as users deploy it; "none" leaves its counts at 0.
    """
    started = time.perf_counter()
    graph, fp32 = _fp32_executor(model, threads)
    quantized = _int8_executor(model, int8)
    deployed = _deployed_int8(model, int8, threads) if deploy_runtime == "onnxruntime" else None
    classes = graph.outputs[0].shape[-1]
    counts = np.zeros(8, dtype=np.int64)
    fallbacks_before = gemm_fallbacks()
    tally = _Tally()
    for batch in tally.usable(_batches(spec, graph)):
        check_labels(batch.labels, classes, spec.data_uri)
        inputs = {graph.inputs[0].name: batch.inputs}
        fp32_ranks = top_k(to_numpy(fp32.run(inputs)[graph.outputs[0].name]))
        int8_ranks = top_k(to_numpy(quantized.run(inputs)[graph.outputs[0].name]))
        labels = batch.labels[:, None]
        counts[:5] += [
            *_hits(fp32_ranks, labels),
            *_hits(int8_ranks, labels),
            np.sum(fp32_ranks[:, 0] == int8_ranks[:, 0]),
        ]
        if deployed is not None:
            deploy_ranks = top_k(deployed.run(None, inputs)[0])
            counts[5:] += [*_hits(deploy_ranks, labels), np.sum(deploy_ranks[:, 0] == int8_ranks[:, 0])]
    return ValidatedShard(
        spec.shard,
        tally.examples,
        tally.skipped,
        *map(int, counts),
        gemm_fallbacks() - fallbacks_before,
        time.perf_counter() - started,
    )


def _hits(ranks: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """Top-1 and top-5 hits of a batch's ranked classes against its labels (one column)."""
    return int(np.sum(ranks[:, :1] == labels)), int(np.sum(np.any(ranks == labels, axis=1)))


def rank_shard(model: ModelRef, int8: Int8Ref, spec: ShardSpec, candidates: tuple[str, ...], share: int) -> RankedNodes:
    """The sensitivity of ``candidates`` (share ``share`` of the fallback's candidates) on the slice ``spec``."""
    graph = fp32_graph(model)
    reference = _sensitivity_reference(model, spec)
    backend = select_backend(model.device)
    nodes = node_errors(graph, calibration_table(int8), int8.options, reference, backend, candidates)
    return RankedNodes(share, reference.examples * len(candidates), tuple(nodes))


@functools.lru_cache(maxsize=1)
def _sensitivity_reference(model: ModelRef, spec: ShardSpec) -> Fp32Reference:
    """The slice and its FP32 outputs, once per worker for all the ranking's tasks (one per node);
    one entry, so a long-lived worker keeps only the last ranking's slice."""
    graph = fp32_graph(model)
    batches = [batch.inputs for batch in _Tally().usable(_batches(spec, graph))]
    return fp32_reference(graph, {graph.inputs[0].name: np.concatenate(batches)}, select_backend(model.device))


def top_k(logits: np.ndarray) -> np.ndarray:
    """The ``TOP_K`` best classes of each row; equal scores rank by class index, so ties are stable."""
    flat = logits.reshape(len(logits), -1)
    return np.argsort(-flat, axis=1, kind="stable")[:, :TOP_K]


def check_labels(labels: np.ndarray, classes: int | None, source: str, scope: str = "one batch") -> None:
    """Planning checks the labels a run will validate with; workers check each batch they decode."""
    if classes is None:
        return
    bad = labels[(labels < 0) | (labels >= classes)]
    if len(bad):
        raise DatasetError(
            f"{source}: label {int(bad[0])} is out of range for the model's {classes} classes "
            f"({len(bad)} such labels in {scope}); check that the data set matches the model"
        )


@dataclass
class _Tally:
    """What a shard's batches held: examples that decoded, images skipped and where those came from."""

    examples: int = 0
    skipped: int = 0
    sources: list[str] = field(default_factory=list)

    def usable(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """The batches with at least one decoded example, counted as they pass."""
        for batch in batches:
            self.skipped += batch.skipped
            self.sources.extend(batch.skipped_sources)
            if len(batch.labels):
                self.examples += len(batch.labels)
                yield batch


def _batches(spec: ShardSpec, graph: Graph) -> Iterator[Batch]:
    dataset = _dataset(spec.data_uri, spec.data_fingerprint)
    preprocess = parse_preprocess(spec.preprocess)
    input_shape = graph.inputs[0].shape
    indices = spec.indices()
    for batch in batch_ranges(range(len(indices)), spec.batch_size):
        yield load_batch(dataset, indices[batch.start : batch.stop], preprocess, input_shape, spec.on_bad_image)


@functools.lru_cache(maxsize=4)
def _dataset(uri: str, fingerprint: str) -> ImageDataset:
    """The data set at ``uri`` as it was when planned: keyed by ``fingerprint``, a rewrite is a new entry."""
    return open_dataset(uri)


@functools.lru_cache(maxsize=2)
def fp32_graph(model: ModelRef) -> Graph:
    """The simplified FP32 graph, checked against the fingerprint the plan recorded.

    The fingerprint covers external-data files too, read next to the model as on the planner, so
    weights rewritten after planning are refused rather than mixed into the run.
    """
    loaded = load_model(model.path, planned_fingerprint=model.sha256)
    return simplify(import_model(loaded.proto, model.path))


@functools.lru_cache(maxsize=2)
def _fp32_executor(model: ModelRef, threads: int) -> tuple[Graph, FP32Executor]:
    graph = fp32_graph(model)
    backend = select_backend(model.device)
    if backend is np and model.engine == "onnxruntime":
        return graph, OnnxRuntimeExecutor(graph, threads)
    return graph, GraphExecutor(graph, backend)


@functools.lru_cache(maxsize=4)
def calibration_table(int8: Int8Ref) -> CalibrationTable:
    """The run's table file, which must still hash to what the run validated first."""
    with fsspec.open(int8.table_path, "rb") as file:
        data = file.read()
    if hashlib.sha256(data).hexdigest() != int8.table_sha256:
        raise CalibrationTableError(
            f"{int8.table_path}: the calibration table changed while the run validated; start the run again"
        )
    return CalibrationTable.from_json(data.decode("utf-8"), int8.table_path)


@functools.lru_cache(maxsize=4)
def int8_graph(model: ModelRef, int8: Int8Ref) -> Graph:
    return quantize_graph(fp32_graph(model), calibration_table(int8), int8.options)


@functools.lru_cache(maxsize=2)
def uncorrected_int8_graph(model: ModelRef, int8: Int8Ref) -> Graph:
    """The INT8 graph without the table's bias corrections: what the corrections are measured on, so
    that a retried correction stage measures the same weights as the first attempt."""
    table = dataclasses.replace(calibration_table(int8), bias_corrections={})
    return quantize_graph(fp32_graph(model), table, int8.options)


@functools.lru_cache(maxsize=4)
def _int8_executor(model: ModelRef, int8: Int8Ref) -> GraphExecutor:
    return GraphExecutor(int8_graph(model, int8), select_backend(model.device), INT8_OPS)


@functools.lru_cache(maxsize=2)
def _deployed_int8(model: ModelRef, int8: Int8Ref, threads: int) -> onnxruntime.InferenceSession:
    """The QDQ export of the INT8 graph, the same bytes ``model.int8.onnx`` holds, in onnxruntime."""
    return deployment_session(export_qdq(int8_graph(model, int8), int8.signed_storage), threads)

"""The INT8 models the accuracy benchmarks compare: int8flow's variants, onnxruntime's quantize_static
and NNCF, all from the same calibration examples, in the same run.

int8flow: one observe pass (8192-bin histograms, onnxruntime as the FP32 engine), then each method
with the defaults' uint8 storage of non-negative tensors (auto: the per-tensor choice measured on a
seeded sample of ``--auto-examples`` calibration examples), bias correction off and on (over a
seeded sample of ``--correction-examples``, as a run takes it); the published algorithms' contract
(symmetric int8, no bias correction) for entropy; and the default method with bias correction and
symmetric int8 (``--no-unsigned-activations``). All run by int8flow's INT8 executor, which
onnxruntime's integer kernels match bit for bit on this CPU (RESULTS.md).
onnxruntime.quantization.quantize_static: QDQ, per-channel, QInt8 weights and activations, methods
MinMax, Entropy (its defaults: 128/128 bins) and Percentile (its default 99.999). NNCF: see
``nncf_peer``. Both peers' QDQ models are run by onnxruntime.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from nncf_peer import nncf_quantize, nncf_variants
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.schemas.run_config import SETTINGS_BY_NAME
from int8flow.schemas.threshold_settings import AUTO_METHOD, METHOD_CHOICES
from int8flow.tasks.calibration.bias_correction import measure_bias_corrections
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.method_choice import measure_auto_table
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.distributed.shard_jobs import sample_indices
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.onnxruntime_engine import OnnxRuntimeExecutor
from int8flow.tasks.graph.quantize_pass import QuantizationOptions, calibration_tensors, quantize_graph

BATCH = 32
HISTOGRAM_PEER_EXAMPLES = 256
"""onnxruntime's Entropy and Percentile calibrators keep every activation in memory: 512
EfficientNet-Lite0 crops exceeded this machine's 24 GiB, so they see at most the first 256."""
Predict = Callable[[np.ndarray], np.ndarray]
"""Logits of a batch of examples."""


def batches(name: str, examples: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{name: examples[i : i + BATCH]} for i in range(0, len(examples), BATCH)]


def logits(predict: Predict, examples: np.ndarray) -> np.ndarray:
    return np.concatenate([predict(examples[i : i + BATCH]) for i in range(0, len(examples), BATCH)])


def subsample(examples: np.ndarray, setting: str) -> np.ndarray:
    """The seeded sample of ``examples`` a run takes by default for ``setting`` (a count)."""
    indices = sample_indices(len(examples), SETTINGS_BY_NAME[setting].default, SETTINGS_BY_NAME["seed"].default)
    return examples[indices]


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    """``--methods``, ``--peers-only`` and ``--no-peers``: which of the compared models a run builds."""
    parser.add_argument(
        "--methods", nargs="+", choices=METHOD_CHOICES, default=list(METHOD_CHOICES), help="int8flow's methods"
    )
    parser.add_argument("--peers-only", action="store_true", help="skip int8flow's variants")
    parser.add_argument("--no-peers", action="store_true", help="skip onnxruntime's and NNCF's")


def compared_models(
    args: argparse.Namespace, model: str, graph: Graph, calib: np.ndarray
) -> Iterator[tuple[str, float, Predict]]:
    """(label, calibration seconds, predict) of the models the options select, int8flow's first."""
    ours = () if args.peers_only else int8flow_models(graph, calib, args.methods)
    peers = () if args.no_peers else peer_models(model, graph.inputs[0].name, calib)
    return itertools.chain(ours, peers)


def int8flow_models(graph: Graph, calib: np.ndarray, methods: Sequence[str]) -> Iterator[tuple[str, float, Predict]]:
    """(label, calibration seconds, predict) of each int8flow variant of ``methods``."""
    name, output = graph.inputs[0].name, graph.outputs[0].name
    fp32 = OnnxRuntimeExecutor(graph, threads=2)
    started = time.perf_counter()
    histograms = collect_histograms(fp32, batches(name, calib), calibration_tensors(graph))
    observe_seconds = time.perf_counter() - started
    default = ThresholdSettings.method
    published = [("entropy symmetric (published)", "entropy", False, False)] if "entropy" in methods else []
    symmetric = [(f"{default} symmetric + bias correction", default, False, True)] if default in methods else []
    variants = (
        published
        + symmetric
        + [
            (f"{method}{' + bias correction' if correct else ''}", method, True, correct)
            for method in methods
            for correct in (False, True)
        ]
    )
    for label, method, unsigned, correct in variants:
        started = time.perf_counter()
        settings = ThresholdSettings(method=method, unsigned_activations=unsigned)
        options = QuantizationOptions(unsigned_activations=unsigned)
        if method == AUTO_METHOD:
            auto_slice = batches(name, subsample(calib, "auto_examples"))
            table = measure_auto_table(graph, histograms, settings, options, fp32, auto_slice, {}, correct)
        else:
            table = build_calibration_table(histograms, settings, {})
        if correct:
            corrected = subsample(calib, "correction_examples")
            shifts = measure_bias_corrections(
                graph, quantize_graph(graph, table, options), fp32, batches(name, corrected)
            )
            table = dataclasses.replace(table, bias_corrections=shifts)
        executor = GraphExecutor(quantize_graph(graph, table, options), ops=INT8_OPS)
        seconds = observe_seconds + time.perf_counter() - started
        yield f"int8flow {label}", seconds, lambda x, executor=executor: executor.run({name: x})[output]


class _Reader(CalibrationDataReader):
    """Batches of one size: onnxruntime's Entropy and Percentile collectors stack them, and fail on a
    shorter last batch (1,000 examples in 32s)."""

    def __init__(self, name: str, examples: np.ndarray) -> None:
        size = max(size for size in range(1, BATCH + 1) if len(examples) % size == 0)
        self.batches = iter([{name: examples[i : i + size]} for i in range(0, len(examples), size)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def peer_models(model: str, name: str, calib: np.ndarray) -> Iterator[tuple[str, float, Predict]]:
    """(label, calibration seconds, predict) of onnxruntime's quantize_static methods and NNCF's presets."""
    with tempfile.TemporaryDirectory() as folder:
        for label, method in (
            ("MinMax", CalibrationMethod.MinMax),
            ("Entropy", CalibrationMethod.Entropy),
            ("Percentile", CalibrationMethod.Percentile),
        ):
            output = str(Path(folder) / f"{label}.onnx")
            examples = calib if method == CalibrationMethod.MinMax else calib[:HISTOGRAM_PEER_EXAMPLES]
            started = time.perf_counter()
            quantize_static(
                model,
                output,
                _Reader(name, examples),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
            )
            yield f"onnxruntime {label} {len(examples)}", time.perf_counter() - started, _session_predict(output, name)
    for label, preset, subset in nncf_variants(len(calib)):
        started = time.perf_counter()
        quantized = nncf_quantize(model, name, calib, preset, subset)
        yield label, time.perf_counter() - started, _session_predict(quantized, name)


def _session_predict(model: str | bytes, name: str) -> Predict:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {name: x})[0]

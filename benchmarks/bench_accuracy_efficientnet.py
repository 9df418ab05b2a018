"""INT8 vs FP32 top-1 agreement on EfficientNet-Lite0: int8flow against onnxruntime's quantize_static.

There are no labelled ImageNet images here, so every method is scored by how often its INT8 top-1
agrees with FP32's, on real photo crops (bundled with scikit-image / scikit-learn), overall and on
confident crops (FP32 top-1 probability >= 0.5). Same calibration crops and validation crops for
everyone, same run.

- int8flow: one observe pass (8192-bin histograms), then entropy / naive / percentile / mse
  thresholds; symmetric int8 activations (and, as "uint8", the option that stores tensors
  calibrated non-negative as uint8), per-channel int8 weights, run by our INT8 executor.
- onnxruntime.quantization.quantize_static: QDQ, per-channel, QInt8 weights and activations,
  calibration methods MinMax, Entropy (its defaults: num_bins=128, num_quantized_bins=128) and
  Percentile (its default 99.999), run by onnxruntime.

    .venv/bin/python benchmarks/bench_accuracy_efficientnet.py [--calib 256] [--val 1024]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bench_cli import model_parser
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from int8flow.kernels.thresholds import METHODS, ThresholdSettings
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.data.photos import photo_crops
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.quantize_pass import QuantizationOptions, calibration_tensors, quantize_graph
from int8flow.tasks.graph.simplify import simplify

BATCH = 32


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, crops: np.ndarray) -> None:
        self.batches = iter([{name: crops[i : i + BATCH]} for i in range(0, len(crops), BATCH)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def top1(run, name: str, crops: np.ndarray) -> np.ndarray:
    return np.concatenate([run({name: crops[i : i + BATCH]}).argmax(axis=1) for i in range(0, len(crops), BATCH)])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--val", type=int, default=1024)
    args = parser.parse_args()

    calib = photo_crops(args.calib, seed=11)
    val = photo_crops(args.val, seed=12)
    graph, _ = load_graph(args.model)
    graph = simplify(graph)
    name = graph.inputs[0].name
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    fp32_logits = np.concatenate([session.run(None, {name: val[i : i + BATCH]})[0] for i in range(0, len(val), BATCH)])
    fp32_top1 = fp32_logits.argmax(axis=1)
    confident = softmax(fp32_logits).max(axis=1) >= 0.5
    print(f"{args.calib} calibration crops, {args.val} validation crops ({confident.sum()} confident)")

    rows = []
    start = time.perf_counter()
    executor = GraphExecutor(graph)
    histograms = collect_histograms(
        executor, [{name: calib[i : i + BATCH]} for i in range(0, len(calib), BATCH)], calibration_tensors(graph)
    )
    observe_seconds = time.perf_counter() - start
    for method in METHODS:
        for unsigned in (False, True):
            start = time.perf_counter()
            settings = ThresholdSettings(method=method, unsigned_activations=unsigned)
            table = build_calibration_table(histograms, settings, {})
            seconds = observe_seconds + time.perf_counter() - start
            options = QuantizationOptions(unsigned_activations=unsigned)
            int8 = GraphExecutor(quantize_graph(graph, table, options), ops=INT8_OPS)
            predicted = top1(lambda feed, executor=int8: executor.run(feed)[graph.outputs[0].name], name, val)
            rows.append((f"int8flow {method}{' uint8' if unsigned else ''}", seconds, predicted))

    with tempfile.TemporaryDirectory() as folder:
        for label, method in (
            ("MinMax", CalibrationMethod.MinMax),
            ("Entropy", CalibrationMethod.Entropy),
            ("Percentile", CalibrationMethod.Percentile),
        ):
            output = str(Path(folder) / f"{label}.onnx")
            start = time.perf_counter()
            quantize_static(
                args.model,
                output,
                _Reader(name, calib),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
            )
            seconds = time.perf_counter() - start
            quantized = ort.InferenceSession(output, providers=["CPUExecutionProvider"])
            predicted = top1(lambda feed, session=quantized: session.run(None, feed)[0], name, val)
            rows.append((f"onnxruntime {label}", seconds, predicted))

    print(f"{'method':<24}{'calibration s':>14}{'agreement':>11}{'confident':>11}")
    for label, seconds, predicted in rows:
        agree = predicted == fp32_top1
        print(f"{label:<24}{seconds:>14.1f}{agree.mean():>11.1%}{agree[confident].mean():>11.1%}")


if __name__ == "__main__":
    main()

"""Forward-pass speed on EfficientNet-Lite0: our FP32 and INT8 executors against onnxruntime.

Same process, same batch of real photo crops, best of several runs each:
- our FP32 executor (NumPy) vs onnxruntime's CPU session (target: within 2x);
- our INT8 executor vs our FP32 executor (target: within 2x).

    .venv/bin/python benchmarks/bench_runtime.py [--model models/efficientnet_lite0.onnx] [--batch 32]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from bench_cli import model_parser

from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.data.photos import photo_crops
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.quantize_pass import calibration_tensors, quantize_graph
from int8flow.tasks.graph.simplify import simplify


def best_time(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    graph, _ = load_graph(args.model)
    graph = simplify(graph)
    name = graph.inputs[0].name
    batch = {name: photo_crops(args.batch, seed=1)}
    fp32 = GraphExecutor(graph)
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])

    calibration = [{name: photo_crops(args.batch, seed=100 + i)} for i in range(2)]
    histograms = collect_histograms(fp32, calibration, calibration_tensors(graph))
    table = build_calibration_table(histograms, ThresholdSettings(method="entropy"), {})
    int8 = GraphExecutor(quantize_graph(graph, table), ops=INT8_OPS)

    ort_seconds = best_time(lambda: session.run(None, batch), args.repeats)
    fp32_seconds = best_time(lambda: fp32.run(batch), args.repeats)
    int8_seconds = best_time(lambda: int8.run(batch), args.repeats)
    print(f"EfficientNet-Lite0, batch {args.batch}, best of {args.repeats}:")
    print(
        f"  onnxruntime FP32 {ort_seconds * 1e3:.0f} ms | ours FP32 {fp32_seconds * 1e3:.0f} ms"
        f" | ours INT8 {int8_seconds * 1e3:.0f} ms"
    )
    print(f"  ours FP32 / onnxruntime FP32 = {fp32_seconds / ort_seconds:.2f} (target <= 2)")
    print(f"  ours INT8 / ours FP32 = {int8_seconds / fp32_seconds:.2f} (target <= 2)")
    outputs = fp32.run(batch)[graph.outputs[0].name]
    reference = session.run(None, batch)[0]
    error = np.abs(outputs - reference).max() / np.abs(reference).max()
    print(f"  max |ours - onnxruntime| / max |onnxruntime| = {error:.2e}")


if __name__ == "__main__":
    main()

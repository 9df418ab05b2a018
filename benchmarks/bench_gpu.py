"""GPU speed of EfficientNet-Lite0 at batch 256: our CuPy INT8 and FP32 and PyTorch FP32, outputs cross-checked.

Target: our INT8 at least 1.5x faster than our FP32, on the same GPU as the PyTorch FP32 reference.

- Times are medians of ``--repeats`` runs after ``--warmup`` runs, each run between two device
  synchronisations (wall clock), so every kernel of the run is inside its time.
- FP32 is strict FP32 on both sides: CuPy's cuBLAS runs in FP32 unless CUPY_TF32=1 (not set here),
  and PyTorch runs with TF32 off for cuDNN and for matmul (``allow_tf32 = False``), cuDNN autotuned.
- The PyTorch peer is built from the same simplified IR graph our executors run
  (``int8flow.tasks.graph.ir.Graph``), node by node as ``torch.nn.functional`` calls, so no
  efficientnet-lite package is needed; its logits are checked against our CuPy FP32 logits.
- INT8 is calibrated on the GPU on the benchmark batch, then our GPU INT8 logits on the first
  ``--slice`` examples are checked to equal, bit for bit, those of our CPU (NumPy) INT8 executor.

Input: seeded uniform noise in [-1, 1) (the model's preprocessed range); speed does not depend on it.
Exit status: 0 when the checks pass, 1 when one fails, 2 without a usable GPU. Run on a CUDA machine:

    make build/namespace/int8flow
    PYTHONPATH=build/namespace python3 benchmarks/bench_gpu.py [--model models/efficientnet_lite0.onnx] [--batch 256]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from bench_cli import model_parser

from int8flow.kernels.backend import gpu_available
from int8flow.kernels.int8_gemm import gemm_fallbacks
from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.graph.executor import GraphExecutor, host_read_constants
from int8flow.tasks.graph.fp32_ops import reshape_target, window_geometry
from int8flow.tasks.graph.fp32_tensor_ops import reduce_axes
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.ir import Graph, Node
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.quantize_pass import calibration_tensors, quantize_graph
from int8flow.tasks.graph.simplify import simplify

SPEEDUP_TARGET = 1.5
TORCH_RELATIVE_TOLERANCE = 1e-3
"""Largest |torch - ours| over the largest |logit| accepted for two FP32 implementations."""


def median_ms(
    run: Callable[[], object], synchronize: Callable[[], object], repeats: int, warmup: int, budget_s: float = 45.0
) -> dict:
    """Median, min and max of ``repeats`` synchronised runs, in milliseconds; fewer runs (at least 3)
    when the last warm-up run says ``repeats`` would take longer than ``budget_s``."""
    synchronize()
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        run()
        synchronize()
    last = time.perf_counter() - start
    repeats = max(min(repeats, int(budget_s / max(last, 1e-9))), min(repeats, 3))
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": repeats}


class TorchPeer:
    """The FP32 IR graph as ``torch.nn.functional`` calls, for the ops EfficientNet-Lite0 (and the
    usual CNN classifiers) use after ``simplify``; constants the ops read as numbers stay NumPy."""

    def __init__(self, graph: Graph, torch: Any, device: str) -> None:
        self.torch, self.graph = torch, graph
        self.functional = torch.nn.functional
        self.ops: dict[str, Callable[[Node, list[Any]], Any]] = {
            "Conv": self._conv,
            "Clip": self._clip,
            "Relu": lambda node, inputs: self.functional.relu(inputs[0]),
            "Add": lambda node, inputs: inputs[0] + inputs[1],
            "Mul": lambda node, inputs: inputs[0] * inputs[1],
            "ReduceMean": self._reduce_mean,
            "GlobalAveragePool": lambda node, inputs: inputs[0].mean(dim=(2, 3), keepdim=True),
            "Reshape": lambda node, inputs: inputs[0].reshape(reshape_target(node, tuple(inputs[0].shape), inputs[1])),
            "Flatten": lambda node, inputs: inputs[0].flatten(int(node.attribute("axis", 1))),
            "Gemm": self._gemm,
        }
        unsupported = sorted({node.op_type for node in graph.nodes} - set(self.ops))
        if unsupported:
            raise NotImplementedError(f"the PyTorch peer has no translation for {unsupported}")
        on_host = host_read_constants(graph)
        self.constants = {
            name: value if name in on_host else torch.from_numpy(np.array(value, copy=True, order="C")).to(device)
            for name, value in graph.initializers.items()
        }
        self.use_counts = graph.use_counts()

    def __call__(self, batch: Any) -> Any:
        values = {self.graph.inputs[0].name: batch}
        remaining = dict(self.use_counts)
        for node in self.graph.nodes:
            inputs = [values[name] if name in values else self.constants.get(name) for name in node.inputs]
            values[node.outputs[0]] = self.ops[node.op_type](node, inputs)
            for name in node.inputs:
                remaining[name] = remaining.get(name, 0) - 1
                if remaining[name] <= 0:
                    values.pop(name, None)
        return values[self.graph.outputs[0].name]

    def _conv(self, node: Node, inputs: list[Any]) -> Any:
        x, weight = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        strides, (top, left, bottom, right), dilations = window_geometry(
            node, tuple(x.shape[2:]), tuple(weight.shape[2:])
        )
        padding: tuple[int, int] = (top, left)
        if (top, left) != (bottom, right):  # asymmetric (TF "SAME" at stride 2): pad first, as ONNX does
            x = self.functional.pad(x, (left, right, top, bottom))
            padding = (0, 0)
        groups = int(node.attribute("group", 1))
        return self.functional.conv2d(x, weight, bias, strides, padding, dilations, groups)

    def _clip(self, node: Node, inputs: list[Any]) -> Any:
        if self.graph.opset < 11:
            low, high = node.attribute("min"), node.attribute("max")
        else:
            low = float(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
            high = float(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else None
        return self.torch.clamp(inputs[0], low, high)

    def _reduce_mean(self, node: Node, inputs: list[Any]) -> Any:
        axes = reduce_axes(node, inputs, self.graph.opset, inputs[0].ndim)
        return inputs[0].mean(dim=axes, keepdim=bool(node.attribute("keepdims", 1))) if axes else inputs[0]

    def _gemm(self, node: Node, inputs: list[Any]) -> Any:
        a = inputs[0].T if node.attribute("transA", 0) else inputs[0]
        b = inputs[1].T if node.attribute("transB", 0) else inputs[1]
        result = (a @ b) * float(node.attribute("alpha", 1.0))
        if len(inputs) > 2 and inputs[2] is not None:
            result = result + inputs[2] * float(node.attribute("beta", 1.0))
        return result


def torch_fp32(graph: Graph, batch: np.ndarray, repeats: int, warmup: int) -> tuple[dict, np.ndarray] | str:
    """PyTorch FP32 timing and logits, or why there are none."""
    try:
        import torch
    except ImportError:
        return "torch is not importable"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    peer = TorchPeer(graph, torch, "cuda")
    inputs = torch.from_numpy(batch).cuda()
    with torch.inference_mode():
        timing = median_ms(lambda: peer(inputs), torch.cuda.synchronize, repeats, warmup)
        logits = peer(inputs).float().cpu().numpy()
    timing["label"] = f"PyTorch {torch.__version__} FP32 (cuDNN {torch.backends.cudnn.version()}, TF32 off)"
    return timing, logits


def main() -> int:
    parser = model_parser(__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per implementation (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--slice", type=int, default=8, help="examples whose GPU INT8 logits must equal the CPU's")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not gpu_available():
        print("no GPU: CuPy is not importable or sees no CUDA device; bench_gpu.py needs one", file=sys.stderr)
        return 2
    import cupy

    device_name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    synchronize = cupy.cuda.Device().synchronize
    graph = simplify(load_graph(args.model)[0])
    name, output = graph.inputs[0].name, graph.outputs[0].name
    batch = np.random.default_rng(0).uniform(-1, 1, (args.batch, 3, 224, 224)).astype(np.float32)
    device_batch = {name: cupy.asarray(batch)}

    fp32 = GraphExecutor(graph, xp=cupy)
    histograms = collect_histograms(fp32, [device_batch], calibration_tensors(graph))
    quantized = quantize_graph(graph, build_calibration_table(histograms, ThresholdSettings(), {}))
    int8 = GraphExecutor(quantized, xp=cupy, ops=INT8_OPS)
    results: dict[str, Any] = {"device": device_name, "batch": args.batch, "model": args.model}
    results["ours_fp32"] = median_ms(lambda: fp32.run(device_batch), synchronize, args.repeats, args.warmup)
    results["ours_int8"] = median_ms(lambda: int8.run(device_batch), synchronize, args.repeats, args.warmup)
    fp32_logits = cupy.asnumpy(fp32.run(device_batch)[output])
    int8_logits = cupy.asnumpy(int8.run(device_batch)[output])
    speedup = results["ours_fp32"]["median_ms"] / results["ours_int8"]["median_ms"]
    results["int8_speedup"] = speedup
    results["int8_vs_fp32_cosine"] = float(
        np.sum(int8_logits * fp32_logits) / (np.linalg.norm(int8_logits) * np.linalg.norm(fp32_logits))
    )

    # Our GPU INT8 against our CPU INT8, bit for bit, on a slice (the CPU executor is slow).
    part = batch[: args.slice]
    on_cpu = GraphExecutor(quantized, ops=INT8_OPS).run({name: part})[output]
    on_gpu = cupy.asnumpy(int8.run({name: cupy.asarray(part)})[output])
    results["int8_gpu_equals_cpu"] = bool(np.array_equal(on_gpu, on_cpu))
    results["int8_gpu_cpu_max_abs_diff"] = float(np.max(np.abs(on_gpu - on_cpu)))
    results["int8_slice_equals_full_batch_rows"] = bool(np.array_equal(on_gpu, int8_logits[: args.slice]))

    torch_result = torch_fp32(graph, batch, args.repeats, args.warmup)
    if isinstance(torch_result, str):
        results["torch_fp32"] = {"skipped": torch_result}
    else:
        timing, torch_logits = torch_result
        error = float(np.max(np.abs(torch_logits - fp32_logits)))
        scale = float(np.max(np.abs(fp32_logits)))
        timing.update(max_abs_error_vs_ours=error, max_abs_logit=scale, relative_error=error / scale)
        timing["top1_agreement"] = float(np.mean(torch_logits.argmax(1) == fp32_logits.argmax(1)))
        results["torch_fp32"] = timing

    print(f"EfficientNet-Lite0, batch {args.batch}, {device_name} (median of up to {args.repeats} runs, ms):")
    rows = [("ours FP32 (CuPy)", results["ours_fp32"]), ("ours INT8 (CuPy)", results["ours_int8"])]
    if "median_ms" in results["torch_fp32"]:
        rows.append((results["torch_fp32"]["label"], results["torch_fp32"]))
    width = max(len(label) for label, _ in rows)
    for label, timing in rows:
        print(
            f"  {label:<{width}}  {timing['median_ms']:9.2f}  (min {timing['min_ms']:.2f}, max {timing['max_ms']:.2f}, "
            f"{timing['runs']} runs), {args.batch / timing['median_ms'] * 1e3:8.0f} images/s"
        )
    met = "MET" if speedup >= SPEEDUP_TARGET else "MISSED"
    print(f"  INT8 speed-up over our FP32: {speedup:.2f}x (target >= {SPEEDUP_TARGET}: {met})")
    print(f"  INT8 vs FP32 logits, cosine: {results['int8_vs_fp32_cosine']:.5f}")
    failures = []
    print(
        f"  GPU INT8 == CPU INT8 on {args.slice} examples: {results['int8_gpu_equals_cpu']} "
        f"(max |diff| {results['int8_gpu_cpu_max_abs_diff']:.3g}); slice == full-batch rows: "
        f"{results['int8_slice_equals_full_batch_rows']}"
    )
    if not results["int8_gpu_equals_cpu"]:
        failures.append("GPU INT8 logits differ from the CPU's")
    results["gemm_fallbacks"] = gemm_fallbacks()
    print(f"  int8 GEMMs cuBLAS refused (float64 fallback): {results['gemm_fallbacks']}")
    if results["gemm_fallbacks"]:
        failures.append("the INT8 timing includes float64 GEMM fallbacks: cuBLAS refused int8 GEMMs")
    if "median_ms" in results["torch_fp32"]:
        torch_check = results["torch_fp32"]
        print(
            f"  PyTorch vs our FP32 logits: max |diff| {torch_check['max_abs_error_vs_ours']:.3g} "
            f"(max |logit| {torch_check['max_abs_logit']:.3g}, relative {torch_check['relative_error']:.2e}), "
            f"top-1 agreement {torch_check['top1_agreement']:.4f}"
        )
        if torch_check["relative_error"] > TORCH_RELATIVE_TOLERANCE:
            failures.append(f"PyTorch FP32 and ours differ by more than {TORCH_RELATIVE_TOLERANCE:g} relative")
    else:
        print(f"  PyTorch FP32: not run ({results['torch_fp32']['skipped']})")
    results["failures"] = failures
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

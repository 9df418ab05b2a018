"""Our convolutions against onnxruntime on EfficientNet-Lite0's layer shapes at batch 32, same process.

Every distinct Conv of EfficientNet-Lite0 (224x224 input; 49 convs: the 3x3 stride-2 stem, 1x1
pointwise, 3x3 and 5x5 depthwise with stride 1 and 2) is timed three ways: onnxruntime running a
one-node Conv model (CPU provider, default threads), our FP32 ``conv2d``, and our exact
``int8_conv2d`` (int8 in, int32 accumulators out). Prints the best-of-N time of each, the ratios
ours/onnxruntime and int8/FP32, and the totals over the 49 convs weighted by how often each shape
occurs. The three runs are interleaved, so load from other processes falls on all of them alike.

    .venv/bin/python benchmarks/bench_kernels.py [--batch 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from int8flow.kernels.conv import conv2d
from int8flow.kernels.int8_gemm import int8_conv2d


@dataclass(frozen=True)
class Layer:
    """One Conv shape of the network and how many of the 49 convs have it."""

    in_channels: int
    out_channels: int
    size: int
    kernel: int
    stride: int
    depthwise: bool
    count: int

    @property
    def name(self) -> str:
        kind = f"dw{self.kernel}x{self.kernel}" if self.depthwise else f"conv{self.kernel}x{self.kernel}"
        return f"{kind} s{self.stride} {self.in_channels}->{self.out_channels} @{self.size}"


# EfficientNet-Lite0: stem, then MBConv stages (expand 1x1, depthwise, project 1x1), then the head.
LAYERS = [
    Layer(3, 32, 224, 3, 2, False, 1),
    Layer(32, 32, 112, 3, 1, True, 1),
    Layer(32, 16, 112, 1, 1, False, 1),
    Layer(16, 96, 112, 1, 1, False, 1),
    Layer(96, 96, 112, 3, 2, True, 1),
    Layer(96, 24, 56, 1, 1, False, 1),
    Layer(24, 144, 56, 1, 1, False, 2),
    Layer(144, 144, 56, 3, 1, True, 1),
    Layer(144, 24, 56, 1, 1, False, 1),
    Layer(144, 144, 56, 5, 2, True, 1),
    Layer(144, 40, 28, 1, 1, False, 1),
    Layer(40, 240, 28, 1, 1, False, 2),
    Layer(240, 240, 28, 5, 1, True, 1),
    Layer(240, 40, 28, 1, 1, False, 1),
    Layer(240, 240, 28, 3, 2, True, 1),
    Layer(240, 80, 14, 1, 1, False, 1),
    Layer(80, 480, 14, 1, 1, False, 3),
    Layer(480, 480, 14, 3, 1, True, 2),
    Layer(480, 80, 14, 1, 1, False, 2),
    Layer(480, 480, 14, 5, 1, True, 1),
    Layer(480, 112, 14, 1, 1, False, 1),
    Layer(112, 672, 14, 1, 1, False, 3),
    Layer(672, 672, 14, 5, 1, True, 2),
    Layer(672, 112, 14, 1, 1, False, 2),
    Layer(672, 672, 14, 5, 2, True, 1),
    Layer(672, 192, 7, 1, 1, False, 1),
    Layer(192, 1152, 7, 1, 1, False, 4),
    Layer(1152, 1152, 7, 5, 1, True, 3),
    Layer(1152, 192, 7, 1, 1, False, 3),
    Layer(1152, 1152, 7, 3, 1, True, 1),
    Layer(1152, 320, 7, 1, 1, False, 1),
    Layer(320, 1280, 7, 1, 1, False, 1),
]


def onnx_conv_session(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, layer: Layer) -> ort.InferenceSession:
    pad = (layer.kernel - 1) // 2
    node = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        strides=[layer.stride] * 2,
        pads=[pad] * 4,
        group=layer.in_channels if layer.depthwise else 1,
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def best_seconds(runs: list[Callable[[], object]], repeats: int) -> np.ndarray:
    """Best-of-``repeats`` seconds of each run, the runs interleaved so that load from other
    processes falls on all of them alike."""
    for run in runs:
        run()
    times = np.full((repeats, len(runs)), np.inf)
    for repeat in range(repeats):
        for index, run in enumerate(runs):
            start = time.perf_counter()
            run()
            times[repeat, index] = time.perf_counter() - start
    return times.min(axis=0)


def time_layer(layer: Layer, batch: int, repeats: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds of onnxruntime, our FP32 conv2d and our int8_conv2d on one layer shape."""
    group_channels = 1 if layer.depthwise else layer.in_channels
    x = rng.standard_normal((batch, layer.in_channels, layer.size, layer.size), dtype=np.float32)
    weight = rng.standard_normal((layer.out_channels, group_channels, layer.kernel, layer.kernel), dtype=np.float32)
    bias = rng.standard_normal(layer.out_channels, dtype=np.float32)
    x_int8 = rng.integers(-127, 128, x.shape, dtype=np.int8)
    w_int8 = rng.integers(-127, 128, weight.shape, dtype=np.int8)
    pad = (layer.kernel - 1) // 2
    geometry = {
        "strides": (layer.stride,) * 2,
        "pads": (pad,) * 4,
        "dilations": (1, 1),
        "groups": layer.in_channels if layer.depthwise else 1,
    }
    session = onnx_conv_session(x, weight, bias, layer)
    return best_seconds(
        [
            lambda: session.run(None, {"x": x}),
            lambda: conv2d(x, weight, bias, **geometry),
            lambda: int8_conv2d(x_int8, w_int8, **geometry),
        ],
        repeats,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"batch {args.batch}, best of {args.repeats}; times in ms")
    print(f"{'layer':32s} {'n':>2s} {'onnxrt':>8s} {'fp32':>8s} {'int8':>8s} {'fp32/ort':>9s} {'int8/fp32':>9s}")
    totals = np.zeros(3)
    for layer in LAYERS:
        times = time_layer(layer, args.batch, args.repeats, rng)
        totals += layer.count * times
        ms = times * 1e3
        ratios = f"{times[1] / times[0]:9.2f} {times[2] / times[1]:9.2f}"
        print(f"{layer.name:32s} {layer.count:2d} {ms[0]:8.2f} {ms[1]:8.2f} {ms[2]:8.2f} {ratios}")
    ms = totals * 1e3
    ratios = f"{totals[1] / totals[0]:9.2f} {totals[2] / totals[1]:9.2f}"
    print(f"{'all 49 convs (weighted)':32s} {'':2s} {ms[0]:8.1f} {ms[1]:8.1f} {ms[2]:8.1f} {ratios}")


if __name__ == "__main__":
    main()

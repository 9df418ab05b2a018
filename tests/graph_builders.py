"""Small ONNX graphs, built with onnx.helper, that together use every supported op.

They carry BatchNormalization, Identity, Dropout, Constant nodes and a constant subgraph so the
simplification passes are exercised too, and random but seeded weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, value: np.ndarray | list[int], name: str | None = None) -> str:
        """A constant; a list of ints is an int64 vector (axes, shapes), as exporters write them."""
        self.count += 1
        name = name or f"c{self.count}"
        array = np.asarray(value, dtype=np.int64) if isinstance(value, list) else np.asarray(value)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, *shape: int, scale: float = 0.3) -> str:
        return self.const(self.rng.normal(0.0, scale, shape).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes: object) -> str | list[str]:
        self.count += 1
        names = [f"{op_type.lower()}{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{op_type}_{self.count}", **attributes))
        return names[0] if outputs == 1 else names

    def model(self, input_shape: tuple, output: str, classes: int, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape[1:]])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", classes])],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def cnn_model(seed: int = 0) -> onnx.ModelProto:
    """Conv/BN/ReLU, depthwise SAME_UPPER, ReLU6, pointwise, LeakyReLU, pools, Gemm, Softmax."""
    b = _Builder(seed)
    x = b.op("Conv", ["input", b.weight(8, 3, 3, 3), b.weight(8)], pads=[1, 1, 1, 1])
    x = b.op(
        "BatchNormalization",
        [
            x,
            b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32)),
            b.weight(8),
            b.weight(8),
            b.const(b.rng.uniform(0.5, 2.0, 8).astype(np.float32)),
        ],
        epsilon=1e-3,
    )
    x = b.op("Relu", [x])
    x = b.op("Conv", [x, b.weight(8, 1, 3, 3), b.weight(8)], group=8, strides=[2, 2], auto_pad="SAME_UPPER")
    x = b.op("Clip", [x, b.const(np.float32(0.0)), b.const(np.float32(6.0))])
    x = b.op("Conv", [x, b.weight(16, 8, 1, 1)])
    x = b.op("LeakyRelu", [x], alpha=0.1)
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0)
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    x = b.op("Gemm", [x, b.weight(10, 16), b.weight(10)], transB=1)
    x = b.op("Softmax", [x], axis=-1)
    return b.model((1, 3, 16, 16), x, 10, "cnn")


def residual_model(seed: int = 1) -> onnx.ModelProto:
    """Add skip, Concat, Mul, Sigmoid, HardSigmoid, HardSwish, Pad, grouped/dilated Conv, ReduceMean, MatMul."""
    b = _Builder(seed)
    branch = b.op("Conv", ["input", b.weight(4, 4, 3, 3), b.weight(4)], pads=[2, 2, 2, 2], dilations=[2, 2])
    x = b.op("Add", ["input", branch])
    x = b.op("Relu", [x])
    x = b.op("Identity", [x])
    x = b.op("Concat", [x, "input"], axis=1)
    x = b.op("Dropout", [x])
    gate = b.op("Sigmoid", [b.op("Mul", [x, b.const(b.rng.uniform(0.5, 1.5, (1, 8, 1, 1)).astype(np.float32))])])
    x = b.op("Mul", [x, gate])
    x = b.op("HardSwish", [b.op("Add", [x, b.op("HardSigmoid", [x], alpha=0.3, beta=0.4)])])
    pad_amounts = b.op(
        "Concat",
        [b.const(np.array([0, 0, 1, 0], dtype=np.int64)), b.const(np.array([0, 0, 1, 2], dtype=np.int64))],
        axis=0,
    )
    x = b.op("Pad", [x, pad_amounts, b.const(np.float32(0.0))], mode="constant")
    x = b.op("Conv", [x, b.weight(4, 4, 3, 3)], group=2, strides=[2, 2], auto_pad="SAME_LOWER")
    x = b.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    x = b.op("MatMul", [x, b.weight(4, 5)])
    x = b.op("Add", [x, b.weight(5)])
    return b.model((1, 4, 8, 8), x, 5, "residual")


def layout_model(seed: int = 2) -> onnx.ModelProto:
    """Transpose, Reshape from a shape computed by a Constant subgraph, reflect Pad, valid-pad Conv."""
    b = _Builder(seed)
    x = b.op("Pad", ["input", b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64))], mode="reflect")
    x = b.op("Conv", [x, b.weight(6, 2, 3, 3), b.weight(6)], auto_pad="VALID")
    x = b.op("Relu", [x])
    x = b.op("Transpose", [x], perm=[0, 2, 3, 1])
    b.nodes.append(
        helper.make_node("Constant", [], ["target_tail"], value=numpy_helper.from_array(np.array([-1], dtype=np.int64)))
    )
    shape = b.op("Concat", [b.const(np.array([0], dtype=np.int64)), "target_tail"], axis=0)
    x = b.op("Reshape", [x, shape])
    x = b.op("Gemm", [x, b.weight(6 * 6 * 6, 7, scale=0.05)], alpha=0.5)
    x = b.op("Relu", [x])
    return b.model((1, 2, 6, 6), x, 7, "layout")


def wide_mlp_model(seed: int = 3) -> onnx.ModelProto:
    """A Fashion-MNIST MLP with 1000-wide products: multi-threaded OpenBLAS sums these by thread count."""
    b = _Builder(seed)
    x = b.op("Flatten", ["input"])
    x = b.op("Relu", [b.op("Gemm", [x, b.weight(28 * 28, 1000, scale=0.05), b.weight(1000, scale=0.1)])])
    x = b.op("Relu", [b.op("Gemm", [x, b.weight(1000, 1000, scale=0.05), b.weight(1000, scale=0.1)])])
    x = b.op("Gemm", [x, b.weight(1000, 10, scale=0.05)])
    return b.model((1, 1, 28, 28), x, 10, "wide_mlp")


def _batch_dim(b: _Builder, x: str) -> str:
    """The batch size as a 1-element int64 tensor, computed from the tensor the way torch exports
    ``x.size(0)`` on a dynamic batch: shape arithmetic the executor must run, not fold."""
    return b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [x]), b.const(np.int64(0))], axis=0), b.const([0])])


def shuffle_model(seed: int = 4) -> onnx.ModelProto:
    """ShuffleNet/HRNet patterns: BN after ReLU, Split, channel shuffle on a dynamic batch (Shape,
    Gather, Div, Unsqueeze, Concat, Reshape), Slice, nearest Resize, GlobalMaxPool, Squeeze."""
    b = _Builder(seed)
    x = b.op("Relu", [b.op("Conv", ["input", b.weight(8, 4, 3, 3), b.weight(8)], pads=[1, 1, 1, 1])])
    scale, mean = b.rng.uniform(0.5, 1.5, 8).astype(np.float32), b.rng.normal(0, 0.3, 8).astype(np.float32)
    x = b.op("BatchNormalization", [x, b.const(scale), b.weight(8), b.const(mean), b.const(scale**2)])
    left, right = b.op("Split", [x, b.const(np.array([4, 4], dtype=np.int64))], outputs=2, axis=1)
    right = b.op("Relu", [b.op("Conv", [right, b.weight(4, 4, 1, 1), b.weight(4)])])
    x = b.op("Concat", [left, right], axis=1)
    batch = _batch_dim(b, x)
    per_group = b.op(
        "Unsqueeze",
        [b.op("Div", [b.op("Gather", [b.op("Shape", [x]), b.const(np.int64(1))], axis=0), b.const(np.int64(2))]),
         b.const([0])],
    )  # fmt: skip
    grouped = b.op("Concat", [batch, b.const([2]), per_group, b.const([8, 8])], axis=0)
    x = b.op("Transpose", [b.op("Reshape", [x, grouped])], perm=[0, 2, 1, 3, 4])
    x = b.op("Reshape", [x, b.op("Concat", [batch, b.const([-1, 8, 8])], axis=0)])
    x = b.op("Slice", [x, b.const([1, 1]), b.const([7, 7]), b.const([2, 3])])
    scales = b.const(np.array([1, 1, 2, 2], dtype=np.float32))
    x = b.op(
        "Resize", [x, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"
    )
    x = b.op("Relu", [b.op("Conv", [x, b.weight(8, 8, 3, 3), b.weight(8)], strides=[2, 2], pads=[1, 1, 1, 1])])
    x = b.op("Squeeze", [b.op("GlobalMaxPool", [x]), b.const([2, 3])])
    x = b.op("Gemm", [x, b.weight(6, 8), b.weight(6)], transB=1)
    return b.model((1, 4, 8, 8), x, 6, "shuffle")


def hybrid_model(seed: int = 5) -> onnx.ModelProto:
    """ConvNeXt/LeViT patterns: channels-last LayerNormalization, GELU as exported (Div, Erf, Add,
    Mul), a norm spelled out (ReduceMean, Sub, Pow, Sqrt, Div), and attention over tokens reshaped
    on a dynamic batch (batched MatMul of two activations, Softmax)."""
    b = _Builder(seed)
    x = b.op("Conv", ["input", b.weight(8, 3, 3, 3), b.weight(8)], pads=[1, 1, 1, 1])
    x = b.op("Conv", [x, b.weight(8, 1, 7, 7), b.weight(8)], pads=[3, 3, 3, 3], group=8)
    x = b.op("Transpose", [x], perm=[0, 2, 3, 1])
    gamma = b.const(b.rng.uniform(0.5, 1.5, 8).astype(np.float32))
    x = b.op("LayerNormalization", [x, gamma, b.weight(8)], axis=-1, epsilon=1e-6)
    x = b.op("MatMul", [x, b.weight(8, 16)])
    erf = b.op("Erf", [b.op("Div", [x, b.const(np.float32(np.sqrt(2.0)))])])
    x = b.op("Mul", [b.op("Mul", [x, b.op("Add", [erf, b.const(np.float32(1.0))])]), b.const(np.float32(0.5))])
    x = b.op("Transpose", [b.op("MatMul", [x, b.weight(16, 8)])], perm=[0, 3, 1, 2])
    centred = b.op("Sub", [x, b.op("ReduceMean", [x], axes=[1], keepdims=1)])
    variance = b.op("ReduceMean", [b.op("Pow", [centred, b.const(np.float32(2.0))])], axes=[1], keepdims=1)
    x = b.op("Div", [centred, b.op("Sqrt", [b.op("Add", [variance, b.const(np.float32(1e-5))])])])
    tokens = b.op("Concat", [_batch_dim(b, x), b.const([8, -1])], axis=0)
    t = b.op("Transpose", [b.op("Reshape", [x, tokens])], perm=[0, 2, 1])
    q, k, v = (b.op("MatMul", [t, b.weight(8, 8)]) for _ in range(3))
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])
    attention = b.op("Softmax", [b.op("Mul", [scores, b.const(np.float32(8**-0.5))])], axis=-1)
    x = b.op("Add", [t, b.op("MatMul", [attention, v])])
    x = b.op("ReduceMean", [x], axes=[1], keepdims=0)
    x = b.op("Gemm", [x, b.weight(8, 5), b.weight(5)])
    return b.model((1, 3, 8, 8), x, 5, "hybrid")


MODELS = {
    "cnn": cnn_model,
    "residual": residual_model,
    "layout": layout_model,
    "shuffle": shuffle_model,
    "hybrid": hybrid_model,
}
INPUT_SHAPES = {
    "cnn": (3, 16, 16),
    "residual": (4, 8, 8),
    "layout": (2, 6, 6),
    "shuffle": (4, 8, 8),
    "hybrid": (3, 8, 8),
}

"""INT8 kernels are exact: bit-identical to plain integer references, and to onnxruntime's integer
kernels (QLinearConv, QLinearAdd on x86) where int8flow takes their arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import on_x86
from conv_cases import CONV_CASES, CONV_FIELDS, CONV_IDS
from onnx import TensorProto, helper, numpy_helper
from skimage import data

from int8flow.kernels.conv import Windows
from int8flow.kernels.int8_gemm import int8_conv2d, int8_matmul
from int8flow.kernels.pooling import max_pool2d, window_sums_int32
from int8flow.kernels.quantize import (
    BLOCK_ELEMENTS,
    SIGNED_ZERO_POINT,
    BiasOverflowError,
    accumulator_bound,
    add_int8,
    dequantize,
    layer_multiplier,
    quantize,
    quantize_bias,
    quantize_weights_per_channel,
    quantize_weights_per_tensor,
    requantize,
    rescale,
)

RNG = np.random.default_rng(11)


def int8_values(*shape: int) -> np.ndarray:
    return RNG.integers(-127, 128, shape, dtype=np.int8)


def photo_int8(channels: int, height: int, width: int, batch: int = 2) -> np.ndarray:
    """A real photo (scikit-image's chelsea), quantized with scale 1/127: int8 activations."""
    photo = (data.chelsea().astype(np.float32) - 127.0) / 128.0
    crops = np.stack([photo[30 * i : 30 * i + height, 50 * i : 50 * i + width] for i in range(batch)])
    planes = np.tile(crops.transpose(0, 3, 1, 2), (1, -(-channels // 3), 1, 1))[:, :channels]
    return quantize(np.ascontiguousarray(planes), np.float32(1 / 127))


def reference_conv(x: np.ndarray, w: np.ndarray, strides, pads, dilations, groups) -> np.ndarray:
    """Integer convolution in int64, one tap at a time over a zero-padded input."""
    (sh, sw), (dh, dw), (top, left, bottom, right) = strides, dilations, pads
    n, _, h, width = x.shape
    m, group_channels, kh, kw = w.shape
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, m, ho, wo), dtype=np.int64)
    for channel in range(m):
        group = channel // (m // groups)
        inputs = padded[:, group * group_channels : (group + 1) * group_channels]
        for i in range(kh):
            for j in range(kw):
                patch = inputs[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
                out[:, channel] += np.einsum("nchw,c->nhw", patch, w[channel, :, i, j].astype(np.int64))
    return out


def test_int8_matmul_equals_the_integer_product() -> None:
    a, b = int8_values(3, 7, 300), int8_values(300, 9)
    got = int8_matmul(a, b)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def test_int8_matmul_is_exact_at_the_largest_sums_beyond_one_chunk() -> None:
    # K = 3000 > 1024: every product is +-127*127 and all of one sign, the largest partial sums.
    a = np.full((4, 3000), 127, dtype=np.int8)
    b = np.stack([np.full(3000, 127), np.full(3000, -127), np.tile([127, -127], 1500)], axis=1).astype(np.int8)
    np.testing.assert_array_equal(int8_matmul(a, b), np.tile([127 * 127 * 3000, -127 * 127 * 3000, 0], (4, 1)))


def test_int8_matmul_is_exact_with_minus_128_at_the_chunk_bound() -> None:
    # 1024 products of (-128)^2 = 2**24 exactly: the float32 bound, still exact.
    a, b = np.full((2, 1024), -128, dtype=np.int8), np.full((1024, 3), -128, dtype=np.int8)
    np.testing.assert_array_equal(int8_matmul(a, b), np.full((2, 3), 2**24))


def test_int8_matmul_equals_the_integer_product_for_random_long_rows() -> None:
    a, b = RNG.integers(-128, 128, (5, 2500), dtype=np.int8), RNG.integers(-128, 128, (2500, 6), dtype=np.int8)
    np.testing.assert_array_equal(int8_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))


def test_int8_matmul_rejects_float_operands() -> None:
    with pytest.raises(TypeError, match="int8"):
        int8_matmul(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.int8))


@pytest.mark.parametrize(CONV_FIELDS, CONV_CASES, ids=CONV_IDS)
def test_int8_conv2d_equals_the_integer_convolution(
    case, cin, cout, kernel, strides, pads, dilations, groups, size
) -> None:
    x = photo_int8(cin, *size)
    weight = int8_values(cout, cin // groups, *kernel)
    got = int8_conv2d(x, weight, strides, pads, dilations, groups)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, reference_conv(x, weight, strides, pads, dilations, groups))


def test_int8_conv2d_is_exact_at_full_scale() -> None:
    # Every input and weight at +-127: 3x3x130 = 1170 products of 127^2 per output, all one sign.
    x = np.full((1, 130, 4, 4), 127, dtype=np.int8)
    weight = np.stack([np.full((130, 3, 3), 127), np.full((130, 3, 3), -127)]).astype(np.int8)
    got = int8_conv2d(x, weight, pads=(1, 1, 1, 1))
    np.testing.assert_array_equal(got, reference_conv(x, weight, (1, 1), (1, 1, 1, 1), (1, 1), 1))
    assert got[0, 0, 1, 1] == 127 * 127 * 1170


def quantize_linear_onnxruntime(x: np.ndarray, scale: float) -> np.ndarray:
    node = helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["y"])
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        [numpy_helper.from_array(np.float32(scale), "scale"), numpy_helper.from_array(np.int8(0), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_quantize_equals_onnx_quantize_linear_inside_the_range() -> None:
    x = (data.camera().astype(np.float32) - 127.5) / 40.0  # a real photo, values in [-3.19, 3.19]
    scale = 3.19 / 127
    np.testing.assert_array_equal(quantize(x, scale), quantize_linear_onnxruntime(x, scale))


def test_quantize_rounds_half_to_even() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 126.5], dtype=np.float32)
    np.testing.assert_array_equal(quantize(x, 1.0), np.array([0, 2, 2, 0, -2, -2, 0, 126], dtype=np.int8))


def test_quantize_saturates_like_quantize_linear() -> None:
    """-128..127, as ONNX QuantizeLinear: the exported QDQ model clips where the executor does."""
    values = np.array([300.0, -300.0, -127.6, -128.4], np.float32)
    np.testing.assert_array_equal(quantize(values, 1.0), [127, -128, -128, -128])


def test_quantize_broadcasts_a_per_channel_scale() -> None:
    x = np.array([[[1.0, -2.0]], [[1.0, -2.0]]], dtype=np.float32)
    np.testing.assert_array_equal(
        quantize(x, np.array([1.0, 0.5], np.float32).reshape(2, 1, 1)), [[[1, -2]], [[2, -4]]]
    )


def test_quantize_rejects_a_zero_scale() -> None:
    with pytest.raises(ValueError, match="scale must be > 0"):
        quantize(np.ones(3, np.float32), 0.0)


def test_dequantize_multiplies_in_float32() -> None:
    got = dequantize(np.array([-127, 0, 3], np.int8), 0.1)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([-127, 0, 3], np.float32) * np.float32(0.1))


def test_requantize_rounds_half_to_even() -> None:
    acc = np.array([1, 3, 5, 7, -1, -3, -5], dtype=np.int32)
    np.testing.assert_array_equal(requantize(acc, 0.5), np.array([0, 2, 2, 4, 0, -2, -2], dtype=np.int8))


def test_requantize_saturates_to_the_int8_range() -> None:
    np.testing.assert_array_equal(requantize(np.array([2**31 - 1, -(2**31)], np.int32), 1.0), [127, -128])


def test_requantize_with_fused_relu_and_relu6_bounds() -> None:
    out_scale = 6.0 / 100  # ReLU6: high = min(127, rint(6 / out_scale)) = 100
    acc = np.array([-50, 40, 5000], dtype=np.int32)
    np.testing.assert_array_equal(requantize(acc, 0.1, low=0), [0, 4, 127])
    np.testing.assert_array_equal(requantize(acc, 0.1, low=0, high=int(min(127, np.rint(6 / out_scale)))), [0, 4, 100])


def test_requantize_equals_the_float32_formula_per_channel() -> None:
    # Large tensor (several blocks) of large accumulators (float32 rounds them), a per-channel multiplier.
    acc = RNG.integers(-(2**30), 2**30, (3, 4, 160, 160), dtype=np.int32)
    assert acc.size > BLOCK_ELEMENTS
    multiplier = RNG.uniform(1e-9, 2e-7, (1, 4, 1, 1)).astype(np.float32)
    expected = np.clip(np.rint(acc.astype(np.float32) * multiplier), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(requantize(acc, multiplier), expected)


def test_requantize_rounds_the_sum_to_float32_first() -> None:
    # 2**24 + 1 becomes 2**24 in float32; times 2**-25 that is 0.5, a tie to 0 (exactly: 0.5 + 2**-25 -> 1).
    np.testing.assert_array_equal(requantize(np.array([2**24 + 1], np.int32), np.float32(2.0**-25)), [0])


def test_layer_multiplier_rounds_each_step_in_float32() -> None:
    weight_scales = np.array([3e-3, 7e-4], np.float32)
    expected = (np.float32(0.02) * weight_scales) / np.float32(0.05)
    got = layer_multiplier(0.02, weight_scales, 0.05)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def _qdq_session(nodes: list, inputs: list, initializers: list, tmp_path: Path) -> tuple[ort.InferenceSession, list]:
    """An onnxruntime session of a QDQ graph with default optimizations, and the op types it runs."""
    graph = helper.make_graph(nodes, "qdq", inputs, [helper.make_tensor_value_info("y", TensorProto.UINT8, None)])
    graph.initializer.extend(initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def _storage(q: np.ndarray) -> np.ndarray:
    """A tensor as onnxruntime's x86 kernels hold it: signed values + 128 in uint8."""
    return q if q.dtype == np.uint8 else (q.astype(np.int16) + SIGNED_ZERO_POINT).astype(np.uint8)


def _zero(unsigned: bool, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.uint8(0 if unsigned else SIGNED_ZERO_POINT), name)


@on_x86
def test_requantized_conv_equals_onnxruntimes_qlinearconv(tmp_path: Path) -> None:
    x = photo_int8(8, 20, 20)
    weight = int8_values(6, 8, 3, 3)
    bias = RNG.integers(-3000, 3000, 6, dtype=np.int32)
    x_scale, y_scale, weight_scales = 0.013, 0.11, RNG.uniform(1e-3, 1e-2, 6).astype(np.float32)
    constants = [
        numpy_helper.from_array(np.float32(x_scale), "x_scale"),
        _zero(False, "x_zero"),
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(weight_scales, "w_scale"),
        numpy_helper.from_array(np.zeros(6, np.int8), "w_zero"),
        numpy_helper.from_array(bias, "b"),
        numpy_helper.from_array((np.float32(x_scale) * weight_scales).astype(np.float32), "b_scale"),
        numpy_helper.from_array(np.zeros(6, np.int32), "b_zero"),
        numpy_helper.from_array(np.float32(y_scale), "y_scale"),
        _zero(False, "y_zero"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zero"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wf"], axis=0),
        helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero"], ["bf"], axis=0),
        helper.make_node("Conv", ["xf", "wf", "bf"], ["yf"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zero"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)]
    session, ops = _qdq_session(nodes, inputs, constants, tmp_path)
    assert "QLinearConv" in ops, f"onnxruntime did not fuse the QDQ Conv: {ops}"
    accumulators = int8_conv2d(x, weight, pads=(1, 1, 1, 1)) + bias.reshape(1, -1, 1, 1)
    ours = requantize(accumulators, layer_multiplier(x_scale, weight_scales, y_scale).reshape(1, -1, 1, 1))
    np.testing.assert_array_equal(_storage(ours), session.run(None, {"x": _storage(x)})[0])


ADD_SIGNEDNESS = [(False, False, False), (True, False, False), (True, True, True)]


@on_x86
@pytest.mark.parametrize("a_unsigned, b_unsigned, out_unsigned", ADD_SIGNEDNESS)
def test_add_int8_equals_onnxruntimes_qlinearadd_on_every_pair(
    a_unsigned: bool, b_unsigned: bool, out_unsigned: bool, tmp_path: Path
) -> None:
    def every(unsigned: bool) -> np.ndarray:
        return np.arange(0, 256).astype(np.uint8) if unsigned else np.arange(-128, 128).astype(np.int8)

    a, b = np.meshgrid(every(a_unsigned), every(b_unsigned), indexing="ij")
    a_scale, b_scale, out_scale = 0.037, 0.052, 0.061
    constants = [
        numpy_helper.from_array(np.float32(a_scale), "a_scale"),
        _zero(a_unsigned, "a_zero"),
        numpy_helper.from_array(np.float32(b_scale), "b_scale"),
        _zero(b_unsigned, "b_zero"),
        numpy_helper.from_array(np.float32(out_scale), "y_scale"),
        _zero(out_unsigned, "y_zero"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "a_scale", "a_zero"], ["af"]),
        helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero"], ["bf"]),
        helper.make_node("Add", ["af", "bf"], ["yf"]),
        helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zero"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.UINT8, a.shape) for name in ("a", "b")]
    session, ops = _qdq_session(nodes, inputs, constants, tmp_path)
    assert "QLinearAdd" in ops, f"onnxruntime did not fuse the QDQ Add: {ops}"
    low, high = (0, 255) if out_unsigned else (-128, 127)
    ours = add_int8(a, a_scale, b, b_scale, out_scale, low, high)
    np.testing.assert_array_equal(_storage(ours), session.run(None, {"a": _storage(a), "b": _storage(b)})[0])


def test_add_int8_rounds_where_a_float64_sum_would_not() -> None:
    """Ties of the float32 fused multiply-adds: the uint8 offsets move a few results by one step."""
    values = np.arange(-128, 128, dtype=np.int8)
    a, b = np.meshgrid(values, values, indexing="ij")
    in_float64 = np.clip(np.rint(a * (0.037 / 0.061) + b.astype(np.float64) * (0.052 / 0.061)), -128, 127)
    difference = add_int8(a, 0.037, b, 0.052, 0.061).astype(np.int16) - in_float64
    assert set(np.unique(difference)) <= {-1, 0, 1}
    assert np.count_nonzero(difference) < 0.01 * difference.size


def test_accumulator_bound_is_the_largest_product_sum() -> None:
    assert accumulator_bound(27, unsigned=False) == 27 * 128 * 127
    assert accumulator_bound(9, unsigned=True) == 9 * 255 * 127


def test_requantize_rejects_bounds_outside_int8_and_uint8() -> None:
    with pytest.raises(ValueError, match="low=-1, high=200"):
        requantize(np.zeros(2, np.int32), 1.0, -1, 200)
    with pytest.raises(ValueError, match="low=0, high=256"):
        requantize(np.zeros(2, np.int32), 1.0, 0, 256)


def test_unsigned_ranges_give_uint8_with_twice_the_levels() -> None:
    values = np.array([0.0, 0.3, 1.1, 1.5, 2.0], np.float32)
    q = quantize(values, np.float32(2.0 / 255), unsigned=True)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, [0, 38, 140, 191, 255])
    acc = np.array([-5, 100, 300, 1000], np.int32)
    np.testing.assert_array_equal(requantize(acc, 0.5, 0, 255), np.array([0, 50, 150, 255], np.uint8))
    assert requantize(acc, 0.5, 0, 255).dtype == np.uint8


def test_uint8_activations_products_are_exact_past_the_uint8_chunk() -> None:
    a = np.full((2, 3000), 255, np.uint8)
    b = np.full((3000, 3), -128, np.int8)
    assert (int8_matmul(a, b) == 3000 * 255 * -128).all()
    x = np.random.default_rng(0).integers(0, 256, (2, 600, 3, 3), dtype=np.uint8)
    w = np.random.default_rng(1).integers(-127, 128, (4, 600, 1, 1), dtype=np.int8)
    expected = np.einsum("nchw,mc->nmhw", x.astype(np.int64), w[:, :, 0, 0].astype(np.int64))
    np.testing.assert_array_equal(int8_conv2d(x, w), expected)


def test_per_channel_weights_use_max_abs_over_127_and_scale_one_for_a_zero_channel() -> None:
    w = np.zeros((3, 2, 2, 2), np.float32)
    w[0] = [[[0.5, -1.0], [0.25, 0.0]], [[0.1, 0.2], [0.3, 0.4]]]
    w[2] = -2.54
    q, scales = quantize_weights_per_channel(w)
    np.testing.assert_array_equal(scales, np.array([1.0 / 127, 1.0, 2.54 / 127], dtype=np.float32))
    assert q.dtype == np.int8 and q[0].min() == -127 and q[0, 0, 0, 0] == 64  # 63.5 rounds to even
    np.testing.assert_array_equal(q[1], 0)
    np.testing.assert_array_equal(q[2], -127)


def test_per_channel_weights_along_axis_1_for_a_linear_layer() -> None:
    w = np.array([[1.0, 0.0, -4.0], [-2.0, 0.0, 2.0]], np.float32)  # (K, N): channels are columns
    q, scales = quantize_weights_per_channel(w, axis=1)
    np.testing.assert_array_equal(scales, np.array([2 / 127, 1.0, 4 / 127], np.float32))
    np.testing.assert_array_equal(q, [[64, 0, -127], [-127, 0, 64]])


def test_per_tensor_weights_share_one_scale() -> None:
    q, scale = quantize_weights_per_tensor(np.array([[0.5, -1.27], [1.0, 0.0]], np.float32))
    assert scale == np.float32(1.27 / 127)
    np.testing.assert_array_equal(q, [[50, -127], [100, 0]])


def test_quantize_bias_uses_input_scale_times_weight_scale() -> None:
    got = quantize_bias(np.array([0.3, -0.25, 1.0], np.float32), 0.1, np.array([0.01, 0.05, 0.5], np.float32))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [300, -50, 20])


def test_quantize_bias_names_the_channel_that_overflows_int32() -> None:
    with pytest.raises(BiasOverflowError, match="channel 1"):
        quantize_bias(np.array([1.0, 5000.0]), 1e-4, np.array([1e-3, 1e-3]))


def test_add_int8_clips_to_the_fused_activation_bounds() -> None:
    values = np.arange(-128, 128, dtype=np.int8)
    a, b = np.meshgrid(values, values, indexing="ij")
    full = add_int8(a, 0.037, b, 0.052, 0.061)
    np.testing.assert_array_equal(add_int8(a, 0.037, b, 0.052, 0.061, low=0, high=90), np.clip(full, 0, 90))


def test_add_int8_broadcasts_either_operand() -> None:
    a, b = photo_int8(4, 200, 200, batch=2), int8_values(1, 4, 1, 1)  # large enough for several blocks
    assert a.size > BLOCK_ELEMENTS
    expected = add_int8(a, 0.02, np.ascontiguousarray(np.broadcast_to(b, a.shape)), 0.05, 0.03)
    np.testing.assert_array_equal(add_int8(a, 0.02, b, 0.05, 0.03), expected)
    swapped = add_int8(np.broadcast_to(b, a.shape), 0.05, a, 0.02, 0.03)
    np.testing.assert_array_equal(add_int8(b, 0.05, a, 0.02, 0.03), swapped)


def test_add_int8_rounds_a_half_to_even() -> None:
    # 1 * 0.5 + 2 * 0.25 = 1.0; 1 * 0.5 + 0 = 0.5 -> 0; 3 * 0.5 = 1.5 -> 2
    got = add_int8(np.array([1, 1, 3], np.int8), 0.5, np.array([2, 0, 0], np.int8), 0.25, 1.0)
    np.testing.assert_array_equal(got, [1, 0, 2])


def test_rescale_equals_the_float64_formula() -> None:
    q = np.arange(-128, 128, dtype=np.int8)
    expected = np.clip(np.rint(q * (0.05 / 0.03)), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(rescale(q, 0.05, 0.03), expected)
    np.testing.assert_array_equal(rescale(np.array([1, 3, 5], np.int8), 1.0, 2.0), [0, 2, 2])


def test_int8_max_pool_is_exact_and_never_returns_the_pad() -> None:
    x = photo_int8(3, 13, 12)
    got = max_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1))
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-128)
    expected = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, expected)
    assert max_pool2d(np.full((1, 1, 4, 4), -127, np.int8), (3, 3), (1, 1), (1, 1, 1, 1)).min() == -127


@pytest.mark.parametrize("count_include_pad", [False, True], ids=["exclude_pad", "include_pad"])
def test_window_sums_are_exact_with_their_element_counts(count_include_pad: bool) -> None:
    x = photo_int8(3, 9, 10)
    sums, counts = window_sums_int32(x, (3, 3), (2, 2), (1, 1, 1, 1), count_include_pad, ceil_mode=True)
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 2), (1, 2)))
    expected = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))[:, :, ::2, ::2].sum(axis=(4, 5))
    assert sums.dtype == np.int32 and counts.dtype == np.int32
    np.testing.assert_array_equal(sums, expected)
    # 9x10 input, pads 1, 3x3 windows, stride 2, ceil mode: windows start at rows -1, 1, 3, 5, 7 and
    # at columns -1, 1, ..., 9; the last column window (9..11) reaches past the right pad.
    rows = [3, 3, 3, 3, 3] if count_include_pad else [2, 3, 3, 3, 2]
    cols = [3, 3, 3, 3, 3, 2] if count_include_pad else [2, 3, 3, 3, 3, 1]
    np.testing.assert_array_equal(counts, np.outer(rows, cols))
    assert Windows.of((9, 10), (3, 3), (2, 2), (1, 1, 1, 1), ceil_mode=True).out_hw == (5, 6)

"""FP32 convolution and pooling give what onnxruntime gives for the same one-node ONNX model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conv_cases import CONV_CASES, CONV_FIELDS, CONV_IDS
from onnx import TensorProto, helper, numpy_helper
from skimage import data

from int8flow.kernels.conv import conv2d, pad_amounts
from int8flow.kernels.pooling import average_pool2d, global_average_pool, max_pool2d

OPSET = 17
RNG = np.random.default_rng(7)


def onnxruntime_op(
    op_type: str, x: np.ndarray, initializers: dict[str, np.ndarray] | None = None, **attributes: object
) -> np.ndarray:
    """Run one ONNX node on ``x`` (its first input; the others are initializers) with onnxruntime."""
    initializers = initializers or {}
    node = helper.make_node(op_type, ["x", *initializers], ["y"], **attributes)
    graph = helper.make_graph(
        [node],
        op_type,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def photo_batch(channels: int, size: int, batch: int = 2) -> np.ndarray:
    """Crops of a real photo (scikit-image's astronaut), scaled as the EfficientNet preprocessing
    does, tiled to ``channels`` channels."""
    photo = (data.astronaut().astype(np.float32) - 127.0) / 128.0
    crops = [photo[40 * i : 40 * i + size * 2 : 2, 60 * i : 60 * i + size * 2 : 2] for i in range(batch)]
    planes = np.stack(crops).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(np.tile(planes, (1, -(-channels // 3), 1, 1))[:, :channels])


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize(CONV_FIELDS, CONV_CASES, ids=CONV_IDS)
def test_conv2d_matches_onnxruntime(case, cin, cout, kernel, strides, pads, dilations, groups, size, with_bias) -> None:
    x = photo_batch(cin, max(size))[:, :, : size[0], : size[1]].copy()
    weight = RNG.normal(0.0, 0.3, (cout, cin // groups, *kernel)).astype(np.float32)
    bias = RNG.normal(0.0, 0.5, cout).astype(np.float32) if with_bias else None
    initializers = {"w": weight, **({"b": bias} if with_bias else {})}
    expected = onnxruntime_op(
        "Conv",
        x,
        initializers,
        kernel_shape=list(kernel),
        strides=list(strides),
        pads=list(pads),
        dilations=list(dilations),
        group=groups,
    )
    got = conv2d(x, weight, bias, strides, pads, dilations, groups)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"])
def test_conv2d_with_auto_pad_matches_onnxruntime(auto_pad: str, stride: int) -> None:
    x = photo_batch(3, 16)[:, :, :10, :13].copy()
    weight = RNG.normal(0.0, 0.3, (5, 3, 4, 3)).astype(np.float32)
    attributes = {"auto_pad": auto_pad} if auto_pad != "NOTSET" else {"pads": [1, 0, 2, 1]}
    expected = onnxruntime_op("Conv", x, {"w": weight}, kernel_shape=[4, 3], strides=[stride, stride], **attributes)
    pads = pad_amounts(auto_pad, (10, 13), (4, 3), (stride, stride), (1, 1), pads=(1, 0, 2, 1))
    np.testing.assert_allclose(conv2d(x, weight, None, (stride, stride), pads), expected, rtol=1e-4, atol=1e-5)


def test_pad_amounts_give_the_odd_pad_to_the_end_for_same_upper_and_the_start_for_same_lower() -> None:
    # 10 rows, kernel 4, stride 1: 3 rows of padding; 13 columns, kernel 3, stride 2: 2 columns.
    assert pad_amounts("SAME_UPPER", (10, 13), (4, 3), (1, 2), (1, 1)) == (1, 1, 2, 1)
    assert pad_amounts("SAME_LOWER", (10, 13), (4, 3), (1, 2), (1, 1)) == (2, 1, 1, 1)
    assert pad_amounts("VALID", (10, 13), (4, 3), (1, 2), (1, 1)) == (0, 0, 0, 0)


def test_pad_amounts_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="SAME_UPPER"):
        pad_amounts("SAME", (8, 8), (3, 3), (1, 1), (1, 1))


def test_conv2d_rejects_groups_that_do_not_divide_the_channels() -> None:
    with pytest.raises(ValueError, match="groups=3"):
        conv2d(np.zeros((1, 4, 5, 5), np.float32), np.zeros((6, 2, 3, 3), np.float32), groups=3)


def test_conv2d_rejects_a_window_larger_than_the_padded_input() -> None:
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv2d(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 3, 3), np.float32))


def test_conv2d_asks_for_float32() -> None:
    with pytest.raises(TypeError, match="float32"):
        conv2d(np.zeros((1, 1, 4, 4), np.float64), np.zeros((1, 1, 3, 3), np.float32))


# (id, kernel, strides, pads, dilations)
POOL_CASES = [
    ("3x3_stride2_pad1", (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ("2x2_stride2", (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    ("3x2_asymmetric", (3, 2), (1, 2), (0, 1, 1, 0), (1, 1)),
    ("3x3_stride3", (3, 3), (3, 3), (0, 0, 0, 0), (1, 1)),
]


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize(("case", "kernel", "strides", "pads", "dilations"), POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_max_pool_matches_onnxruntime(case, kernel, strides, pads, dilations, ceil_mode) -> None:
    x = photo_batch(3, 16)[:, :, :9, :11].copy()
    expected = onnxruntime_op(
        "MaxPool", x, kernel_shape=list(kernel), strides=list(strides), pads=list(pads), ceil_mode=int(ceil_mode)
    )
    np.testing.assert_array_equal(max_pool2d(x, kernel, strides, pads, dilations, ceil_mode), expected)


def test_dilated_max_pool_matches_onnxruntime() -> None:
    x = photo_batch(3, 16)[:, :, :12, :12].copy()
    expected = onnxruntime_op("MaxPool", x, kernel_shape=[3, 3], strides=[1, 1], pads=[2, 2, 2, 2], dilations=[2, 2])
    np.testing.assert_array_equal(max_pool2d(x, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)), expected)


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("count_include_pad", [False, True], ids=["exclude_pad", "include_pad"])
@pytest.mark.parametrize(("case", "kernel", "strides", "pads", "dilations"), POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_average_pool_matches_onnxruntime(case, kernel, strides, pads, dilations, count_include_pad, ceil_mode) -> None:
    x = photo_batch(3, 16)[:, :, :9, :11].copy()
    expected = onnxruntime_op(
        "AveragePool",
        x,
        kernel_shape=list(kernel),
        strides=list(strides),
        pads=list(pads),
        count_include_pad=int(count_include_pad),
        ceil_mode=int(ceil_mode),
    )
    got = average_pool2d(x, kernel, strides, pads, count_include_pad, ceil_mode)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_global_average_pool_matches_onnxruntime() -> None:
    x = photo_batch(5, 16)[:, :, :7, :9].copy()
    got = global_average_pool(x)
    assert got.shape == (2, 5, 1, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, onnxruntime_op("GlobalAveragePool", x), rtol=1e-5, atol=1e-6)

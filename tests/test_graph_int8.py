"""Quantization pass, INT8 executor and QDQ export on the generated graphs."""

from __future__ import annotations

import dataclasses

import graph_builders
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graph_builders import INPUT_SHAPES, MODELS

from int8flow.kernels.quantize import accumulator_bound, quantize_bias
from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.tasks.calibration.bias_correction import measure_bias_corrections
from int8flow.tasks.calibration.collector import NonFiniteActivationError, UntypedTensorError, collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.export_qdq import export_qdq
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.load import import_model
from int8flow.tasks.graph.quantize_pass import (
    FIRST_CONV,
    LAST_LAYER,
    QuantizationError,
    QuantizationOptions,
    calibration_tensors,
    quantize_graph,
    quantized_tensors,
)
from int8flow.tasks.graph.simplify import simplify


def batches(name: str, count: int = 6, size: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.normal(0, 1, (size, *INPUT_SHAPES[name])).astype(np.float32)} for _ in range(count)]


def calibrated(name: str, method: str = "entropy") -> tuple[Graph, object]:
    graph = simplify(import_model(MODELS[name](), name))
    histograms = collect_histograms(GraphExecutor(graph), batches(name), calibration_tensors(graph), 2048)
    return graph, build_calibration_table(histograms, ThresholdSettings(method=method), {})


def run(graph: Graph, batch: np.ndarray) -> np.ndarray:
    ops = INT8_OPS if any(node.op_type.startswith("Int8") for node in graph.nodes) else None
    executor = GraphExecutor(graph, ops=ops) if ops else GraphExecutor(graph)
    return next(iter(executor.run({"input": batch}).values()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_int8_output_tracks_fp32(name: str) -> None:
    graph, table = calibrated(name, "naive")
    quantized = quantize_graph(graph, table)
    batch = batches(name)[0]["input"]  # a calibration batch: naive thresholds clip nothing there
    fp32, int8 = run(graph, batch), run(quantized, batch)
    error = np.abs(int8 - fp32).max() / np.abs(fp32).max()
    assert int8.dtype == np.float32 and int8.shape == fp32.shape
    assert error < 0.05


def test_cnn_quantizes_conv_chain_with_fused_activations() -> None:
    graph, table = calibrated("cnn")
    counts = quantize_graph(graph, table).op_counts()
    assert counts["Int8Conv"] == 3 and counts["Int8MatMul"] == 1
    assert counts["Relu"] == 0 and counts["Clip"] == 0  # fused into the convs
    assert counts["LeakyRelu"] == 1 and counts["Softmax"] == 1  # FP32 islands
    assert counts["Int8MaxPool"] == 1 and counts["Int8AveragePool"] == 2
    assert counts["QuantizeTensor"] == 2 and counts["DequantizeTensor"] == 2


def test_shape_arithmetic_gets_no_scale_and_follows_the_batch() -> None:
    graph, table = calibrated("shuffle")
    integral = {name for name, dtype in graph.dtypes.items() if dtype == np.int64}
    shape_concats = [
        node.outputs[0] for node in graph.nodes if node.op_type == "Concat" and node.outputs[0] in integral
    ]
    assert len(shape_concats) == 2 and not integral & set(calibration_tensors(graph))
    quantized = quantize_graph(graph, table)
    assert {node.op_type for node in quantized.nodes if node.outputs[0] in shape_concats} == {"Concat"}
    assert quantized.op_counts()["Int8Concat"] == 1  # the channel concat of the two branches
    for size in (1, 3, 5):
        batch = batches("shuffle", 1, size)[0]["input"]
        assert run(quantized, batch).shape == run(graph, batch).shape == (size, 6)


def test_integers_watched_for_want_of_types_are_a_one_line_error() -> None:
    graph = simplify(import_model(MODELS["shuffle"](), "shuffle"))
    graph.dtypes.clear()  # a model shape inference could not type
    with pytest.raises(UntypedTensorError, match=r"tensor '\w+' holds int64 values, not floats.*infer_shapes"):
        collect_histograms(GraphExecutor(graph), batches("shuffle"), calibration_tensors(graph), 2048)


def test_matmul_bias_add_becomes_the_int32_bias() -> None:
    graph, table = calibrated("residual")
    quantized = quantize_graph(graph, table)
    last = quantized.nodes[-2]
    assert last.op_type == "Int8MatMul" and last.inputs[3].endswith("bias_int32")
    assert quantized.op_counts()["Add"] == 0 and quantized.nodes[-1].outputs == [graph.outputs[0].name]


def test_add_of_a_constant_stays_fp32() -> None:
    """GELU's +1 and a norm's epsilon: below one step of the sum's scale, they would round away."""
    graph, table = calibrated("hybrid")
    quantized = quantize_graph(graph, table)
    constant_adds = [n.name for n in graph.nodes if n.op_type == "Add" and set(n.inputs) & set(graph.initializers)]
    assert len(constant_adds) == 2
    assert {node.op_type for node in quantized.nodes if node.name in constant_adds} == {"Add"}
    assert quantized.op_counts()["Int8Add"] == 1  # the attention residual


def test_exclusions_keep_nodes_in_fp32() -> None:
    graph, table = calibrated("cnn")
    first_conv = next(node.name for node in graph.nodes if node.op_type == "Conv")
    for exclude in ((first_conv,), (FIRST_CONV,)):
        quantized = quantize_graph(graph, table, QuantizationOptions(exclude=exclude))
        assert quantized.op_counts()["Int8Conv"] == 2
        assert any(node.name == first_conv and node.op_type == "Conv" for node in quantized.nodes)
    by_type = quantize_graph(graph, table, QuantizationOptions(exclude=("Conv", LAST_LAYER))).op_counts()
    assert by_type["Int8Conv"] == 0 and by_type["Int8MatMul"] == 0 and by_type["Conv"] == 3


def test_unknown_exclusion_is_refused_with_the_ops_present() -> None:
    graph, table = calibrated("cnn")
    with pytest.raises(QuantizationError, match="'conv_7' matches no node name or op type.*Conv"):
        quantize_graph(graph, table, QuantizationOptions(exclude=("conv_7",)))


def test_table_of_another_model_is_refused() -> None:
    graph, _ = calibrated("cnn")
    _, other_table = calibrated("layout")
    with pytest.raises(QuantizationError, match="no threshold in the calibration table"):
        quantize_graph(graph, other_table)


def test_per_tensor_weights_use_one_scale_per_layer() -> None:
    graph, table = calibrated("cnn")
    quantized = quantize_graph(graph, table, QuantizationOptions(per_channel=False))
    for node in quantized.nodes:
        if node.op_type == "Int8Conv":
            scales = quantized.initializers[node.inputs[2]]
            assert np.unique(scales).size == 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_qdq_export_runs_in_onnxruntime_and_agrees(name: str) -> None:
    graph, table = calibrated(name)
    quantized = quantize_graph(graph, table)
    model = export_qdq(quantized)
    op_types = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types
    batch = batches(name, 1, 32, seed=4)[0]["input"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": batch})[0]
    ours = run(quantized, batch)
    if name == "cnn":  # the output is a softmax, computed in FP32 from int8 logits
        assert (theirs.argmax(axis=1) == ours.argmax(axis=1)).mean() >= 0.95
        np.testing.assert_allclose(ours, theirs, atol=0.02)
    else:  # two int8 engines may round a value differently: at most two output steps apart
        output = quantized.outputs[0].name
        step = next(n.attributes["scale"] for n in quantized.nodes if n.outputs == [output])
        assert np.abs(ours - theirs).max() <= 2 * step + 1e-7


def test_qdq_weights_are_int8_per_channel() -> None:
    graph, table = calibrated("cnn")
    model = export_qdq(quantize_graph(graph, table))
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_int8")]
    assert len(weight_dq) == 4
    for node in weight_dq:
        assert initializers[node.input[0]].dtype == np.int8
        assert initializers[node.input[1]].ndim == 1


def test_nan_activations_name_the_tensor() -> None:
    graph = simplify(import_model(MODELS["layout"](), "layout"))
    bad = {"input": np.full((2, *INPUT_SHAPES["layout"]), np.nan, dtype=np.float32)}
    with pytest.raises(NonFiniteActivationError, match="tensor 'pad2_0': 256 NaN"):
        collect_histograms(GraphExecutor(graph), [bad], calibration_tensors(graph))


def test_unsigned_option_stores_non_negative_tensors_as_uint8() -> None:
    graph, table = calibrated("cnn")
    quantized = quantize_graph(graph, table, QuantizationOptions(unsigned_activations=True))
    encodings = quantized_tensors(quantized)
    signed = {record.name: record.signed for record in table.tensors}
    relu_output = next(node.outputs[0] for node in graph.nodes if node.op_type == "Relu")
    assert encodings[f"{relu_output}_int8"].unsigned and not signed[relu_output]
    assert encodings[f"{relu_output}_int8"].scale == table.by_name()[relu_output].threshold / 255
    for name, encoding in encodings.items():
        assert encoding.unsigned == (not signed[name.removesuffix("_int8")])
    captured: dict[str, np.ndarray] = {}
    executor = GraphExecutor(quantized, ops=INT8_OPS)
    executor.run(
        {"input": batches("cnn")[0]["input"]}, lambda name, value: captured.__setitem__(name, value), set(encodings)
    )
    assert {captured[name].dtype.name for name, e in encodings.items() if e.unsigned} == {"uint8"}
    assert {captured[name].dtype.name for name, e in encodings.items() if not e.unsigned} == {"int8"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unsigned_option_tracks_fp32_and_exports(name: str) -> None:
    graph, table = calibrated(name, "naive")
    quantized = quantize_graph(graph, table, QuantizationOptions(unsigned_activations=True))
    batch = batches(name)[0]["input"]
    fp32, ours = run(graph, batch), run(quantized, batch)
    assert np.abs(ours - fp32).max() / np.abs(fp32).max() < 0.05
    session = ort.InferenceSession(export_qdq(quantized).SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": batch})[0]
    assert np.abs(ours - theirs).max() <= 0.03 * np.abs(fp32).max()


def test_a_dead_channel_keeps_its_bias_and_the_sum_inside_int32() -> None:
    """A channel of ~zero weights and a real bias (EfficientNet-Lite0's first conv has one): its weight
    scale widens until bias + the largest accumulator fit int32, else the int32 sum wraps around."""
    graph, table = calibrated("cnn")
    conv = next(node for node in graph.nodes if node.op_type == "Conv" and len(node.inputs) > 2)
    weight, bias = graph.initializers[conv.inputs[1]].copy(), graph.initializers[conv.inputs[2]].copy()
    weight[0], bias[0] = 1e-12, -5.0
    graph.initializers[conv.inputs[1]], graph.initializers[conv.inputs[2]] = weight, bias
    quantized = quantize_graph(graph, table)
    layer = next(node for node in quantized.nodes if node.name == conv.name)
    bias_int32 = quantized.initializers[layer.inputs[3]].astype(np.int64)
    fan_in = weight[0].size
    assert abs(bias_int32[0]) > 2**30, "the bias did not need the widened scale: the test proves nothing"
    assert abs(bias_int32[0]) + accumulator_bound(fan_in, unsigned=False) <= 2**31 - 1
    captured: dict[str, np.ndarray] = {}
    GraphExecutor(quantized, ops=INT8_OPS).run(
        {"input": batches("cnn")[0]["input"]}, lambda name, value: captured.__setitem__(name, value), {layer.outputs[0]}
    )
    assert (captured[layer.outputs[0]][:, 0] == 0).all()  # ReLU(-5 + ~0): no wrapped-around positive sum


def test_bias_corrections_are_added_to_the_float_bias_before_it_is_quantized() -> None:
    """A layer with a bias gets bias + shift at input_scale x weight_scale; one without gets the shift."""
    graph, table = calibrated("cnn")
    plain = quantize_graph(graph, table)
    feeds = batches("cnn")
    shifts = measure_bias_corrections(graph, plain, GraphExecutor(graph), feeds)
    layers = [node for node in plain.nodes if node.op_type in ("Int8Conv", "Int8MatMul")]
    assert sorted(shifts) == sorted(node.name for node in layers)
    corrected = quantize_graph(graph, dataclasses.replace(table, bias_corrections=shifts))
    for node in (node for node in corrected.nodes if node.op_type == "Int8Conv"):
        source = next(item for item in graph.nodes if item.name == node.name)
        bias = graph.initializers[source.inputs[2]] if len(source.inputs) > 2 else np.float32(0)
        expected = quantize_bias(
            (bias + np.asarray(shifts[node.name], np.float32)).astype(np.float32),
            node.attributes["input_scale"],
            corrected.initializers[node.inputs[2]],
        )
        np.testing.assert_array_equal(corrected.initializers[node.inputs[3]], expected)
    assert len(next(node for node in plain.nodes if node.op_type == "Int8Conv" and len(node.inputs) == 3).inputs) == 3


def test_bias_correction_brings_a_layers_int8_mean_output_to_fp32s() -> None:
    """One Conv then a spatial mean: the model's output is each channel's mean. On inputs with a
    non-zero mean, weight rounding moves those means; the corrected model's stay closer to FP32's
    (measured: 8x closer)."""
    builder = graph_builders._Builder(8)
    x = builder.op("Conv", ["input", builder.weight(6, 3, 3, 3, scale=0.05), builder.weight(6)], pads=[1, 1, 1, 1])
    x = builder.op("Flatten", [builder.op("GlobalAveragePool", [x])], axis=1)
    graph = simplify(import_model(builder.model((1, 3, 16, 16), x, 6, "one_conv"), "one_conv"))
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.normal(1.0, 1.0, (16, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    histograms = collect_histograms(GraphExecutor(graph), feeds, calibration_tensors(graph), 2048)
    table = build_calibration_table(histograms, ThresholdSettings(method="naive"), {})
    plain = quantize_graph(graph, table)
    shifts = measure_bias_corrections(graph, plain, GraphExecutor(graph), feeds)
    corrected = quantize_graph(graph, dataclasses.replace(table, bias_corrections=shifts))
    inputs = np.concatenate([feed["input"] for feed in feeds])

    def mean_error(quantized: Graph) -> float:
        return float(np.abs((run(quantized, inputs) - run(graph, inputs)).mean(axis=0)).sum())

    assert mean_error(corrected) < 0.5 * mean_error(plain)

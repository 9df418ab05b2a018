"""The tensor, shape and reduction ops against onnxruntime, one node per graph.

As in ``test_ops_elementwise``: every input, shapes and axes included, is a graph input (so on the
strict device they arrive as device arrays and the host reads must be explicit copies), each case
runs at every opset in 13..21 where the op's definition changes, and the strict device must give the
NumPy bits exactly. Shape arithmetic answers on the host whatever its input: that is checked too.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from strict_device import STRICT, StrictArray, on_strict_device
from test_ops_elementwise import (
    SHAPE,
    Case,
    assert_matches_onnxruntime_and_strict_device,
    assert_refused,
    integers,
    normal,
    signature_opsets,
    single_node_model,
    ties,
)

from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.fp32_ops import UnsupportedModelError
from int8flow.tasks.graph.fp32_tensor_ops import AXES_INPUT_SINCE, TENSOR_OPS
from int8flow.tasks.graph.load import import_model

INT64_MAX = np.iinfo(np.int64).max
HOST_ANSWERS = ("Shape", "Size", "ConstantOfShape", "Range")
"""Ops whose outputs are NumPy arrays even on the device: they read only shapes and host inputs."""
REDUCTIONS = ("ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceSumSquare", "ReduceL2")


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def scalar(value: float, dtype: type = np.int64) -> np.ndarray:
    return np.array(value, dtype=dtype)


def shape_cases() -> list[Case]:
    x = normal(SHAPE)
    return [
        Case("Shape", "whole", (x,)),
        Case("Shape", "start", (x,), {"start": 1}, opsets=(15, 19, 21)),
        Case("Shape", "negative_window", (x,), {"start": -3, "end": -1}, opsets=(15, 21)),
        Case("Size", "float32", (x,)),
        Case("ConstantOfShape", "default", (ints(2, 3),)),
        Case(
            "ConstantOfShape",
            "float_value",
            (ints(3, 1, 2),),
            {"value": helper.make_tensor("value", TensorProto.FLOAT, [1], [1.5])},
        ),
        Case(
            "ConstantOfShape",
            "int64_value",
            (ints(4),),
            {"value": helper.make_tensor("value", TensorProto.INT64, [1], [7])},
        ),
        Case("Range", "int64", (scalar(0), scalar(10), scalar(3))),
        Case("Range", "int64_down", (scalar(10), scalar(-2), scalar(-3))),
        Case("Range", "int64_empty", (scalar(5), scalar(5), scalar(1))),
        Case("Range", "float32", (scalar(0.5, np.float32), scalar(3.0, np.float32), scalar(0.25, np.float32))),
    ]


def layout_cases() -> list[Case]:
    return [
        Case("Squeeze", "axes", (normal((2, 1, 5, 1)), ints(1, -1))),
        Case("Squeeze", "every_unit_axis", (normal((1, 3, 1, 4)),)),
        Case("Unsqueeze", "ends", (normal((2, 3)), ints(0, -1))),
        Case("Unsqueeze", "inner", (integers((4,), -9, 9), ints(1, 3, 0))),
        Case("Expand", "grow_rank", (normal((3, 1)), ints(2, 1, 4))),
        Case("Expand", "keep_larger", (normal((2, 3, 1, 1)), ints(1, 1, 1, 5))),
        Case("Tile", "float32", (normal((2, 3)), ints(2, 1))),
        Case("Tile", "int64", (integers((3,), -5, 5), ints(3))),
        Case("Gather", "negative_indices", (normal((5, 4)), np.array([[0, -1], [2, 3]], dtype=np.int64))),
        Case("Gather", "scalar_index_axis1", (normal(SHAPE), scalar(-2)), {"axis": 1}),
        Case("Gather", "shape_dimension", (ints(8, 3, 32, 32), scalar(0))),
        Case(
            "GatherElements",
            "axis1",
            (normal((3, 4)), integers((3, 2), -4, 3)),
            {"axis": 1},
        ),
        Case("GatherND", "pairs", (normal((3, 4, 5)), integers((2, 6, 2), -3, 2))),
        Case("GatherND", "whole_rows", (normal((3, 4, 5)), integers((2, 1), -3, 2))),
        Case("GatherND", "batch_dims", (normal((2, 3, 4, 5)), integers((2, 3, 7, 1), -4, 3)), {"batch_dims": 2}),
        Case("Slice", "axes_steps", (normal((6, 7, 5)), ints(1, -2), ints(5, 100), ints(0, 2), ints(2, 1))),
        Case("Slice", "negative_step", (normal((6, 7, 5)), ints(-1), ints(-100), ints(1), ints(-2))),
        Case("Slice", "int64_max_end", (normal((6, 7, 5)), ints(2), ints(INT64_MAX), ints(-1))),
        Case("Slice", "reverse_from_max", (normal((6, 7)), ints(INT64_MAX), ints(-INT64_MAX), ints(0), ints(-1))),
        Case("Slice", "leading_axes", (normal((6, 7, 5)), ints(0, 1), ints(3, 5))),
        Case("Slice", "shape_tail", (ints(8, 3, 32, 32), ints(2), ints(INT64_MAX))),
        Case("Split", "sizes", (normal((4, 6)), ints(2, 4)), {"axis": 1}, outputs=2),
        Case("Split", "equal", (normal((4, 6)),), {"axis": -1}, outputs=3, opsets=(13,)),
        Case("Split", "num_outputs_uneven", (normal((7, 2)),), {"num_outputs": 3}, outputs=3, opsets=(18, 21)),
        Case("DepthToSpace", "DCR", (normal((2, 8, 3, 4)),), {"blocksize": 2}),
        Case("DepthToSpace", "CRD", (normal((2, 8, 3, 4)),), {"blocksize": 2, "mode": "CRD"}),
        Case("SpaceToDepth", "block2", (normal((2, 3, 4, 6)),), {"blocksize": 2}),
    ]


def reduction_cases() -> list[Case]:
    """Axes as the attribute before the op takes them as an input, as the input from then on."""
    cases = []
    for op in REDUCTIONS:
        for opset in signature_opsets(op):
            as_input = opset >= AXES_INPUT_SINCE.get(op, 18)
            for label, axes, attributes in (
                ("axes_keepdims", [1, -1], {}),
                ("axes_dropped", [0, 2], {"keepdims": 0}),
                ("every_axis", None, {"keepdims": 0}),
            ):
                x = normal(SHAPE) if op != "ReduceProd" else normal(SHAPE, 0.9) + np.float32(0.5)
                if axes is None:
                    inputs: tuple = (x,)
                elif as_input:
                    inputs = (x, ints(*axes))
                else:
                    inputs, attributes = (x,), {**attributes, "axes": axes}
                cases.append(Case(op, label, inputs, attributes, opsets=(opset,), rtol=1e-4))
            if as_input:
                noop = {"noop_with_empty_axes": 1}
                cases.append(Case(op, "noop_with_empty_axes", (normal(SHAPE),), noop, opsets=(opset,)))
    cases.append(Case("ReduceProd", "int64_dims", (ints(8, 3, 4),), {"keepdims": 0}, opsets=(13,)))
    cases.append(Case("ReduceMax", "int64", (integers((3, 4), -9, 9),), {"axes": [1]}, opsets=(13,)))
    return cases


def index_cases() -> list[Case]:
    x = ties(SHAPE)
    cases = []
    for op in ("ArgMax", "ArgMin"):
        cases += [
            Case(op, "first_of_ties", (x,), {"axis": 1}),
            Case(op, "dropped", (x,), {"axis": -1, "keepdims": 0}),
            Case(op, "last_of_ties", (x,), {"axis": 2, "select_last_index": 1}),
        ]
    return [*cases, Case("GlobalMaxPool", "float32", (normal(SHAPE),))]


def resize_cases() -> list[Case]:
    """The modes torch's exporters write (nearest/asymmetric/floor for Upsample, bilinear with
    pytorch_half_pixel or align_corners) and the rest of the supported set, up and down."""
    x = normal((2, 3, 5, 7))

    def scales(*values: float) -> np.ndarray:
        return np.array(values, dtype=np.float32)

    def resize(label: str, mode: str, coordinates: str, rest: tuple, **extra: object) -> Case:
        attributes = {"mode": mode, "coordinate_transformation_mode": coordinates, **extra}
        opsets = (18, 19, 21) if "axes" in extra else ()
        return Case("Resize", label, (x, None, *rest), attributes, opsets=opsets)

    return [
        resize("nearest_upsample", "nearest", "asymmetric", (scales(1, 1, 2, 2),), nearest_mode="floor"),
        resize("nearest_half_pixel", "nearest", "half_pixel", (scales(1, 1, 2, 3),)),
        resize("nearest_down", "nearest", "half_pixel", (None, ints(2, 3, 9, 4)), nearest_mode="round_prefer_ceil"),
        resize("nearest_align_ceil", "nearest", "align_corners", (scales(1, 1, 1.5, 2.5),), nearest_mode="ceil"),
        resize("nearest_pytorch_half", "nearest", "pytorch_half_pixel", (scales(1, 1, 0.6, 1.4),)),
        resize("linear_half_pixel", "linear", "half_pixel", (scales(1, 1, 2, 2),)),
        resize("linear_pytorch_sizes", "linear", "pytorch_half_pixel", (None, ints(2, 3, 1, 9))),
        resize("linear_align_corners", "linear", "align_corners", (scales(1, 1, 1.7, 0.6),)),
        resize("linear_asymmetric", "linear", "asymmetric", (scales(1, 1, 3, 0.5),)),
        resize("linear_axes", "linear", "half_pixel", (scales(2, 1.5),), axes=[2, 3]),
        resize("nearest_axes_sizes", "nearest", "asymmetric", (None, ints(4, 14)), axes=[-2, -1]),
    ]


CASES = [*shape_cases(), *layout_cases(), *reduction_cases(), *index_cases(), *resize_cases()]
RUNS = [(case, opset) for case in CASES for opset in (case.opsets or signature_opsets(case.op))]


def test_cases_cover_every_tensor_op() -> None:
    assert {case.op for case in CASES} == set(TENSOR_OPS)


@pytest.mark.parametrize(("case", "opset"), RUNS, ids=[f"{c.op}-{c.label}-opset{opset}" for c, opset in RUNS])
def test_op_matches_onnxruntime_and_strict_device(case: Case, opset: int) -> None:
    assert_matches_onnxruntime_and_strict_device(case, opset, host_answer=case.op in HOST_ANSWERS)


def test_shape_arithmetic_on_a_device_batch_stays_on_the_host() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat with an int64 constant -> Reshape: only the data moves."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="batch"),
        helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch_1d"], name="batch_1d"),
        helper.make_node("Concat", ["batch_1d", "rest"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="flatten"),
    ]
    constants = [
        helper.make_tensor("zero", TensorProto.INT64, [], [0]),
        helper.make_tensor("zero_axis", TensorProto.INT64, [1], [0]),
        helper.make_tensor("rest", TensorProto.INT64, [1], [-1]),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic_flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    executor = GraphExecutor(import_model(model, "dynamic_flatten.onnx"), xp=STRICT)
    seen: dict[str, object] = {}
    for batch in (1, 3, 5):
        x = normal((batch, 3, 4))
        out = executor.run({"x": on_strict_device(x)}, lambda name, value: seen.update({name: value}), ("target",))
        assert isinstance(out["y"], StrictArray) and out["y"].get().tobytes() == x.reshape(batch, 12).tobytes()
        assert isinstance(seen["target"], np.ndarray) and seen["target"].tolist() == [batch, -1]


REFUSALS = {
    "resize_cubic": ({"mode": "cubic"}, 13, "Resize mode 'cubic' is not supported"),
    "resize_tf_crop": (
        {"coordinate_transformation_mode": "tf_crop_and_resize"},
        13,
        "coordinate_transformation_mode 'tf_crop_and_resize' is not supported",
    ),
    "resize_half_pixel_symmetric": (
        {"coordinate_transformation_mode": "half_pixel_symmetric"},
        19,
        "coordinate_transformation_mode 'half_pixel_symmetric' is not supported",
    ),
    "resize_antialias": ({"mode": "linear", "antialias": 1}, 18, "Resize antialias=1 is not supported"),
    "resize_aspect_ratio": (
        {"keep_aspect_ratio_policy": "not_larger"},
        18,
        "keep_aspect_ratio_policy 'not_larger' is not supported",
    ),
}


@pytest.mark.parametrize("label", sorted(REFUSALS))
def test_unsupported_resize_modes_are_refused_naming_node_and_problem(label: str) -> None:
    attributes, opset, problem = REFUSALS[label]
    assert_refused(label, "Resize", attributes, 1, opset, problem)


def test_split_sizes_that_do_not_add_up_are_refused_when_run() -> None:
    case = Case("Split", "bad_sizes", (normal((4, 6)), ints(2, 3)), {"axis": 1}, outputs=2)
    graph = import_model(single_node_model(case, 13), "split.onnx")
    with pytest.raises(UnsupportedModelError, match=r"node 'split_node' \(Split\): parts \[2, 3\] do not split axis 1"):
        GraphExecutor(graph).run({"input0": case.inputs[0], "input1": case.inputs[1]})

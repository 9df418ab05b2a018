"""The elementwise, comparison and normalization ops against onnxruntime, one node per graph.

Every input is a graph input, so onnxruntime folds nothing; every case runs at each opset in 13..21
where the op's ONNX definition changes (and at 21), on NumPy, and on the strict device stand-in,
which must give the NumPy bits exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.defs import SchemaError, get_schema
from strict_device import STRICT, on_strict_device

from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.fp32_elementwise import ELEMENTWISE_OPS, erf
from int8flow.tasks.graph.fp32_ops import OPSETS, UnsupportedModelError, check_supported
from int8flow.tasks.graph.load import import_model

RNG = np.random.default_rng(20240613)
SHAPE = (2, 3, 5, 7)
CHANNEL = (3, 1, 1)
SCALAR: tuple[int, ...] = ()
BROADCASTS = {"same": SHAPE, "channel": CHANNEL, "scalar": SCALAR}


def normal(shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return np.asarray(RNG.normal(size=shape) * scale, dtype=np.float32)


def uniform(shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    return np.asarray(RNG.uniform(low, high, size=shape), dtype=np.float32)


def integers(shape: tuple[int, ...], low: int, high: int, dtype: type = np.int64) -> np.ndarray:
    return np.asarray(RNG.integers(low, high, size=shape, endpoint=True), dtype=dtype)


def nonzero_integers(shape: tuple[int, ...], high: int, dtype: type = np.int64) -> np.ndarray:
    """Divisors of either sign, never zero: onnxruntime's integer division by zero is undefined."""
    signs = RNG.choice(np.array([-1, 1], dtype=dtype), size=shape)
    return np.asarray(integers(shape, 1, high, dtype) * signs, dtype=dtype)


def ties(shape: tuple[int, ...]) -> np.ndarray:
    """Small whole floats, so comparisons see equal values."""
    return integers(shape, -2, 2).astype(np.float32)


def bools(shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(RNG.random(size=shape) < 0.5)


@dataclass(frozen=True)
class Case:
    op: str
    label: str
    inputs: tuple[np.ndarray | None, ...]
    attributes: dict[str, Any] = field(default_factory=dict)
    outputs: int = 1
    opsets: tuple[int, ...] = ()
    """Empty: every opset where the op's definition changes (``signature_opsets``)."""
    rtol: float = 1e-5
    atol: float = 1e-6


def signature_opsets(op_type: str) -> list[int]:
    """The first opset in range defining the op, each later one that redefines it, and the newest."""
    found = set()
    for opset in OPSETS:
        try:
            found.add(max(get_schema(op_type, opset).since_version, OPSETS.start))
        except SchemaError:
            continue
    return sorted(found | {OPSETS.stop - 1})


def unary_cases() -> list[Case]:
    sources = {
        "Sqrt": uniform(SHAPE, 0.01, 9.0),
        "Exp": normal(SHAPE, 3.0),
        "Log": uniform(SHAPE, 0.01, 9.0),
        "Tanh": normal(SHAPE, 2.0),
        "Neg": normal(SHAPE),
        "Abs": normal(SHAPE),
        "Reciprocal": normal(SHAPE),
        "Floor": normal(SHAPE, 3.0),
        "Ceil": normal(SHAPE, 3.0),
        "Round": integers(SHAPE, -12, 12).astype(np.float32) / np.float32(2),  # halves round to even
        "Sign": ties(SHAPE),
        "Softplus": normal(SHAPE, 4.0),
        "Softsign": normal(SHAPE, 4.0),
        "Mish": normal(SHAPE, 4.0),
    }
    integral = {op: integers(SHAPE, -9, 9) for op in ("Neg", "Abs", "Sign")}
    return [
        *(Case(op, "float32", (x,)) for op, x in sources.items()),
        *(Case(op, "int64", (x,)) for op, x in integral.items()),
    ]


def activation_cases() -> list[Case]:
    x = normal(SHAPE, 3.0)
    # Erf and the exact Gelu: onnxruntime's float32 erf is an approximation good to a few ulp,
    # ours is float64 accurate before the cast, so the two may differ by a few float32 ulp.
    erf_tolerance = {"rtol": 1e-5, "atol": 2e-6}
    return [
        Case("Erf", "float32", (x,), **erf_tolerance),
        Case("Gelu", "default", (x,), **erf_tolerance),
        Case("Gelu", "none", (x,), {"approximate": "none"}, **erf_tolerance),
        Case("Gelu", "tanh", (x,), {"approximate": "tanh"}),
        Case("Elu", "default", (x,)),
        Case("Elu", "alpha", (x,), {"alpha": 0.5}),
        Case("Selu", "default", (x,)),
        Case("Selu", "alpha_gamma", (x,), {"alpha": 2.0, "gamma": 0.75}),
        Case("Celu", "default", (x,)),
        Case("Celu", "alpha", (x,), {"alpha": 2.5}),
        Case("LogSoftmax", "default", (x,)),
        *(Case("LogSoftmax", f"axis{axis}", (x,), {"axis": axis}) for axis in (0, 1, -2)),
        *(Case("PRelu", f"slope_{name}", (x, normal(shape))) for name, shape in {**BROADCASTS, "last": (7,)}.items()),
    ]


def broadcast_pairs(op: str, make: Any, label: str = "float32", attributes: dict | None = None) -> list[Case]:
    """The op on (2,3,5,7) against the same shape, (3,1,1) and a scalar, and (3,1,1) against (2,3,5,7)."""
    pairs = {name: (make(SHAPE, 0), make(shape, 1)) for name, shape in BROADCASTS.items()}
    pairs["channel_first"] = (make(CHANNEL, 0), make(SHAPE, 1))
    return [Case(op, f"{label}_{name}", pair, attributes or {}) for name, pair in pairs.items()]


def binary_cases() -> list[Case]:
    positive = lambda shape, _: uniform(shape, 0.1, 3.0)  # noqa: E731 - table of input makers
    dividends = lambda shape, side: integers(shape, -20, 20) if side == 0 else nonzero_integers(shape, 6)  # noqa: E731
    exponents = lambda shape, side: uniform(shape, 0.1, 3.0) if side == 0 else uniform(shape, -2.0, 2.0)  # noqa: E731
    return [
        *broadcast_pairs("Sub", lambda shape, _: normal(shape)),
        *broadcast_pairs("Sub", lambda shape, _: integers(shape, -50, 50), "int64"),
        *broadcast_pairs("Div", lambda shape, side: normal(shape) if side == 0 else positive(shape, side)),
        *broadcast_pairs("Div", dividends, "int64"),
        Case("Div", "int32", (integers(SHAPE, -20, 20, np.int32), nonzero_integers(SHAPE, 6, np.int32))),
        *broadcast_pairs("Mod", dividends, "int64_fmod0"),
        *broadcast_pairs("Mod", dividends, "int64_fmod1", {"fmod": 1}),
        Case("Mod", "int32_fmod0", (integers(SHAPE, -20, 20, np.int32), nonzero_integers(SHAPE, 6, np.int32))),
        Case("Mod", "float32_fmod1", (normal(SHAPE, 5.0), uniform(SHAPE, 0.5, 2.0) * ties(SHAPE) + 3), {"fmod": 1}),
        *broadcast_pairs("Pow", exponents),
        Case("Pow", "float32_int64_exponent", (normal(SHAPE, 2.0), integers(SHAPE, 0, 4))),
        Case("Pow", "float32_square", (normal(SHAPE, 2.0), np.array(2.0, dtype=np.float32))),
        Case("Pow", "int64", (integers(SHAPE, -4, 4), integers(SHAPE, 0, 5))),
        Case("Pow", "int64_negative_exponent", (nonzero_integers(SHAPE, 3), integers(SHAPE, -3, -1))),
    ]


def comparison_cases() -> list[Case]:
    comparisons = ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
    return [
        *(case for op in comparisons for case in broadcast_pairs(op, lambda shape, _: ties(shape))),
        *(Case(op, "int64", (integers(SHAPE, -2, 2), integers(CHANNEL, -2, 2))) for op in comparisons),
        Case("Equal", "bool", (bools(SHAPE), bools(CHANNEL))),
        Case("Not", "bool", (bools(SHAPE),)),
        *(case for op in ("And", "Or", "Xor") for case in broadcast_pairs(op, lambda shape, _: bools(shape), "bool")),
        Case("Where", "float32", (bools(SHAPE), normal(CHANNEL), normal(SCALAR))),
        Case("Where", "cond_broadcast", (bools(CHANNEL), normal(SHAPE), normal((7,)))),
        Case("Where", "int64", (bools(SHAPE), integers(SHAPE, -9, 9), integers(CHANNEL, -9, 9))),
    ]


def variadic_cases() -> list[Case]:
    three = (normal(SHAPE), normal(CHANNEL), normal((7,)))
    cases = [Case(op, "single", (normal(SHAPE),)) for op in ("Max", "Min", "Sum", "Mean")]
    cases += [Case(op, "three_broadcast", three) for op in ("Max", "Min", "Sum", "Mean")]
    cases += [
        Case(op, "int64", (integers(SHAPE, -9, 9), integers(CHANNEL, -9, 9))) for op in ("Max", "Min")
    ]  # Sum is float-only
    return cases


def cast_cases() -> list[Case]:
    x = normal(SHAPE, 5.0)  # float-to-int truncates toward zero: -2.7 -> -2
    targets = {
        "float_to_int32": (x, TensorProto.INT32),
        "float_to_int64": (x, TensorProto.INT64),
        "float_to_int8": (x, TensorProto.INT8),
        "float_to_uint8": (np.abs(x), TensorProto.UINT8),
        "float_to_bool": (ties(SHAPE), TensorProto.BOOL),
        "float_to_float16": (x, TensorProto.FLOAT16),
        "float_to_double": (x, TensorProto.DOUBLE),
        "float_to_float": (x, TensorProto.FLOAT),
        "int64_to_float": (integers(SHAPE, -(2**30), 2**30), TensorProto.FLOAT),
        "int64_to_int32": (integers(SHAPE, -(2**20), 2**20), TensorProto.INT32),
        "bool_to_float": (bools(SHAPE), TensorProto.FLOAT),
        "float16_to_float": (x.astype(np.float16), TensorProto.FLOAT),
    }
    cases = [Case("Cast", label, (source,), {"to": to}) for label, (source, to) in targets.items()]
    cases += [
        Case("CastLike", label, (source, np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(to))))
        for label, (source, to) in targets.items()
    ]
    return cases


def normalization_cases() -> list[Case]:
    def batch_norm(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        channels = (shape[1],)
        return normal(shape, 2.0), normal(channels), normal(channels), normal(channels), uniform(channels, 0.2, 3.0)

    x = normal(SHAPE, 2.0) + 1
    return [
        *(Case("BatchNormalization", f"rank{len(shape)}", batch_norm(shape)) for shape in [(4, 3), (2, 3, 11), SHAPE]),
        Case("BatchNormalization", "rank5_epsilon", batch_norm((2, 3, 2, 3, 4)), {"epsilon": 1e-2}),
        Case("BatchNormalization", "training_mode0", batch_norm(SHAPE), {"training_mode": 0}, opsets=(14, 15, 21)),
        Case("InstanceNormalization", "rank4", (x, normal((3,)), normal((3,)))),
        Case(
            "InstanceNormalization", "rank3_epsilon", (normal((2, 3, 11)), normal((3,)), normal((3,))), {"epsilon": 0.1}
        ),
        Case("LayerNormalization", "default", (x, normal((7,)), normal((7,)))),
        Case("LayerNormalization", "axis1_no_bias", (x, normal((3, 5, 7))), {"axis": 1}),
        Case("LayerNormalization", "axis-2_epsilon", (x, normal((5, 7)), normal((5, 7))), {"axis": -2, "epsilon": 0.1}),
        Case("LayerNormalization", "scale_broadcast", (x, normal((1, 7)), normal((7,))), {"axis": -2}),
        Case("LayerNormalization", "mean_inv_std", (x, normal((5, 7)), normal((5, 7))), {"axis": 2}, outputs=3),
        Case("LayerNormalization", "stash_type1", (x, normal((7,))), {"stash_type": 1}, outputs=2),
    ]


CASES = [
    *unary_cases(),
    *activation_cases(),
    *binary_cases(),
    *comparison_cases(),
    *variadic_cases(),
    *cast_cases(),
    *normalization_cases(),
]
RUNS = [(case, opset) for case in CASES for opset in (case.opsets or signature_opsets(case.op))]


def single_node_model(case: Case, opset: int) -> onnx.ModelProto:
    """One node whose every given input is a graph input; a None input is an omitted optional one."""
    names = ["" if array is None else f"input{i}" for i, array in enumerate(case.inputs)]
    outputs = [f"output{i}" for i in range(case.outputs)]
    node = helper.make_node(case.op, names, outputs, name=f"{case.op.lower()}_node", **case.attributes)
    graph = helper.make_graph(
        [node],
        f"{case.op}_{case.label}",
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
            for name, array in zip(names, case.inputs)
            if array is not None
        ],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def onnxruntime_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_cases_cover_every_elementwise_op() -> None:
    assert {case.op for case in CASES} == set(ELEMENTWISE_OPS)


@pytest.mark.parametrize(("case", "opset"), RUNS, ids=[f"{c.op}-{c.label}-opset{opset}" for c, opset in RUNS])
def test_op_matches_onnxruntime_and_strict_device(case: Case, opset: int) -> None:
    assert_matches_onnxruntime_and_strict_device(case, opset)


def assert_matches_onnxruntime_and_strict_device(case: Case, opset: int, host_answer: bool = False) -> None:
    """Our NumPy outputs equal onnxruntime's (dtype, shape, values within the case's tolerance), and
    the strict device's the NumPy bits; ``host_answer``: the device run answers with NumPy arrays."""
    model = single_node_model(case, opset)
    given = [array for array in case.inputs if array is not None]
    feeds = {graph_input.name: array for graph_input, array in zip(model.graph.input, given)}
    expected = onnxruntime_outputs(model, feeds)
    graph = import_model(model, f"{case.op}.onnx")
    ours = list(GraphExecutor(graph).run(feeds).values())
    assert len(ours) == len(expected)
    for got, want in zip(ours, expected):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)
        else:
            np.testing.assert_array_equal(got, want)
    on_device = GraphExecutor(graph, xp=STRICT).run({name: on_strict_device(array) for name, array in feeds.items()})
    for got, want in zip(on_device.values(), ours):
        assert isinstance(got, np.ndarray) == host_answer
        host = STRICT.asnumpy(got)
        assert host.dtype == want.dtype and host.shape == want.shape and host.tobytes() == want.tobytes()


def test_erf_is_float64_accurate_from_zero_to_the_tails() -> None:
    x = np.concatenate([np.linspace(-9.0, 9.0, 20001), np.geomspace(1e-12, 6.0, 500), -np.geomspace(1e-12, 6.0, 500)])
    expected = np.array([math.erf(value) for value in x])
    np.testing.assert_allclose(erf(x), expected, rtol=1e-14, atol=1e-16)
    assert erf(np.array([np.inf, -np.inf, 0.0])).tolist() == [1.0, -1.0, 0.0]
    assert np.isnan(erf(np.array([np.nan]))).all() and erf(x.astype(np.float32)).dtype == np.float32


REFUSALS = {
    "batchnorm_training_mode": (
        "BatchNormalization",
        {"training_mode": 1},
        3,
        15,
        "BatchNormalization with training_mode=1 is not supported: export the model in eval mode",
    ),
    "batchnorm_training_outputs": ("BatchNormalization", {}, 3, 13, "running mean/variance outputs"),
    "cast_float8": ("Cast", {"to": TensorProto.FLOAT8E4M3FN}, 1, 19, "Cast to FLOAT8E4M3FN is not supported"),
    "cast_int4": ("Cast", {"to": TensorProto.INT4}, 1, 21, "Cast to INT4 is not supported"),
    "cast_string": ("Cast", {"to": TensorProto.STRING}, 1, 13, "Cast to STRING is not supported"),
    "cast_bfloat16": ("Cast", {"to": TensorProto.BFLOAT16}, 1, 13, "Cast to BFLOAT16 is not supported"),
    "gelu_mode": ("Gelu", {"approximate": "erf"}, 1, 20, "Gelu approximate='erf' is not defined"),
    "gelu_before_20": ("Gelu", {}, 1, 19, "Gelu is defined from opset 20 on"),
    "mish_before_18": ("Mish", {}, 1, 17, "Mish is defined from opset 18 on"),
    "layernorm_before_17": ("LayerNormalization", {}, 1, 16, "LayerNormalization is defined from opset 17 on"),
    "layernorm_stash_double": (
        "LayerNormalization",
        {"stash_type": TensorProto.DOUBLE},
        1,
        17,
        "stash_type=11 is not supported",
    ),
    "castlike_before_15": ("CastLike", {}, 1, 14, "CastLike is defined from opset 15 on"),
}


@pytest.mark.parametrize("label", sorted(REFUSALS))
def test_unsupported_modes_are_refused_naming_node_and_problem(label: str) -> None:
    assert_refused(label, *REFUSALS[label])


def assert_refused(label: str, op: str, attributes: dict, outputs: int, opset: int, problem: str) -> None:
    """A one-node model is refused before it runs, naming the node, op, opset and ``problem``."""
    node = helper.make_node(op, ["x"], [f"y{i}" for i in range(outputs)], name=f"{label}_node", **attributes)
    graph = helper.make_graph([node], label, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    with pytest.raises(UnsupportedModelError) as error:
        check_supported(import_model(model, f"{label}.onnx"))
    message = str(error.value)
    assert f"'{label}_node'" in message and f"({op}, opset {opset})" in message and problem in message


def test_float_mod_without_fmod_is_refused_when_run() -> None:
    case = Case("Mod", "float32_fmod0", (normal(SHAPE), uniform(SHAPE, 0.5, 2.0)))
    graph = import_model(single_node_model(case, 13), "mod.onnx")
    with pytest.raises(UnsupportedModelError, match=r"node 'mod_node' \(Mod\): fmod=0 on float32 inputs"):
        GraphExecutor(graph).run({"input0": case.inputs[0], "input1": case.inputs[1]})

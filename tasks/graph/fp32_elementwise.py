"""FP32 elementwise math, comparisons and normalizations, on NumPy or CuPy arrays.

Each op follows its ONNX definition at opsets 13 to 21 and keeps the input's dtype (NumPy 2 promotes
float32 beside a float64 0-d array or an int64 array: results are cast back). Integer ops stay exact
in their integer type, since they carry shape arithmetic on a dynamic batch: Div truncates toward
zero and Mod follows ``fmod``, as onnxruntime does, not as NumPy's operators do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from int8flow.kernels.backend import array_module, uses_cuda
from int8flow.tasks.graph.ir import Node
from int8flow.tasks.graph.op_types import NodeCheck, OpFunction, UnsupportedModelError

__all__ = ["ELEMENTWISE_CHECKS", "ELEMENTWISE_HOST_INPUTS", "ELEMENTWISE_OPS", "erf"]

# Cephes ndtr.c (S. Moshier, public domain), the rational approximations scipy's erf compiles:
# erf(x) = x T(x^2) / U(x^2) for |x| <= 1, erfc(x) = exp(-x^2) P(|x|) / Q(|x|) for 1 < |x| < 8.
# Highest degree first; both are accurate to about 1e-16 in float64.
ERF_T = (
    9.60497373987051638749e0,
    9.00260197203842689217e1,
    2.23200534594684319226e3,
    7.00332514112805075473e3,
    5.55923013010394962768e4,
)
ERF_U = (
    1.0,
    3.35617141647503099647e1,
    5.21357949780152679795e2,
    4.59432382970980127987e3,
    2.26290000613890934246e4,
    4.92673942608635921086e4,
)
ERFC_P = (
    2.46196981473530512524e-10,
    5.64189564831068821977e-1,
    7.46321056442269912687e0,
    4.86371970985681366614e1,
    1.96520832956077098242e2,
    5.26445194995477358631e2,
    9.34528527171957607540e2,
    1.02755188689515710272e3,
    5.57535335369399327526e2,
)
ERFC_Q = (
    1.0,
    1.32281951154744992508e1,
    8.67072140885989742329e1,
    3.54937778887819891062e2,
    9.75708501743205489753e2,
    1.82390916687909736289e3,
    2.24633760818710981792e3,
    1.65666309194161350182e3,
    5.57535340817727675546e2,
)
ERF_SATURATES = 8.0
"""|x| beyond which erf is +-1 in float64 (erfc(8) is 1e-29); clipping there keeps the unused
branch of the vectorised select finite."""

CAST_TARGETS = frozenset(
    {
        TensorProto.BOOL,
        TensorProto.INT8,
        TensorProto.INT16,
        TensorProto.INT32,
        TensorProto.INT64,
        TensorProto.UINT8,
        TensorProto.UINT16,
        TensorProto.UINT32,
        TensorProto.UINT64,
        TensorProto.FLOAT16,
        TensorProto.FLOAT,
        TensorProto.DOUBLE,
    }
)
"""The element types both NumPy and CuPy hold natively; bfloat16, float8 and 4-bit types exist only
through ml_dtypes on the host, and strings and complex numbers never occur in a CNN's arithmetic."""


def _polynomial(z: Any, coefficients: Sequence[float]) -> Any:
    """Horner's rule in place: a fresh array per step made erf five times slower on large tensors."""
    result = z * coefficients[0] + coefficients[1]
    for coefficient in coefficients[2:]:
        result *= z
        result += coefficient
    return result


def erf(x: Any) -> Any:
    """The error function, to float64 accuracy before the cast back, without scipy at run time
    (on CuPy, its own CUDA erf)."""
    xp = array_module(x)
    if uses_cuda(xp):
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x).astype(x.dtype, copy=False)
    clipped = xp.clip(x.astype(xp.float64), -ERF_SATURATES, ERF_SATURATES)
    magnitude = xp.abs(clipped)
    square = clipped * clipped
    near_zero = clipped * _polynomial(square, ERF_T) / _polynomial(square, ERF_U)
    complement = xp.exp(-square) * _polynomial(magnitude, ERFC_P) / _polynomial(magnitude, ERFC_Q)
    return xp.where(magnitude <= 1.0, near_zero, xp.sign(clipped) * (1.0 - complement)).astype(x.dtype, copy=False)


def _elementwise(fn: Callable[[ModuleType, Any, Node], Any]) -> OpFunction:
    """An op of one array and its node's attributes, on the array's own module."""
    return lambda node, inputs, opset: [fn(array_module(inputs[0]), inputs[0], node)]


def _ufunc(name: str) -> OpFunction:
    return _elementwise(lambda xp, x, node: getattr(xp, name)(x))


def _binary_ufunc(name: str) -> OpFunction:
    """Two inputs, multidirectional broadcasting: what ONNX's binary math and comparisons share."""
    return lambda node, inputs, opset: [getattr(array_module(*inputs), name)(inputs[0], inputs[1])]


def _variadic(name: str) -> OpFunction:
    return lambda node, inputs, opset: [functools.reduce(getattr(array_module(*inputs), name), inputs)]


def _mean(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    return [functools.reduce(array_module(*inputs).add, inputs) / len(inputs)]


def _divide(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    """Integer quotients truncate toward zero (C, onnxruntime), where NumPy's ``//`` floors: -7 / 2
    is -3, a shape computed from a negative offset depends on it."""
    a, b = inputs
    if a.dtype.kind not in "iu":
        return [a / b]
    xp = array_module(a, b)
    floored = a // b
    return [xp.where((floored * b != a) & ((a < 0) != (b < 0)), floored + 1, floored)]


def _mod(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    """fmod=1 takes the dividend's sign (C fmod), fmod=0 the divisor's (Python's %), which ONNX
    defines for integers only."""
    a, b = inputs
    xp = array_module(a, b)
    if node.attribute("fmod", 0):
        return [xp.fmod(a, b)]
    if a.dtype.kind == "f":
        raise UnsupportedModelError(
            f"node {node.name!r} (Mod): fmod=0 on {a.dtype} inputs is undefined in ONNX; set fmod=1 (C fmod)"
        )
    return [xp.remainder(a, b)]


def _power(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    """Integer powers stay in the integer type (a float detour rounds past 2**53); a negative integer
    exponent gives 1/x**|y| truncated toward zero, as onnxruntime's cast of std::pow does: 0 unless
    |x| is 1. Other mixes compute in NumPy's promoted type and cast to the base's, as std::pow's
    double overloads do."""
    x, y = inputs
    xp = array_module(x, y)
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        magnitude = xp.power(x, xp.abs(y))
        return [xp.where((y >= 0) | (xp.abs(x) == 1), magnitude, 0).astype(x.dtype, copy=False)]
    return [xp.power(x, y).astype(x.dtype, copy=False)]


def _exp_linear(xp: ModuleType, x: Any, alpha: float, width: float = 1.0) -> Any:
    """max(0, x) + alpha (exp(min(0, x) / width) - 1): Elu, Selu and Celu; the exponent only sees
    non-positive values, so large inputs do not overflow a branch that is thrown away."""
    return xp.maximum(x, 0) + xp.expm1(xp.minimum(x, 0) / width) * alpha


def _softplus(xp: ModuleType, x: Any) -> Any:
    return xp.logaddexp(x, 0)


def _gelu(xp: ModuleType, x: Any, node: Node) -> Any:
    if node.attribute("approximate", "none") == "tanh":
        return 0.5 * x * (1 + xp.tanh(0.7978845608028654 * (x + 0.044715 * (x * x * x))))
    return 0.5 * x * (1 + erf(x * 0.7071067811865476))


def _log_softmax(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x = inputs[0]
    xp = array_module(x)
    axis = int(node.attribute("axis", -1)) % x.ndim
    shifted = x - x.max(axis=axis, keepdims=True)
    return [shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))]


def _prelu(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x, slope = inputs
    return [array_module(x, slope).where(x < 0, x * slope, x)]


def _where(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    return [array_module(*inputs).where(inputs[0], inputs[1], inputs[2])]


def _cast(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    """NumPy's float-to-int cast truncates toward zero, as onnxruntime's static_cast does."""
    return [inputs[0].astype(helper.tensor_dtype_to_np_dtype(node.attribute("to")), copy=False)]


def _cast_like(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    return [inputs[0].astype(inputs[1].dtype, copy=False)]


def _per_channel(values: Any, rank: int) -> Any:
    """A (C,) parameter shaped to broadcast over axis 1 of an (N, C, D1, ...) tensor."""
    return values.reshape((-1,) + (1,) * (rank - 2))


def _standardize(x: Any, axes: tuple[int, ...], epsilon: float) -> tuple[Any, Any, Any]:
    """(mean, x - mean, sqrt(variance + epsilon)) over ``axes``, kept as 1s. Two passes (the mean,
    then the mean square of the centred values) stay accurate where E[x^2] - E[x]^2 cancels."""
    xp = array_module(x)
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    return mean, centred, xp.sqrt((centred * centred).mean(axis=axes, keepdims=True) + epsilon)


def _batch_normalization(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    """Inference form in the input's float type: scale (x - mean) / sqrt(var + eps) + bias, the
    per-channel factor computed once (``simplify`` folds the BN after a Conv in float64 instead)."""
    x, scale, bias, mean, variance = inputs[:5]
    xp = array_module(*inputs[:5])
    factor = scale / xp.sqrt(variance + float(node.attribute("epsilon", 1e-5)))
    y = (x - _per_channel(mean, x.ndim)) * _per_channel(factor, x.ndim) + _per_channel(bias, x.ndim)
    return [y.astype(x.dtype, copy=False)]


def _instance_normalization(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    x, scale, bias = inputs[:3]
    _, centred, deviation = _standardize(x, tuple(range(2, x.ndim)), float(node.attribute("epsilon", 1e-5)))
    y = centred / deviation
    return [(y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)).astype(x.dtype, copy=False)]


def _layer_normalization(node: Node, inputs: list[Any], opset: int) -> list[Any]:
    """Statistics in float32 (stash_type 1, the only one ``check`` lets through) over the axes from
    ``axis`` on; Mean and InvStdDev keep those axes as 1s, and are returned only when declared."""
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axes = tuple(range(int(node.attribute("axis", -1)) % x.ndim, x.ndim))
    stashed = x.astype(np.float32, copy=False)
    mean, centred, deviation = _standardize(stashed, axes, float(node.attribute("epsilon", 1e-5)))
    y = centred / deviation * scale
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype, copy=False), mean, array_module(x).reciprocal(deviation)][: len(node.outputs)]


ELEMENTWISE_OPS: dict[str, OpFunction] = {
    **{
        op: _ufunc(name)
        for op, name in {
            "Sqrt": "sqrt",
            "Exp": "exp",
            "Log": "log",
            "Tanh": "tanh",
            "Neg": "negative",
            "Abs": "absolute",
            "Reciprocal": "reciprocal",
            "Floor": "floor",
            "Ceil": "ceil",
            "Round": "rint",  # half to even, as ONNX Round
            "Sign": "sign",
            "Not": "logical_not",
        }.items()
    },
    **{
        op: _binary_ufunc(name)
        for op, name in {
            "Sub": "subtract",
            "Equal": "equal",
            "Less": "less",
            "Greater": "greater",
            "LessOrEqual": "less_equal",
            "GreaterOrEqual": "greater_equal",
            "And": "logical_and",
            "Or": "logical_or",
            "Xor": "logical_xor",
        }.items()
    },
    **{op: _variadic(name) for op, name in {"Max": "maximum", "Min": "minimum", "Sum": "add"}.items()},
    "Mean": _mean,
    "Div": _divide,
    "Mod": _mod,
    "Pow": _power,
    "PRelu": _prelu,
    "Where": _where,
    "Erf": _elementwise(lambda xp, x, node: erf(x)),
    "Gelu": _elementwise(_gelu),
    "Elu": _elementwise(lambda xp, x, node: _exp_linear(xp, x, node.attribute("alpha", 1.0))),
    "Selu": _elementwise(
        lambda xp, x, node: (
            _exp_linear(xp, x, node.attribute("alpha", 1.67326319217681884765625))
            * node.attribute("gamma", 1.05070102214813232421875)
        )
    ),
    "Celu": _elementwise(
        lambda xp, x, node: _exp_linear(xp, x, node.attribute("alpha", 1.0), node.attribute("alpha", 1.0))
    ),
    "Softplus": _elementwise(lambda xp, x, node: _softplus(xp, x)),
    "Softsign": _elementwise(lambda xp, x, node: x / (1 + xp.abs(x))),
    "Mish": _elementwise(lambda xp, x, node: x * xp.tanh(_softplus(xp, x))),
    "LogSoftmax": _log_softmax,
    "Cast": _cast,
    "CastLike": _cast_like,
    "BatchNormalization": _batch_normalization,
    "InstanceNormalization": _instance_normalization,
    "LayerNormalization": _layer_normalization,
}
ELEMENTWISE_HOST_INPUTS: dict[str, frozenset[int]] = {}
"""Empty: no op here reads an input as Python numbers (axes, bounds), so all stay on the device."""


def _since(version: int) -> NodeCheck:
    """An op the model's opset does not define yet: onnxruntime refuses it, so no guess is run."""

    def check(node: Node, opset: int) -> str | None:
        if opset >= version:
            return None
        return (
            f"{node.op_type} is defined from opset {version} on: re-export the model with opset_version >= {version}, "
            "or with the op spelled out in older ops"
        )

    return check


def _first_problem(*checks: NodeCheck) -> NodeCheck:
    return lambda node, opset: next((p for p in (check(node, opset) for check in checks) if p), None)


def _batch_normalization_check(node: Node, opset: int) -> str | None:
    """Training mode (opset 14 on), or the running-statistics outputs it alone defines, updates the
    statistics from the batch: calibrating through it would measure another model."""
    if opset >= 14 and node.attribute("training_mode", 0):
        return "BatchNormalization with training_mode=1 is not supported: export the model in eval mode (model.eval())"
    if any(node.outputs[1:]):
        return (
            "BatchNormalization with running mean/variance outputs (training form) is not supported: "
            "export the model in eval mode (model.eval())"
        )
    return None


def _cast_check(node: Node, opset: int) -> str | None:
    to = node.attribute("to")
    if to in CAST_TARGETS:
        return None
    name = TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() else repr(to)
    return (
        f"Cast to {name} is not supported (bool, integer, float16, float and double are): export the model "
        "without float8, 4-bit, bfloat16, complex or string tensors"
    )


def _gelu_check(node: Node, opset: int) -> str | None:
    approximate = node.attribute("approximate", "none")
    if approximate in ("none", "tanh"):
        return None
    return f"Gelu approximate={approximate!r} is not defined: ONNX defines 'none' and 'tanh'"


def _layer_normalization_check(node: Node, opset: int) -> str | None:
    stash_type = node.attribute("stash_type", TensorProto.FLOAT)
    if stash_type == TensorProto.FLOAT:
        return None
    return f"LayerNormalization with stash_type={stash_type} is not supported: export it with stash_type=1 (float)"


ELEMENTWISE_CHECKS: dict[str, NodeCheck] = {
    "BatchNormalization": _batch_normalization_check,
    "Cast": _cast_check,
    "CastLike": _since(15),
    "Gelu": _first_problem(_since(20), _gelu_check),
    "LayerNormalization": _first_problem(_since(17), _layer_normalization_check),
    "Mish": _since(18),
}

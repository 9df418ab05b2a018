"""A NumPy-backed stand-in for CuPy that refuses what CuPy refuses, so a CPU can find GPU-only bugs.

CuPy arrays never turn into NumPy arrays implicitly: ``np.asarray(device_array)`` raises, and CuPy
functions and operators refuse NumPy array operands. Code that works on NumPy can therefore crash on
its first GPU run (an int64 shape constant moved to the device, then read with ``np.asarray``).
``StrictArray`` holds a NumPy array and behaves the same way: its ``__array__`` raises CuPy's own
error, mixing it with a NumPy array in an operation raises, and the only ways back to the host are
CuPy's explicit ones (``.get()``, ``.tolist()``, ``.item()``, ``int()``/``float()`` of one value).

The namespace ``STRICT`` plays the module: ``array_module`` finds it through ``__array_namespace__``;
kernels see a device module that is not CuPy (``uses_cuda`` is False), so they take the generic
array paths the CUDA branches sit beside, and skip the NumPy-only ones.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

IMPLICIT_CONVERSION = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
)
EXPLICIT_TRANSFERS = frozenset({"asarray", "array", "ascontiguousarray"})


class HostArrayOperandError(TypeError):
    """A NumPy array was given where CuPy takes only device arrays (or scalars)."""


def _to_host(value: Any, transfer: bool = False) -> Any:
    """Unwraps device arrays (recursively through lists and tuples); NumPy arrays are refused unless
    this is an explicit host-to-device transfer (``asarray`` and friends)."""
    if isinstance(value, StrictArray):
        return value.host
    if isinstance(value, np.ndarray):
        if transfer:
            return value
        raise HostArrayOperandError(
            f"a NumPy array {value.shape} {value.dtype} was mixed with device arrays: CuPy refuses it; "
            "move it with xp.asarray first, or keep the whole computation on the host"
        )
    if isinstance(value, list | tuple):
        return type(value)(_to_host(item, transfer) for item in value)
    return value


def _to_device(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return StrictArray(value)
    if isinstance(value, np.generic) and not isinstance(value, np.dtype):
        return StrictArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_to_device(item) for item in value)
    if isinstance(value, list):
        return [_to_device(item) for item in value]
    return value


def _device_function(function: Callable[..., Any], transfer: bool = False) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        result = function(*_to_host(args, transfer), **{key: _to_host(value) for key, value in kwargs.items()})
        return out if isinstance(out, StrictArray) else _to_device(result)

    call.__name__ = getattr(function, "__name__", "call")
    return call


class StrictNamespace:
    """A module-like view of a NumPy module whose functions take and return ``StrictArray``."""

    def __init__(self, module: types.ModuleType, name: str) -> None:
        self._module = module
        self.__name__ = name

    def __getattr__(self, name: str) -> Any:
        if name == "ndarray":
            return StrictArray
        value = getattr(self._module, name)
        if isinstance(value, types.ModuleType):
            return StrictNamespace(value, f"{self.__name__}.{name}")
        if isinstance(value, type) or not callable(value):
            return value  # dtypes, scalar types, constants
        return _device_function(value, transfer=name in EXPLICIT_TRANSFERS)

    def asnumpy(self, array: Any) -> np.ndarray:
        return array.get() if isinstance(array, StrictArray) else np.asarray(array)


STRICT = StrictNamespace(np, "strict_device")


class StrictArray(NDArrayOperatorsMixin):
    """A device array on the host: every operation works, implicit conversion to NumPy does not."""

    __slots__ = ("host", "__weakref__")

    def __init__(self, host: np.ndarray) -> None:
        self.host = host

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(IMPLICIT_CONVERSION)

    def __array_namespace__(self, api_version: str | None = None) -> StrictNamespace:
        return STRICT

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        kwargs = {key: _to_host(value) for key, value in kwargs.items()}
        result = getattr(ufunc, method)(*_to_host(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _to_device(result)

    def __array_function__(self, function: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        return _device_function(function)(*args, **kwargs)

    def __getitem__(self, key: Any) -> Any:
        return _to_device(np.asarray(self.host[_to_host(key)]))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.host[_to_host(key)] = _to_host(value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            # NumPy looks for __array_interface__ and the like: finding the host's would convert.
            raise AttributeError(name)
        value = getattr(self.host, name)
        if callable(value):
            return _device_function(value)
        return _to_device(value) if isinstance(value, np.ndarray) else value

    def __len__(self) -> int:
        return len(self.host)

    def __iter__(self) -> Any:
        return (StrictArray(np.asarray(item)) for item in self.host)

    def __bool__(self) -> bool:
        return bool(self.host)

    def __int__(self) -> int:
        return int(self.host)

    def __float__(self) -> float:
        return float(self.host)

    def __index__(self) -> int:
        return self.host.__index__()

    def __repr__(self) -> str:
        return f"StrictArray({self.host!r})"

    def get(self) -> np.ndarray:
        """CuPy's explicit device-to-host copy."""
        return self.host.copy()

    def tolist(self) -> Any:
        return self.host.tolist()

    def item(self) -> Any:
        return self.host.item()


def on_strict_device(array: np.ndarray) -> StrictArray:
    return StrictArray(np.array(array))

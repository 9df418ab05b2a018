"""Choosing the array library once, up front.

Every kernel takes the array module from the arrays it is given (`array_module`), the CuPy way, so
no flag is threaded through the calls. The only place a user's wish (`auto`, `cpu`, `gpu`) is turned
into a module is `select_backend`, called once when a run starts.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal

import numpy as np

BackendName = Literal["auto", "cpu", "gpu"]
BACKEND_NAMES: tuple[str, ...] = ("auto", "cpu", "gpu")


class BackendUnavailableError(ValueError):
    """The GPU backend was asked for where CuPy cannot reach a CUDA device: a setting this machine
    cannot satisfy (bad input for the CLI and Airflow, not a crash to retry)."""


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device.

    On machines without a GPU `import cupy` may succeed while every array operation raises, so the
    check asks the runtime rather than trusting the import.
    """
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001 - any CUDA/NVML failure means "no usable GPU"
        return False


def select_backend(name: str = "auto") -> ModuleType:
    """Turn a backend name into the array module every later step uses."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown device {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    if name == "cpu":
        return np
    if gpu_available():
        import cupy

        return cupy
    if name == "gpu":
        raise BackendUnavailableError(
            "device 'gpu' was requested but no CUDA GPU is usable (cupy.cuda.is_available() is "
            "False or CuPy is not installed): install the 'gpu' extra on a GPU machine, or pass "
            "--device cpu"
        )
    return np


def array_module(*arrays: Any) -> ModuleType:
    """The module (numpy, cupy, or an Array API namespace) that owns these arrays.

    CuPy is recognised by name, so NumPy paths never import it; any other array that names its
    namespace (``__array_namespace__``, the Array API way) gets that namespace. NumPy's own arrays
    and scalars, and Python numbers, mean NumPy.
    """
    for array in arrays:
        if isinstance(array, np.ndarray | np.generic):
            continue
        if type(array).__module__.startswith("cupy"):
            import cupy

            return cupy
        namespace = getattr(array, "__array_namespace__", None)
        if namespace is not None:
            return namespace()
    return np


def uses_cuda(xp: ModuleType) -> bool:
    """True for CuPy: the module whose arrays the CUDA kernels of ``cuda_kernels`` take.

    Kernels branch on this, not on ``xp is not np``: a device module that is not CuPy (the strict
    stand-in the tests use) takes the generic array path, as CuPy does wherever no CUDA kernel exists.
    """
    return getattr(xp, "__name__", "") == "cupy"


def to_numpy(array: Any) -> np.ndarray:
    """A host copy of a device array (CuPy's explicit ``.get()``); NumPy arrays and Python values
    are returned as NumPy arrays without a copy."""
    if array_module(array) is np:
        return np.asarray(array)
    return array.get()

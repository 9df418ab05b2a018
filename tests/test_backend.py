"""The backend is chosen once; the array module follows the arrays."""

from __future__ import annotations

import numpy as np
import pytest

from int8flow.kernels.backend import BackendUnavailableError, array_module, gpu_available, select_backend, to_numpy


def test_cpu_is_numpy() -> None:
    assert select_backend("cpu") is np


@pytest.mark.skipif(gpu_available(), reason="checks the machine without a GPU")
def test_auto_falls_back_to_numpy_without_a_gpu() -> None:
    assert select_backend("auto") is np


@pytest.mark.skipif(gpu_available(), reason="checks the machine without a GPU")
def test_gpu_without_a_gpu_says_what_to_do() -> None:
    with pytest.raises(BackendUnavailableError, match="--device cpu"):
        select_backend("gpu")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, cpu, gpu"):
        select_backend("tpu")


def test_numpy_arrays_stay_on_the_host() -> None:
    array = np.arange(4)
    assert array_module(array) is np
    assert to_numpy(array) is array

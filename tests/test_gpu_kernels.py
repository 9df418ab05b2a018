"""CuPy paths give the bits the NumPy paths give. Skipped cleanly where no CUDA GPU is usable."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import distributions

from int8flow.kernels.backend import gpu_available, select_backend
from int8flow.kernels.histogram import Histogram, merge_all
from int8flow.kernels.thresholds import METHODS, ThresholdSettings, choose_thresholds

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU and CuPy")]

DATA = distributions(50_000, seed=5)


def test_gpu_backend_is_cupy() -> None:
    assert select_backend("gpu").__name__ == "cupy"
    assert select_backend("auto").__name__ == "cupy"


@pytest.mark.parametrize("name", sorted(DATA))
def test_histogram_on_the_gpu_is_bit_identical(name: str) -> None:
    import cupy

    values = DATA[name]
    on_gpu = Histogram.of(cupy.asarray(values))
    assert isinstance(on_gpu.counts, cupy.ndarray)
    assert on_gpu.to_host().same_as(Histogram.of(values))


def test_gpu_batches_merge_to_the_host_one_pass_histogram() -> None:
    import cupy

    values = DATA["laplacian"]
    parts = [Histogram.of(cupy.asarray(part)) for part in np.array_split(values, 7)]
    assert merge_all(parts[::-1]).to_host().same_as(Histogram.of(values))


@pytest.mark.parametrize("method", METHODS)
def test_thresholds_on_the_gpu_equal_the_cpu_ones(method: str) -> None:
    import cupy

    host = {name: Histogram.of(values) for name, values in DATA.items()}
    device = {name: Histogram.of(cupy.asarray(values)) for name, values in DATA.items()}
    settings = ThresholdSettings(method=method)
    on_cpu = choose_thresholds(host, settings)
    on_gpu = choose_thresholds(device, settings)
    for name in DATA:
        assert on_gpu[name].threshold == on_cpu[name].threshold, name
        assert on_gpu[name].divergence == pytest.approx(on_cpu[name].divergence, rel=1e-9, nan_ok=True), name

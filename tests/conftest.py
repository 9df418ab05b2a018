"""Shared fixtures: real activations-like data, seeded so every failure reproduces."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


def distributions(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The tensor shapes the issue names: smooth, skewed, clipped, spiky and degenerate."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=size)
    return {
        "gaussian": normal * 0.7 + 0.1,
        "laplacian": rng.laplace(scale=0.3, size=size),
        "relu": np.maximum(normal, 0.0),
        "relu6": np.clip(rng.normal(1.0, 3.0, size=size), 0.0, 6.0),
        "heavy_outliers": np.concatenate([rng.normal(size=size - 4), [90.0, -75.0, 40.0, 55.5]]),
        "constant": np.full(size, 2.5),
        "single_nonzero": np.concatenate([np.zeros(size - 1), [3.25]]),
        "float32_small": (rng.normal(size=size) * 1e-3).astype(np.float32),
    }


@pytest.fixture(scope="session")
def varied() -> dict[str, np.ndarray]:
    return distributions(60_000)


@pytest.fixture
def memory_dir() -> Iterator[str]:
    """A fresh directory on fsspec's process-wide in-memory filesystem, removed afterwards."""
    directory = f"memory://test-{uuid.uuid4().hex}"
    yield directory
    fs = fsspec.filesystem("memory")
    if fs.exists(directory):
        fs.rm(directory, recursive=True)

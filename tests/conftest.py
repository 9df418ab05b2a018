"""Shared fixtures: real activations-like data, seeded so every failure reproduces."""

from __future__ import annotations

import sys
from pathlib import Path

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

"""A row of ``row_stable_matmul`` is the same bits whatever rows share its call, on the host and on a
device (the strict stand-in: per-block calls), for the 1000-wide products whose BLAS kernels do
change with the row count."""

from __future__ import annotations

import numpy as np
import pytest
from strict_device import on_strict_device

from int8flow.kernels.backend import to_numpy
from int8flow.kernels.row_stable_matmul import row_stable_matmul


@pytest.mark.parametrize("device", [False, True], ids=["numpy", "strict_device"])
def test_each_row_is_the_same_bits_in_any_batch(device: bool) -> None:
    rng = np.random.default_rng(8)
    a = rng.normal(size=(131, 1000)).astype(np.float32)
    b = rng.normal(size=(1000, 1000)).astype(np.float32)
    place = on_strict_device if device else np.asarray
    whole = to_numpy(row_stable_matmul(place(a), place(b)))
    assert whole.shape == (131, 1000)
    for start, stop in [(0, 1), (5, 69), (64, 131), (130, 131)]:
        part = to_numpy(row_stable_matmul(place(a[start:stop]), place(b)))
        np.testing.assert_array_equal(part.view(np.uint32), whole[start:stop].view(np.uint32))
    np.testing.assert_allclose(whole, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-3)

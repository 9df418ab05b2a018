"""A float32 matmul whose every output row is the same bits whatever the number of rows.

BLAS picks its kernel (gemv for one row, "small matrix" kernels, blocked GEMM) by the matrix
sizes, and the kernels sum a dot product in different orders. For a classifier's final Gemm the
row count is the batch size, so the logits of one example, and the histogram of that tensor, would
depend on how the data was batched and sharded. Multiplying fixed blocks of ``ROWS`` rows, the last
one padded with zeros, makes every call the same shape, so the result is a function of the row
alone. Calibration relies on this for thresholds that are bit-identical across shardings.
"""

from __future__ import annotations

from typing import Any

from int8flow.kernels.backend import array_module

ROWS = 64


def row_stable_matmul(a: Any, b: Any) -> Any:
    """``a @ b`` for a 2-D ``a``, each row computed by one identical ``(ROWS, K) @ (K, N)`` call."""
    xp = array_module(a, b)
    count = a.shape[0]
    padded = -(-count // ROWS) * ROWS
    blocks = xp.zeros((padded, a.shape[1]), dtype=a.dtype)
    blocks[:count] = a
    result = xp.matmul(blocks.reshape(padded // ROWS, ROWS, a.shape[1]), b)
    return result.reshape(padded, -1)[:count]

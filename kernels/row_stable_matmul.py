"""A float32 matmul whose every output row is the same bits whatever the number of rows.

BLAS picks its kernel (gemv for one row, "small matrix" kernels, blocked GEMM) by the matrix
sizes, and the kernels sum a dot product in different orders. For a classifier's final Gemm the
row count is the batch size, so the logits of one example, and the histogram of that tensor, would
depend on how the data was batched and sharded. Multiplying fixed blocks of ``ROWS`` rows, the last
one padded with zeros, makes every call the same shape, so the result is a function of the row
alone. Calibration relies on this for thresholds that are bit-identical across shardings.

NumPy runs a stacked matmul as one identical GEMM per block. CuPy hands the whole stack to one
batched cuBLAS call, whose kernel may change with the batch count, so on a device every block is
its own call (``in_fixed_blocks``); the float32 convolution does the same with blocks of images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from int8flow.kernels.backend import array_module

ROWS = 64
DEVICE_IMAGES = 32
"""Images per float32 convolution call on a device: each call the same shape, whatever the batch."""


def row_stable_matmul(a: Any, b: Any) -> Any:
    """``a @ b`` for a 2-D ``a``, each row computed by one identical ``(ROWS, K) @ (K, N)`` call."""
    xp = array_module(a, b)
    if xp is np:
        # One stacked matmul: NumPy runs it as one identical (ROWS, K) @ (K, N) GEMM per block.
        return in_fixed_blocks(lambda blocks: xp.matmul(blocks, b), a, ROWS, stacked=True)
    return in_fixed_blocks(lambda block: xp.matmul(block, b), a, ROWS)


def in_fixed_blocks(function: Callable[[Any], Any], x: Any, size: int, stacked: bool = False) -> Any:
    """``function`` of ``x`` computed in calls on exactly ``size`` leading entries each (the last
    block zero-padded), concatenated: each entry's result is a function of that entry alone,
    whatever the kernels choose by shape, because every call has the same shape. ``stacked``: one
    call on all blocks stacked as (blocks, size, ...), for a ``function`` that runs each block alike."""
    xp = array_module(x)
    count = x.shape[0]
    padded = xp.zeros((-(-count // size) * size, *x.shape[1:]), dtype=x.dtype)
    padded[:count] = x
    if stacked:
        result = function(padded.reshape(-1, size, *x.shape[1:]))
        return result.reshape(padded.shape[0], *result.shape[2:])[:count]
    parts = [function(padded[start : start + size]) for start in range(0, padded.shape[0], size)]
    return xp.concatenate(parts)[:count]

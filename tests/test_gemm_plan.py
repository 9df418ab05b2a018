"""The cuBLAS call plans of the int8 GEMMs, run through a NumPy model of cublasGemmStridedBatchedEx's
column-major indexing: the shapes, leading dimensions, batch strides and group offsets the CUDA path
passes give the row-major products, before any GPU runs them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from int8flow.kernels import int8_gemm
from int8flow.kernels.gemm_plan import StridedGemm, grouped_gemms, round_up, row_major_gemm

RNG = np.random.default_rng(41)


def strided_batched_gemm(plan: StridedGemm, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """What cuBLAS computes on flat buffers: C_i[r + j*ldc] = sum_l A_i[r + l*lda] * B_i[l + j*ldb]."""
    for i in range(plan.batch):
        a_i = np.lib.stride_tricks.as_strided(
            a[i * plan.stride_a :], (plan.m, plan.k), (a.itemsize, plan.lda * a.itemsize)
        )
        b_i = np.lib.stride_tricks.as_strided(
            b[i * plan.stride_b :], (plan.k, plan.n), (b.itemsize, plan.ldb * b.itemsize)
        )
        c_i = np.lib.stride_tricks.as_strided(
            c[i * plan.stride_c :], (plan.m, plan.n), (c.itemsize, plan.ldc * c.itemsize)
        )
        c_i[...] = a_i.astype(np.int64) @ b_i.astype(np.int64)


@pytest.mark.parametrize(
    ("images", "groups", "rows", "inner", "cols"),
    [(1, 1, 5, 8, 12), (3, 1, 16, 28, 100), (2, 4, 3, 12, 20), (5, 2, 1, 4, 4)],
)
def test_grouped_plans_compute_the_row_major_products(
    images: int, groups: int, rows: int, inner: int, cols: int
) -> None:
    weights = RNG.integers(-127, 128, (groups, rows, inner), dtype=np.int8)
    columns = RNG.integers(-127, 128, (images, groups, inner, cols), dtype=np.int8)
    out = np.full((images, groups, rows, cols), -7, dtype=np.int64)
    flat_out = out.reshape(-1)
    for plan, left, right, result in grouped_gemms(images, groups, rows, inner, cols):
        strided_batched_gemm(plan, columns.reshape(-1)[right:], weights.reshape(-1)[left:], flat_out[result:])
    expected = np.einsum("grk,igkc->igrc", weights.astype(np.int64), columns.astype(np.int64))
    np.testing.assert_array_equal(out, expected)


def test_padded_operands_keep_the_product() -> None:
    a = RNG.integers(-127, 128, (7, 33), dtype=np.int8)
    b = RNG.integers(-127, 128, (33, 5), dtype=np.int8)
    k, n = round_up(33), round_up(5)
    assert (k, n) == (36, 8)
    padded_a, padded_b = np.zeros((7, k), np.int8), np.zeros((k, n), np.int8)
    padded_a[:, :33], padded_b[:33, :5] = a, b
    c = np.zeros((7, n), np.int64)
    ((plan, _, _, _),) = grouped_gemms(1, 1, 7, k, n)
    strided_batched_gemm(plan, padded_b.reshape(-1), padded_a.reshape(-1), c.reshape(-1))
    np.testing.assert_array_equal(c[:, :5], a.astype(np.int64) @ b.astype(np.int64))


def test_a_row_stride_shorter_than_the_row_is_refused() -> None:
    with pytest.raises(ValueError, match="left row stride 3"):
        row_major_gemm(2, 4, 4, left=(3, 0), right=(4, 0), out=(4, 0), batch=1)


def test_a_refused_gemm_warns_once_and_every_one_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8_gemm, "_fallbacks", 0)
    with pytest.warns(RuntimeWarning, match=r"cuBLAS refused an int8 GEMM \(m=4: CUBLAS_STATUS_NOT_SUPPORTED\)"):
        int8_gemm.note_gemm_fallback("m=4: CUBLAS_STATUS_NOT_SUPPORTED")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        int8_gemm.note_gemm_fallback("m=8: CUBLAS_STATUS_NOT_SUPPORTED")
    assert int8_gemm.gemm_fallbacks() == 2

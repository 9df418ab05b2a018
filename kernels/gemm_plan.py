"""Row-major batched matrix products as cuBLAS calls, worked out where a CPU can check them.

cuBLAS is column-major; a row-major (R, C) matrix with row stride ``ld`` is, to cuBLAS, the
column-major (C, R) matrix, its transpose, with leading dimension ``ld``. So the row-major
``out_i = left_i @ right_i`` is the column-major ``out_i^T = right_i^T @ left_i^T``: no transposes,
only the operands swapped. ``tests/test_gemm_plan.py`` runs these plans through a NumPy model of
``cublasGemmStridedBatchedEx``'s indexing, so the arguments are right before a GPU ever sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

INT8_GEMM_ALIGNMENT = 4
"""cuBLAS int8 GEMMs need leading dimensions and batch strides that are multiples of 4 and 4-byte
aligned pointers: K and the output width are zero-padded to it (zeros add nothing to a dot product)."""


@dataclass(frozen=True)
class StridedGemm:
    """The shape arguments of one ``cublasGemmStridedBatchedEx`` (no transposes), column-major: for
    each ``i < batch``, C_i (m x n) = A_i (m x k) @ B_i (k x n), where X_i starts ``i * stride_x``
    elements after X_0 and column j of X_i starts ``j * ldx`` elements after its first."""

    m: int
    n: int
    k: int
    lda: int
    stride_a: int
    ldb: int
    stride_b: int
    ldc: int
    stride_c: int
    batch: int


def row_major_gemm(
    rows: int,
    inner: int,
    cols: int,
    left: tuple[int, int],
    right: tuple[int, int],
    out: tuple[int, int],
    batch: int,
) -> StridedGemm:
    """The plan of ``out_i (rows, cols) = left_i (rows, inner) @ right_i (inner, cols)`` for
    row-major operands given as (row stride, batch stride) in elements; a batch stride of 0 shares
    the operand across the batch (one layer's weights for every image). cuBLAS's A is ``right``."""
    for name, (row_stride, _) in (("left", left), ("right", right), ("out", out)):
        width = inner if name == "left" else cols
        if row_stride < width:
            raise ValueError(f"{name} row stride {row_stride} is shorter than its rows ({width} elements)")
    return StridedGemm(
        m=cols,
        n=rows,
        k=inner,
        lda=right[0],
        stride_a=right[1],
        ldb=left[0],
        stride_b=left[1],
        ldc=out[0],
        stride_c=out[1],
        batch=batch,
    )


def grouped_gemms(
    images: int, groups: int, rows: int, inner: int, cols: int
) -> list[tuple[StridedGemm, int, int, int]]:
    """``weights`` (G, rows, inner) @ ``columns`` (images, G, inner, cols) -> ``out`` (images, G, rows,
    cols), all C-contiguous: one call per group over every image, as (plan, element offsets of the
    group's first weights, columns and out blocks)."""
    return [
        (
            row_major_gemm(
                rows,
                inner,
                cols,
                left=(inner, 0),
                right=(cols, groups * inner * cols),
                out=(cols, groups * rows * cols),
                batch=images,
            ),
            group * rows * inner,
            group * inner * cols,
            group * rows * cols,
        )
        for group in range(groups)
    ]


def round_up(size: int, multiple: int = INT8_GEMM_ALIGNMENT) -> int:
    return -(-size // multiple) * multiple

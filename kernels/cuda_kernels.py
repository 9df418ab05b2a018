"""CUDA versions of the INT8 kernels, for CuPy arrays: the same results as the NumPy paths, bit for bit.

Imported only by the public functions of ``int8flow.kernels.quantize`` and ``int8flow.kernels.int8_gemm`` once they
see CuPy arrays, so the NumPy paths never import CuPy; cuBLAS is imported at the first GEMM, so the
module (and ``tests/test_cuda_compile.py``) needs only CuPy and NVRTC. Kernels are defined at module
level and compiled on first use; CuPy compiles them with flush-to-zero (see ``histogram``).

- quantize / requantize: ElementwiseKernels with the NumPy path's arithmetic (float32 division and
  multiplication, IEEE correctly rounded on the GPU as on the CPU) and ``rint`` (half to even) for
  rounding (the residual Add is a table lookup, ``quantize.add_int8``, the same on every backend);
- int8 GEMM: cuBLAS ``cublasGemmStridedBatchedEx`` with int8 inputs and int32 compute and output
  (exact integer arithmetic; tensor cores where the shapes allow): one call per convolution group
  over every image of a block, the layer's weights shared (batch stride 0). The call plans
  (``int8flow.kernels.gemm_plan``) are checked on the CPU. K and the output width are zero-padded to
  cuBLAS's multiple of 4, the weights once per layer (``conv.gemm_weights``); if cuBLAS still
  refuses, an exact float64 matmul takes over, with a warning and a count (``int8_gemm.gemm_fallbacks``).
  The operand layout is the one im2col writes (no transposes): not measured against the
  K-contiguous "TN" layout, as no GPU has run it yet;
- depthwise convolution: a RawKernel, one thread per output, int32 accumulation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import cupy
import numpy as np

from int8flow.kernels.conv import Windows, convolve
from int8flow.kernels.gemm_plan import INT8_GEMM_ALIGNMENT, StridedGemm, grouped_gemms, round_up
from int8flow.kernels.int8_gemm import note_gemm_fallback

# cudaDataType_t and cublasComputeType_t values (library_types.h, cublas_api.h).
CUDA_R_8I = 3
CUDA_R_32I = 10
CUBLAS_COMPUTE_32I = 72
CUBLAS_GEMM_DEFAULT = -1
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65535 * 16

_QUANTIZE = cupy.ElementwiseKernel(
    "float32 x, float32 scale",
    "int8 q",
    "q = (signed char)fminf(fmaxf(rintf(x / scale), -128.0f), 127.0f)",
    "int8flow_quantize",
)

_QUANTIZE_UNSIGNED = cupy.ElementwiseKernel(
    "float32 x, float32 scale",
    "uint8 q",
    "q = (unsigned char)fminf(fmaxf(rintf(x / scale), 0.0f), 255.0f)",
    "int8flow_quantize_unsigned",
)

_REQUANTIZE = cupy.ElementwiseKernel(
    "int32 acc, float32 multiplier, float32 low, float32 high",
    "int8 q",
    "q = (signed char)fminf(fmaxf(rintf(__fmul_rn(__int2float_rn(acc), multiplier)), low), high)",
    "int8flow_requantize",
)

_REQUANTIZE_UNSIGNED = cupy.ElementwiseKernel(
    "int32 acc, float32 multiplier, float32 low, float32 high",
    "uint8 q",
    "q = (unsigned char)fminf(fmaxf(rintf(__fmul_rn(__int2float_rn(acc), multiplier)), low), high)",
    "int8flow_requantize_unsigned",
)


_DEPTHWISE = cupy.RawKernel(
    r"""
extern "C" __global__ void int8flow_depthwise(
    const signed char* x, const signed char* w, int* y,
    const int channels, const int height, const int width, const int multiplier,
    const int kernel_h, const int kernel_w, const int out_h, const int out_w,
    const int stride_h, const int stride_w, const int pad_top, const int pad_left,
    const int dilation_h, const int dilation_w, const long long total)
{
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total; index += step) {
        const int ox = (int)(index % out_w);
        long long rest = index / out_w;
        const int oy = (int)(rest % out_h);
        rest /= out_h;
        const int out_channel = (int)(rest % ((long long)channels * multiplier));
        const long long image = rest / ((long long)channels * multiplier);
        const int channel = out_channel / multiplier;
        const signed char* plane = x + (image * channels + channel) * (long long)height * width;
        const signed char* taps = w + (long long)out_channel * kernel_h * kernel_w;
        int acc = 0;
        for (int i = 0; i < kernel_h; ++i) {
            const int iy = oy * stride_h - pad_top + i * dilation_h;
            if (iy < 0 || iy >= height) continue;
            for (int j = 0; j < kernel_w; ++j) {
                const int ix = ox * stride_w - pad_left + j * dilation_w;
                if (ix < 0 || ix >= width) continue;
                acc += (int)plane[(long long)iy * width + ix] * (int)taps[i * kernel_w + j];
            }
        }
        y[index] = acc;
    }
}
""",
    "int8flow_depthwise",
)


def quantize(x: cupy.ndarray, scale: cupy.ndarray, unsigned: bool = False) -> cupy.ndarray:
    """``clip(rint(x / scale), -128, 127)`` as int8 (0..255 as uint8 when ``unsigned``)."""
    return (_QUANTIZE_UNSIGNED if unsigned else _QUANTIZE)(x, scale)


def requantize(acc: cupy.ndarray, multiplier: cupy.ndarray, low: int, high: int) -> cupy.ndarray:
    """``clip(rint(float32(acc) * multiplier), low, high)`` as int8 (uint8 when ``high > 127``), in float32."""
    kernel = _REQUANTIZE_UNSIGNED if high > 127 else _REQUANTIZE
    return kernel(acc.astype(cupy.int32, copy=False), multiplier, np.float32(low), np.float32(high))


def int8_matmul(a: cupy.ndarray, b: cupy.ndarray) -> cupy.ndarray:
    """``a`` (..., K) int8 @ ``b`` (K, N) int8 -> int32 (..., N): one cuBLAS int8 GEMM."""
    k, n = b.shape
    return gemm_int8(a.reshape(-1, k), b).reshape(*a.shape[:-1], n)


def int8_conv2d(x: cupy.ndarray, weight: cupy.ndarray, windows: Windows, groups: int) -> cupy.ndarray:
    """Int32 accumulators of an int8 convolution: the depthwise kernel when every group holds one
    input channel, else im2col (``int8flow.kernels.conv.convolve``) with cuBLAS int8 GEMMs."""
    if weight.shape[1] == 1 and x.shape[1] == groups:
        return depthwise(x, weight, windows)
    return convolve(
        x, weight, windows, groups, batched_gemm_int8, cupy.int8, cupy.int32, k_multiple=INT8_GEMM_ALIGNMENT
    )


def depthwise(x: cupy.ndarray, weight: cupy.ndarray, windows: Windows) -> cupy.ndarray:
    """Depthwise int8 convolution (one or more output channels per input channel), int32 out."""
    n, channels, height, width = x.shape
    out_channels = weight.shape[0]
    (out_h, out_w), (kernel_h, kernel_w) = windows.out_hw, windows.kernel_hw
    out = cupy.empty((n, out_channels, out_h, out_w), dtype=cupy.int32)
    if out.size == 0:
        return out
    blocks = min(-(-out.size // THREADS_PER_BLOCK), MAX_BLOCKS)
    scalars = (
        channels,
        height,
        width,
        out_channels // channels,
        kernel_h,
        kernel_w,
        out_h,
        out_w,
        *windows.strides,
        windows.pads[0],
        windows.pads[1],
        *windows.dilations,
    )
    _DEPTHWISE(
        (blocks,),
        (THREADS_PER_BLOCK,),
        (
            cupy.ascontiguousarray(x),
            cupy.ascontiguousarray(weight),
            out,
            *(np.int32(v) for v in scalars),
            np.int64(out.size),
        ),
    )
    return out


def batched_gemm_int8(weights: cupy.ndarray, columns: cupy.ndarray) -> cupy.ndarray:
    """``weights`` (G, Mg, Kp) @ ``columns`` (n, G, K, L) -> int32 (n, G, Mg, L): one strided-batched
    cuBLAS call per group over all images (the ``product`` of ``int8flow.kernels.conv.convolve``).

    ``weights`` come from ``gemm_weights`` with K already padded to a multiple of 4 (once per
    layer); the columns are padded here to (Kp, Lp) so every image's block starts aligned."""
    n, groups, k, length = columns.shape
    rows, k_padded = weights.shape[1], weights.shape[2]
    length_padded = round_up(length)
    if k_padded != round_up(k):
        raise ValueError(f"weights hold K={k_padded}; columns K={k} needs K padded to {round_up(k)}")
    if (k, length) != (k_padded, length_padded):
        padded = cupy.zeros((n, groups, k_padded, length_padded), dtype=cupy.int8)
        padded[:, :, :k, :length] = columns
        columns = padded
    columns = cupy.ascontiguousarray(columns)
    weights = cupy.ascontiguousarray(weights)
    out = cupy.empty((n, groups, rows, length_padded), dtype=cupy.int32)
    for group, (plan, left, right, result) in enumerate(grouped_gemms(n, groups, rows, k_padded, length_padded)):
        _strided_gemm(
            plan,
            weights.data.ptr + left * weights.itemsize,
            columns.data.ptr + right * columns.itemsize,
            out.data.ptr + result * out.itemsize,
            functools.partial(_exact_matmul, weights[group], columns[:, group]),
            out[:, group],
        )
    return out[..., :length] if length_padded != length else out


def gemm_int8(a: cupy.ndarray, b: cupy.ndarray) -> cupy.ndarray:
    """Row-major ``a`` (M, K) int8 @ ``b`` (K, N) int8 -> int32 (M, N), exact."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return cupy.zeros((m, n), dtype=cupy.int32)
    k_padded, n_padded = round_up(k), round_up(n)
    a = _aligned(a, m, k_padded)
    b = _aligned(b, k_padded, n_padded)
    c = cupy.empty((m, n_padded), dtype=cupy.int32)
    ((plan, _, _, _),) = grouped_gemms(1, 1, m, k_padded, n_padded)
    _strided_gemm(
        plan,
        a.data.ptr,
        b.data.ptr,
        c.data.ptr,
        functools.partial(_exact_matmul, a, b),
        c,
    )
    return cupy.ascontiguousarray(c[:, :n]) if n_padded != n else c


def _exact_matmul(a: cupy.ndarray, b: cupy.ndarray) -> cupy.ndarray:
    """int8 @ int8 in float64: |products| <= 2**14, so the sums are exact for K < 2**39."""
    return cupy.matmul(a.astype(cupy.float64), b.astype(cupy.float64)).astype(cupy.int32)


def _strided_gemm(
    plan: StridedGemm,
    left: int,
    right: int,
    out: int,
    exact_fallback: Callable[[], cupy.ndarray],
    out_view: cupy.ndarray,
) -> None:
    """Runs ``plan`` (left, right, out: device pointers of the row-major operands); if cuBLAS refuses
    it, ``exact_fallback()`` (``_exact_matmul``) fills ``out_view`` instead, with a warning the first
    time (``int8_gemm.gemm_fallbacks``)."""
    from cupy_backends.cuda.libs import cublas

    one, zero = np.array(1, dtype=np.int32), np.array(0, dtype=np.int32)
    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    mode = cublas.getPointerMode(handle)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    try:
        # Column-major: C^T = right^T @ left^T, so cuBLAS's A is our right operand and its B our left.
        cublas.gemmStridedBatchedEx(
            handle,
            cublas.CUBLAS_OP_N,
            cublas.CUBLAS_OP_N,
            plan.m,
            plan.n,
            plan.k,
            one.ctypes.data,
            right,
            CUDA_R_8I,
            plan.lda,
            plan.stride_a,
            left,
            CUDA_R_8I,
            plan.ldb,
            plan.stride_b,
            zero.ctypes.data,
            out,
            CUDA_R_32I,
            plan.ldc,
            plan.stride_c,
            plan.batch,
            CUBLAS_COMPUTE_32I,
            CUBLAS_GEMM_DEFAULT,
        )
    except cublas.CUBLASError as error:
        note_gemm_fallback(f"{plan}: {error}")
        out_view[...] = exact_fallback()
    finally:
        cublas.setPointerMode(handle, mode)


def _aligned(matrix: cupy.ndarray, rows: int, cols: int) -> cupy.ndarray:
    """``matrix`` as a C-contiguous, 4-byte aligned (rows, cols) int8 array, zero-padded."""
    if matrix.shape == (rows, cols) and matrix.flags.c_contiguous and matrix.data.ptr % INT8_GEMM_ALIGNMENT == 0:
        return matrix
    padded = cupy.zeros((rows, cols), dtype=cupy.int8)
    padded[: matrix.shape[0], : matrix.shape[1]] = matrix
    return padded

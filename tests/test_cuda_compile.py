"""Every CUDA kernel of int8flow compiles with NVRTC for sm_75 and sm_90, on a machine without a GPU.

CuPy compiles a kernel on its first launch, so without this a kernel that does not compile would fail only on the
first GPU run. The source is the one CuPy would build (its own generator for ElementwiseKernels, its own headers),
the options are CuPy's own, and the compile is CuPy's own NVRTC step with an explicit architecture. Left out are only
the steps that need a device: the architecture lookup, the on-disk cache and the module load.

sm_75 is the oldest architecture CUDA 13 (the GPU machines' cupy-cuda13x) still compiles for; sm_90 is H100/H200.
"""

from __future__ import annotations

import importlib
import inspect
import re
import struct
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from unittest import mock

import numpy as np
import pytest

pytestmark = pytest.mark.cuda_compile

cupy = pytest.importorskip("cupy", reason="cupy-cuda13x is not installed (pip install -e '.[test]')")

from cuda.pathfinder import DynamicLibNotFoundError, load_nvidia_dynamic_lib  # noqa: E402
from cupy._core import _carray, _kernel, _scalar, core  # noqa: E402
from cupy.cuda import compiler  # noqa: E402

try:  # the search CuPy itself makes for libnvrtc
    load_nvidia_dynamic_lib("nvrtc")
except DynamicLibNotFoundError as error:
    pytest.skip(
        f"NVRTC not found ({error}): install the nvidia-cuda-nvrtc wheel (cuda-toolkit[nvrtc])",
        allow_module_level=True,
    )

ARCHS = ("75", "90")
"""Oldest supported architecture and H100/H200."""

KERNEL_MODULE = "int8flow.kernels.cuda_kernels"

KINDS = (cupy.RawKernel, cupy.ElementwiseKernel, cupy.ReductionKernel, cupy.RawModule)

CUPY_CACHE_OPTIONS = ("-ftz=true",)
"""What ``compiler._compile_with_cache_cuda`` adds unconditionally; that function also does the device-bound cache
work, so it cannot be called here. ``test_the_replicated_cupy_options_are_still_cupys`` keeps this honest."""

# cupy/_core/_kernel.pxd, ``cdef enum _ArgKind``: not visible from Python. A wrong value would give the wrong C
# parameter types, which ``_elementwise_source`` checks in the generated signature.
ARG_KIND_NDARRAY, ARG_KIND_INDEXER, ARG_KIND_SCALAR = 1, 2, 3

GENERIC_DTYPES: dict[str, dict[str, str]] = {}
"""Kernel name -> {parameter name: dtype} for ElementwiseKernel parameters of a generic type (``T x``): the declared
dtypes decide the generated C types, and a generic one has none. Empty while every kernel declares its dtypes."""


@dataclass(frozen=True)
class Layout:
    """How the launch arguments look to CuPy; this picks the C types of the generated elementwise kernel."""

    ndim: int
    c_contiguous: bool
    index_32_bits: bool
    scalar_inputs: bool


LAYOUTS = {
    # Contiguous arrays of < 2**31 elements: what CuPy's reduce_dims makes of most launches.
    "contiguous": Layout(ndim=1, c_contiguous=True, index_32_bits=True, scalar_inputs=False),
    # Per-channel scales broadcast over a large NCHW tensor: strided, 64-bit indexing.
    "strided": Layout(ndim=3, c_contiguous=False, index_32_bits=False, scalar_inputs=False),
    # Python numbers as inputs, as requantize passes low and high: scalar parameters instead of CArrays.
    "scalar-inputs": Layout(ndim=1, c_contiguous=True, index_32_bits=True, scalar_inputs=True),
}


@dataclass(frozen=True)
class CompileJob:
    """One NVRTC compile as CuPy would run it, and the kernel symbols the launcher will look up in the cubin."""

    source: str
    options: tuple[str, ...]
    prepend_cupy_headers: bool
    symbols: tuple[str, ...]
    name_expressions: tuple[str, ...] | None = None


def _import_kernels() -> tuple[ModuleType | None, str]:
    """The kernel module, or why it does not import: reported by a test, not as a collection error that would stop
    the whole ``make test`` run."""
    try:
        return importlib.import_module(KERNEL_MODULE), ""
    except Exception as error:  # any import failure is a test failure, shown in full
        return None, "".join(traceback.format_exception(error))


def _discover(module: ModuleType) -> dict[str, Any]:
    """Every CuPy kernel object of ``module``: its attributes and the values of its dicts, lists and tuples, so a new
    kernel is picked up without touching this test."""
    found: dict[str, Any] = {}
    seen: set[int] = set()
    for attribute, value in sorted(vars(module).items()):
        candidates = [(attribute, value)]
        if isinstance(value, dict):
            candidates += [(f"{attribute}[{key!r}]", item) for key, item in value.items()]
        elif isinstance(value, list | tuple):
            candidates += [(f"{attribute}[{index}]", item) for index, item in enumerate(value)]
        for label, candidate in candidates:
            if isinstance(candidate, KINDS) and id(candidate) not in seen:
                seen.add(id(candidate))
                found[label] = candidate
    return found


MODULE, IMPORT_ERROR = _import_kernels()
KERNELS = _discover(MODULE) if MODULE is not None else {}


def _kernel_cases() -> Iterator[Any]:
    """(label, layout) for every kernel: one case per layout for ElementwiseKernels, whose source depends on it."""
    if not KERNELS:  # an empty parameter set would be a skip; this fails instead
        yield pytest.param("", "", id="no-kernels-found")
    for label, kernel in KERNELS.items():
        layouts = LAYOUTS if isinstance(kernel, cupy.ElementwiseKernel) else ("as-written",)
        for layout in layouts:
            yield pytest.param(label, layout, id=f"{label}-{layout}")


def _elementwise_source(kernel: Any, layout: Layout) -> str:
    """CuPy's generated CUDA source for ``kernel`` with its declared dtypes, as a launch with ``layout`` compiles it.

    Private CuPy API (``_kernel._get_elementwise_kernel_code``, ``_ArgInfo``, ``_decide_params_type``): CuPy builds
    this source only inside ``ElementwiseKernel.__call__`` from device arrays, and has no public way to get it without
    a GPU. Following its call path keeps the typedefs, parameter types and per-element references exactly CuPy's."""
    generic = GENERIC_DTYPES.get(kernel.name, {})
    params = kernel.in_params + kernel.out_params
    dtypes = [p.dtype if p.dtype is not None else generic.get(p.name) for p in params]
    missing = [p.name for p, dtype in zip(params, dtypes, strict=True) if dtype is None]
    if missing:
        pytest.fail(f"{kernel.name}: generic parameters {missing} have no dtype; add them to GENERIC_DTYPES")
    nin = len(kernel.in_params)
    in_types, out_types, type_map = kernel._decide_params_type(tuple(dtypes[:nin]), tuple(dtypes[nin:]))

    arginfos = []
    for index, (p, dtype) in enumerate(zip(params, in_types + out_types, strict=True)):
        if layout.scalar_inputs and index < nin and not p.raw:
            arginfos.append(_kernel._ArgInfo(ARG_KIND_SCALAR, _scalar.CScalar, np.dtype(dtype), 0, True, True))
        else:
            arginfos.append(
                _kernel._ArgInfo(
                    ARG_KIND_NDARRAY,
                    cupy.ndarray,
                    np.dtype(dtype),
                    layout.ndim,
                    layout.c_contiguous,
                    layout.index_32_bits,
                )
            )
    arginfos.append(_kernel._ArgInfo(ARG_KIND_INDEXER, _carray.Indexer, None, layout.ndim, True, layout.index_32_bits))
    code = _kernel._get_elementwise_kernel_code(
        tuple(arginfos), type_map, kernel.params, kernel.operation, kernel.name, kernel.preamble, **kernel.kwargs
    )

    signature = re.search(rf'extern "C" __global__ void {kernel.name}\((.*)\) \{{', code)
    assert signature, f"no kernel {kernel.name} in CuPy's generated source:\n{code}"
    arrays = sum(info.arg_kind == ARG_KIND_NDARRAY for info in arginfos)
    assert signature[1].count("CArray<") == arrays and signature[1].count("CIndexer<") == 1, signature[1]
    return code


def _compile_job(kernel: Any, layout: str) -> CompileJob:
    """What CuPy would hand to NVRTC for ``kernel``; fails for features this test does not model."""
    if isinstance(kernel, cupy.ElementwiseKernel):
        source = _elementwise_source(kernel, LAYOUTS[layout])
        # ElementwiseKernel -> compile_with_cache(code, options): CuPy's headers prepended.
        return CompileJob(source, tuple(kernel.kwargs.get("options", ())), True, (kernel.name,))
    if isinstance(kernel, cupy.RawKernel):
        state = kernel.__getstate__()  # the pickling state: the only public view of translate_cucomplex and jitify
        unsupported = {key: state[key] for key in ("translate_cucomplex", "jitify", "file_path") if state[key]}
        if state["backend"] != "nvrtc" or unsupported:
            pytest.fail(f"{kernel.name}: backend {state['backend']!r}, {unsupported}: not modelled by this test")
        # RawKernel -> _get_raw_module -> compile_with_cache(code, options, prepend_cupy_headers=False).
        return CompileJob(state["code"], state["options"], False, (kernel.name,))
    if isinstance(kernel, cupy.RawModule):
        # translate_cucomplex and jitify of a RawModule are not readable from Python; they are assumed off.
        if kernel.backend != "nvrtc" or kernel.code is None:
            pytest.fail(f"RawModule backend {kernel.backend!r}, path {kernel.file_path!r}: not modelled by this test")
        return CompileJob(kernel.code, kernel.options, False, (), kernel.name_expressions)
    pytest.fail(f"{type(kernel).__name__} {kernel.name}: this test cannot build its source yet; extend _compile_job")


def _nvrtc_compile(job: CompileJob, arch: str, filename: str) -> tuple[bytes, dict[str, str] | None]:
    """Compile ``job`` as ``core.compile_with_cache`` would on a device of compute capability ``arch``.

    Private CuPy API (``assemble_cupy_compiler_options``, ``_compile_using_nvrtc_no_warning``): CuPy has no public way
    to compile for a given architecture without a device. The final step adds CuPy's ``-arch=sm_XX`` and
    ``--device-as-default-execution-space``; bypassed are only the per-device memo around the arch flag (it asks the
    driver for the current device) and ``CUPY_COMPILE_WITH_PTX``, so NVRTC always emits SASS for ``arch``."""
    source = job.source
    if job.prepend_cupy_headers:
        source = "".join(f"#include <{header}>\n" for header in core._cupy_header_list) + source
    options = core.assemble_cupy_compiler_options(tuple(job.options)) + CUPY_CACHE_OPTIONS
    arch_flag = compiler._get_arch_for_options_for_nvrtc.__wrapped__
    with (
        mock.patch.object(compiler, "_get_arch_for_options_for_nvrtc", arch_flag),
        mock.patch.object(compiler, "_use_ptx", False),
    ):
        return compiler._compile_using_nvrtc_no_warning(source, options, arch, filename, job.name_expressions)


def _cubin_sm(cubin: bytes) -> int:
    """The SM a cubin holds code for, from its ELF header: the low byte of e_flags, or the next byte from CUDA's ELF
    ABI version 8 (which NVRTC 12.9 and newer write for sm_100 and later)."""
    assert cubin[:5] == b"\x7fELF\x02", f"NVRTC returned no 64-bit cubin: {cubin[:16]!r}"
    (flags,) = struct.unpack_from("<I", cubin, 48)
    return (flags >> 8) & 0xFF if cubin[8] >= 8 else flags & 0xFF


def _compile_and_check(job: CompileJob, arch: str, filename: str) -> None:
    """Compile, then check the cubin is SASS for ``arch`` and holds every symbol the launcher will look up."""
    cubin, mapping = _nvrtc_compile(job, arch, filename)
    assert _cubin_sm(cubin) == int(arch)
    symbols = job.symbols + tuple((mapping or {}).values())
    missing = [symbol for symbol in symbols if f"\0{symbol}\0".encode() not in cubin]
    assert not missing, f'kernels {missing} are not in the cubin (C++ name mangling? extern "C" missing?)'


def test_the_kernel_module_imports_and_has_every_kind() -> None:
    assert not IMPORT_ERROR, f"import {KERNEL_MODULE} failed:\n{IMPORT_ERROR}"
    kinds = {type(kernel) for kernel in KERNELS.values()}
    assert cupy.RawKernel in kinds and cupy.ElementwiseKernel in kinds, sorted(KERNELS)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda arch: f"sm_{arch}")
@pytest.mark.parametrize(("label", "layout"), list(_kernel_cases()))
def test_kernel_compiles(label: str, layout: str, arch: str) -> None:
    assert label, f"no CUDA kernels found in {KERNEL_MODULE}:\n{IMPORT_ERROR}"
    _compile_and_check(_compile_job(KERNELS[label], layout), arch, f"{label}.cu")


@pytest.mark.parametrize("arch", ARCHS, ids=lambda arch: f"sm_{arch}")
def test_broken_kernels_fail_to_compile(arch: str) -> None:
    """Negative controls: the checks above can fail, for raw and for generated elementwise sources."""
    raw = cupy.RawKernel('extern "C" __global__ void broken(int* y) { y[0] = no_such_value; }', "broken")
    with pytest.raises(compiler.CompileException, match="no_such_value"):
        _compile_and_check(_compile_job(raw, "as-written"), arch, "broken.cu")
    elementwise = cupy.ElementwiseKernel("float32 x", "int8 q", "q = no_such_function(x)", "broken_elementwise")
    with pytest.raises(compiler.CompileException, match="no_such_function"):
        _compile_and_check(_compile_job(elementwise, "contiguous"), arch, "broken_elementwise.cu")
    mangled = cupy.RawKernel("__global__ void mangled(int* y) { y[0] = 1; }", "mangled")
    with pytest.raises(AssertionError, match="not in the cubin"):
        _compile_and_check(_compile_job(mangled, "as-written"), arch, "mangled.cu")


def test_the_architecture_reaches_nvrtc() -> None:
    """A kernel that refuses to compile below sm_90 compiles for sm_90 only: the arch flag is really applied."""
    source = '#if __CUDA_ARCH__ < 900\n#error "needs sm_90"\n#endif\nextern "C" __global__ void hopper(int* y) {}\n'
    job = _compile_job(cupy.RawKernel(source, "hopper"), "as-written")
    _compile_and_check(job, "90", "hopper.cu")
    with pytest.raises(compiler.CompileException, match="needs sm_90"):
        _compile_and_check(job, "75", "hopper.cu")


def test_the_replicated_cupy_options_are_still_cupys() -> None:
    """CUPY_CACHE_OPTIONS is copied from CuPy's cache step; fail if that step no longer adds them."""
    cache_step = inspect.getsource(compiler._compile_with_cache_cuda)
    for option in CUPY_CACHE_OPTIONS:
        assert f"options += ({option!r},)" in cache_step, option

"""Every graph runs with one BLAS thread, whatever the machine, the worker count or the caller's setting.

Multi-threaded OpenBLAS splits some float32 products differently by thread count, and their sums
then differ in the last bits (measured on SkylakeX, OpenBLAS 0.3.31: ``(64, 1000) @ (1000, 1000)``
and ``(64, 2000) @ (2000, 100)`` change between 1, 2 and 4 threads, ``(64, 1280) @ (1280, 1000)``
does not). An embedded cluster shared the cores between its workers' BLAS pools, so one worker ran
two threads and two workers one each: the FP32 activations, their histograms and the thresholds
followed ``--workers``. Fixing the count makes them a function of the data alone; parallelism comes
from the workers (one process per core by default), not from threads inside one product.

OpenBLAS has one thread count per process, and a Dask worker runs tasks on several threads, so the
count is held by reference: the first graph to start sets it, the last to finish restores the
caller's. It is set with ``openblas_set_num_threads_local``: ``openblas_set_num_threads`` (what
threadpoolctl calls) is ignored when called from a thread other than the main one once the main
thread has set a count (measured, OpenBLAS 0.3.31), and Dask runs tasks off the main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Iterator

from threadpoolctl import ThreadpoolController

BLAS_THREADS = 1
OPENBLAS_SETTER = "openblas_set_num_threads_local"

ThreadCountSetter = Callable[[int], int]


class BlasThreadsError(RuntimeError):
    """A BLAS library whose thread count int8flow cannot fix is loaded and runs several threads."""


def _setters() -> tuple[ThreadCountSetter, ...]:
    """Setters (new count -> previous count) of the BLAS libraries loaded now (a library loaded later, such
    as SciPy's own OpenBLAS, is found the next time the count is taken)."""
    setters = []
    for library in ThreadpoolController().select(user_api="blas").lib_controllers:
        setter = getattr(library.dynlib, OPENBLAS_SETTER, None) if library.internal_api == "openblas" else None
        if setter is not None:
            setter.restype = ctypes.c_int
            setter.argtypes = [ctypes.c_int]
            setters.append(setter)
        elif library.num_threads != BLAS_THREADS:
            raise BlasThreadsError(
                f"the BLAS library {library.filepath} ({library.internal_api} {library.version}) runs "
                f"{library.num_threads} threads and int8flow cannot set its count at run time, so results would "
                "depend on the thread count; start the workers with its thread count set to 1 (OMP_NUM_THREADS=1, "
                "MKL_NUM_THREADS=1 or OPENBLAS_NUM_THREADS=1), or use NumPy's PyPI wheels (OpenBLAS 0.3.27 or later)"
            )
    return tuple(setters)


class _ProcessWideCount:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0
        self.previous: list[tuple[ThreadCountSetter, int]] = []

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self.lock:
            if self.holders == 0:
                self.previous = [(setter, setter(BLAS_THREADS)) for setter in _setters()]
            self.holders += 1
        try:
            yield
        finally:
            with self.lock:
                self.holders -= 1
                if self.holders == 0:
                    for setter, count in self.previous:
                        setter(count)


_COUNT = _ProcessWideCount()


def fixed_blas_threads() -> contextlib.AbstractContextManager[None]:
    """A block in which BLAS runs ``BLAS_THREADS`` threads; several threads may be inside at once."""
    return _COUNT.held()

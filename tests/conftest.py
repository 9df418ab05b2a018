"""Shared fixtures: real activations-like data, seeded so every failure reproduces."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import fsspec
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

REQUIRE_GPU_VARIABLE = "INT8FLOW_REQUIRE_GPU"
"""Set to 1 (``make test-gpu`` does), a session that skips any test or collects none fails: on a GPU
machine a skip means a GPU path went untested (CuPy not importable, no device visible, ...)."""

DEMO_MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "fashion_mnist_resnet.onnx"
EFFICIENTNET_MODEL = Path(__file__).resolve().parents[1] / "models" / "efficientnet_lite0.onnx"  # make models
X86 = platform.machine().lower() in ("x86_64", "amd64")
on_x86 = pytest.mark.skipif(not X86, reason="onnxruntime's integer kernels round like int8flow's on x86 only")
"""The committed Fashion-MNIST ResNet, the model of ``make demo``."""


def flags(options: Mapping[str, object]) -> list[str]:
    """Run settings as ``int8flow run`` flags: ``{"calib_examples": 128}`` -> ``["--calib-examples=128"]``,
    ``{"rank_sensitivity": True}`` -> ``["--rank-sensitivity"]``."""
    return [f"--{name.replace('_', '-')}" + ("" if value is True else f"={value}") for name, value in options.items()]


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


@pytest.fixture(scope="module")
def external_dask_scheduler() -> Iterator[str]:
    """A separate Dask cluster, as production runs one: ``dask scheduler`` and one ``dask worker``
    process started from the command line; yields the scheduler address, stops both afterwards."""
    from distributed import Client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"], **quiet
        ),
        subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard"], **quiet),
    ]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    if client.scheduler_info()["workers"]:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no Dask worker joined {address} within 60 s"
            time.sleep(0.5)
        yield address
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def _require_gpu() -> bool:
    return os.environ.get(REQUIRE_GPU_VARIABLE, "") not in ("", "0")


_skipped: list[tuple[str, str]] = []
"""(test id or collected file, reason) of every skip in this session, for the INT8FLOW_REQUIRE_GPU check."""
_require_gpu_failures: list[str] = []
"""The lines that say why INT8FLOW_REQUIRE_GPU failed the session, printed in the terminal summary."""


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is reported as skipped too
        _skipped.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped (pytest.importorskip, skip(allow_module_level=True))
        _skipped.append((report.nodeid or "<collection>", _skip_reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With INT8FLOW_REQUIRE_GPU=1 a skipped test, or a session that collected none, fails the run."""
    if not _require_gpu():
        return
    if session.testscollected == 0:
        _require_gpu_failures.append(
            f"{REQUIRE_GPU_VARIABLE}=1: no test was collected; a GPU run that tests nothing fails"
        )
    if _skipped:
        _require_gpu_failures.append(
            f"{REQUIRE_GPU_VARIABLE}=1: {len(_skipped)} test(s) skipped; a GPU run that skips anything fails:"
        )
        _require_gpu_failures.extend(f"  SKIPPED {nodeid}: {reason}" for nodeid, reason in _skipped)
    if _require_gpu_failures and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _require_gpu_failures:
        terminalreporter.write_line(line, red=True, bold=not line.startswith(" "))

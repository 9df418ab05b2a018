"""INT8FLOW_REQUIRE_GPU=1 (``make test-gpu``) turns every skip, and an empty selection, into a failure.

The GPU tests run in a pytest subprocess: here they skip (no GPU), which must fail the session with
the variable and pass it without. Runs with the CPU tests; not marked ``gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REQUIRE_GPU_VARIABLE

from int8flow.kernels.backend import gpu_available

ROOT = Path(__file__).resolve().parents[1]
GPU_TESTS = "tests/test_gpu_kernels.py"  # the smallest GPU test file: 14 tests, no model, no data


def run_pytest(*arguments: str, require_gpu: bool) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != REQUIRE_GPU_VARIABLE}
    if require_gpu:
        env[REQUIRE_GPU_VARIABLE] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(gpu_available(), reason="with a usable GPU the GPU tests run instead of skipping")
def test_skipped_gpu_tests_fail_the_session_and_are_named() -> None:
    result = run_pytest(GPU_TESTS, require_gpu=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{REQUIRE_GPU_VARIABLE}=1: 14 test(s) skipped; a GPU run that skips anything fails" in output
    assert f"SKIPPED {GPU_TESTS}::test_gpu_backend_is_cupy: needs a CUDA GPU and CuPy" in output
    assert f"SKIPPED {GPU_TESTS}::test_thresholds_on_the_gpu_equal_the_cpu_ones[entropy]:" in output


def test_without_the_variable_skips_pass() -> None:
    result = run_pytest(GPU_TESTS, require_gpu=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert REQUIRE_GPU_VARIABLE not in result.stdout


def test_an_empty_selection_fails_the_session() -> None:
    result = run_pytest("-k", "no_test_has_this_name", GPU_TESTS, require_gpu=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{REQUIRE_GPU_VARIABLE}=1: no test was collected; a GPU run that tests nothing fails" in output

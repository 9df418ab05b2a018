"""Which embedded cluster a run starts: CUDA workers are spawned (CUDA does not survive a fork once
the parent used it) and GPUs are counted through NVML, which opens no CUDA context; and how much
it logs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from int8flow.kernels.backend import BackendUnavailableError
from int8flow.tasks.distributed.cluster import (
    CPU_CLUSTER,
    CUDA_CLUSTER,
    DASK_LOG_LEVEL_VARIABLE,
    choose_embedded_cluster,
    dask_log_level,
    nvml_gpu_count,
)


@pytest.mark.parametrize(
    ("device", "gpus", "dask_cuda", "expected"),
    [
        ("cpu", 8, True, CPU_CLUSTER),
        ("auto", 2, True, CUDA_CLUSTER),
        ("gpu", 1, True, CUDA_CLUSTER),
        ("auto", 0, True, CPU_CLUSTER),
        ("auto", 4, False, CPU_CLUSTER),
    ],
)
def test_the_cluster_follows_the_device_and_what_the_machine_has(device, gpus, dask_cuda, expected) -> None:
    assert choose_embedded_cluster(device, gpus, dask_cuda) == expected


def test_cuda_workers_are_spawned_and_cpu_workers_forked() -> None:
    assert (CUDA_CLUSTER.kind, CUDA_CLUSTER.start_method) == ("LocalCUDACluster", "spawn")
    assert (CPU_CLUSTER.kind, CPU_CLUSTER.start_method) == ("LocalCluster", "fork")


@pytest.mark.parametrize(("gpus", "dask_cuda", "reason"), [(0, True, "NVML sees no GPU"), (2, False, "dask-cuda")])
def test_device_gpu_without_gpu_workers_is_refused(gpus: int, dask_cuda: bool, reason: str) -> None:
    with pytest.raises(BackendUnavailableError, match=reason) as raised:
        choose_embedded_cluster("gpu", gpus, dask_cuda)
    assert "--device cpu" in str(raised.value)


def test_nvml_counts_no_gpu_on_a_machine_without_a_driver() -> None:
    assert nvml_gpu_count() == 0


LOGGING_RUN = """
import logging
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")  # as Airflow's task log
from int8flow.tasks.distributed.cluster import dask_client
with dask_client(workers=1) as (client, _):
    assert client.submit(sum, [1, 2]).result() == 3
"""


def _dask_log_lines(level: str | None) -> list[str]:
    env = {key: value for key, value in os.environ.items() if key != DASK_LOG_LEVEL_VARIABLE}
    if level is not None:
        env[DASK_LOG_LEVEL_VARIABLE] = level
    done = subprocess.run([sys.executable, "-c", LOGGING_RUN], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if line.startswith("distributed")]


def test_an_embedded_cluster_logs_at_warning_unless_asked_for_more() -> None:
    assert _dask_log_lines(None) == []  # scheduler and worker start-up, task by task: nothing
    assert any(" INFO " in line for line in _dask_log_lines("info"))


def test_a_dask_log_level_that_is_not_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DASK_LOG_LEVEL_VARIABLE, "chatty")
    with pytest.raises(ValueError, match="INT8FLOW_DASK_LOG_LEVEL='CHATTY' is not a logging level"):
        dask_log_level()

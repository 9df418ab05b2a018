"""Which embedded cluster a run starts: CUDA workers are spawned (CUDA does not survive a fork once
the parent used it) and GPUs are counted through NVML, which opens no CUDA context."""

from __future__ import annotations

import pytest

from int8flow.kernels.backend import BackendUnavailableError
from int8flow.tasks.distributed.cluster import (
    CPU_CLUSTER,
    CUDA_CLUSTER,
    choose_embedded_cluster,
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

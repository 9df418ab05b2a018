"""The Dask cluster a run fans out over: an existing scheduler, or one started for the run.

CPU clusters start their worker processes with ``fork``: under Airflow's real executor a spawned
worker re-imports the Airflow CLI, which refuses the task supervisor's blocked database URL
(STACK.md), and forking is also faster. GPUs get dask-cuda's ``LocalCUDACluster`` (one worker per
GPU) with ``spawn``: CUDA does not survive a fork once the parent has touched it, so the parent
counts GPUs through NVML, as dask-cuda does, never through a CUDA context.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import dask
from distributed import Client, LocalCluster

from int8flow.kernels.backend import BackendUnavailableError
from int8flow.schemas.stage_records import ClusterRecord

CONNECT_TIMEOUT_SECONDS = 10
DASK_LOG_LEVEL_VARIABLE = "INT8FLOW_DASK_LOG_LEVEL"
DEFAULT_DASK_LOG_LEVEL = "WARNING"
"""An embedded cluster's scheduler and workers log at WARNING: at INFO, Dask writes some 80 lines per
task into a run's log (Airflow's above all). ``INT8FLOW_DASK_LOG_LEVEL=INFO`` asks for them back."""


class ClusterUnavailableError(RuntimeError):
    """The scheduler could not be reached: transient for an orchestrator, so worth a retry."""


def default_worker_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_task(client: Client) -> int:
    """The intra-op threads each task may run: a host's cores shared among the Dask threads on it (the
    tasks it runs at once), the smallest share of any host, so no host runs more threads than cores."""
    cores = client.run(default_worker_count)
    workers = client.scheduler_info(n_workers=-1)["workers"]
    threads_on_host: Counter[str] = Counter()
    for info in workers.values():
        threads_on_host[info["host"]] += info["nthreads"]
    return max(1, min(cores[address] // threads_on_host[info["host"]] for address, info in workers.items()))


@contextlib.contextmanager
def dask_client(scheduler: str = "", workers: int = 0, device: str = "auto") -> Iterator[tuple[Client, ClusterRecord]]:
    """A client of ``scheduler``, or of an embedded cluster that lives as long as the block."""
    if scheduler:
        client = _connect(scheduler)
        try:
            yield client, _info(client, "external")
        finally:
            client.close()
        return
    with _embedded_cluster(workers, device) as (cluster, kind), Client(cluster) as client:
        yield client, _info(client, kind)


def _connect(address: str) -> Client:
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, TimeoutError) as error:
        raise ClusterUnavailableError(
            f"Dask scheduler {address} did not answer within {CONNECT_TIMEOUT_SECONDS} s ({type(error).__name__}); "
            "check the address and that the scheduler is running, or leave --scheduler empty for an embedded cluster"
        ) from None


class TaskFailuresReportedByTheClient(logging.Filter):
    """Drops a worker's "Compute Failed" record and the cancellations that follow it.

    Without it, every bad input found on a worker (a label out of range, an image that does not
    decode) prints the worker's traceback on the user's terminal above the one-line error the client
    re-raises, and the tasks cancelled when the client then closes print an "Async instruction ...
    ended with CancelledError" warning each. Forked workers inherit the filter from the process that
    starts the embedded cluster.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Compute Failed") or message.endswith("ended with CancelledError"))


QUIETED_LOGGERS = ("distributed.worker", "distributed.worker.state_machine")


def _quiet_task_failures() -> None:
    for name in QUIETED_LOGGERS:
        worker_log = logging.getLogger(name)
        if not any(isinstance(existing, TaskFailuresReportedByTheClient) for existing in worker_log.filters):
            worker_log.addFilter(TaskFailuresReportedByTheClient())


@dataclass(frozen=True)
class EmbeddedCluster:
    """Which local cluster a run starts, and how its worker processes start."""

    kind: str
    start_method: str


CPU_CLUSTER = EmbeddedCluster("LocalCluster", "fork")
CUDA_CLUSTER = EmbeddedCluster("LocalCUDACluster", "spawn")


def choose_embedded_cluster(device: str, gpu_count: int, has_dask_cuda: bool) -> EmbeddedCluster:
    """The cluster for ``--device``: CUDA workers (spawned) when GPUs and dask-cuda are there, CPU
    workers (forked) for ``cpu`` or an ``auto`` that finds no GPU, and a clear refusal for ``gpu``."""
    if device == "cpu":
        return CPU_CLUSTER
    if gpu_count > 0 and has_dask_cuda:
        return CUDA_CLUSTER
    if device == "gpu":
        missing = "NVML sees no GPU" if gpu_count == 0 else "dask-cuda is not installed"
        raise BackendUnavailableError(
            f"--device gpu: {missing}, so no GPU workers can start; install the 'gpu' extra on a machine "
            "with an NVIDIA driver, or pass --device cpu (or auto)"
        )
    return CPU_CLUSTER


def nvml_gpu_count() -> int:
    """GPUs the NVIDIA driver reports, through NVML: unlike a CUDA call, this creates no CUDA context,
    so worker processes started afterwards can still use CUDA. 0 where NVML is missing or fails."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def dask_log_level() -> str:
    """The level of the embedded cluster's ``distributed`` loggers, checked so a typo is named."""
    level = os.environ.get(DASK_LOG_LEVEL_VARIABLE, DEFAULT_DASK_LOG_LEVEL).upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError(
            f"{DASK_LOG_LEVEL_VARIABLE}={level!r} is not a logging level: use DEBUG, INFO, WARNING or ERROR"
        )
    return level


@contextlib.contextmanager
def _embedded_cluster(workers: int, device: str) -> Iterator[tuple[LocalCluster, str]]:
    _quiet_task_failures()
    level = dask_log_level()
    logging.getLogger("distributed").setLevel(level)  # forked workers inherit it; spawned ones read the config
    choice = choose_embedded_cluster(device, nvml_gpu_count() if device != "cpu" else 0, _has_dask_cuda())
    settings = {"distributed.worker.multiprocessing-method": choice.start_method, "logging.distributed": level}
    with dask.config.set(settings):
        if choice is CUDA_CLUSTER:
            from dask_cuda import LocalCUDACluster

            with LocalCUDACluster(n_workers=workers or None, dashboard_address=":0") as cluster:
                yield cluster, choice.kind
            return
        with LocalCluster(
            n_workers=workers or default_worker_count(),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        ) as cluster:
            yield cluster, choice.kind


def _has_dask_cuda() -> bool:
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def _info(client: Client, kind: str) -> ClusterRecord:
    return ClusterRecord(
        scheduler=client.scheduler.address,
        dashboard=client.dashboard_link,
        workers=len(client.scheduler_info(n_workers=-1)["workers"]),
        kind=kind,
    )

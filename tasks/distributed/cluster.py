"""The Dask cluster a run fans out over: an existing scheduler, or one started for the run.

Embedded clusters start their worker processes with ``fork``: under Airflow's real executor a
spawned worker re-imports the Airflow CLI, which refuses the task supervisor's blocked database
URL (STACK.md), and forking is also faster. GPUs get dask-cuda's ``LocalCUDACluster`` (one worker
per GPU) when dask-cuda is installed and CUDA is usable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

from int8flow.kernels.backend import gpu_available
from int8flow.schemas.stage_records import ClusterRecord

CONNECT_TIMEOUT_SECONDS = 10


class ClusterUnavailableError(RuntimeError):
    """The scheduler could not be reached: transient for an orchestrator, so worth a retry."""


def default_worker_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


@contextlib.contextmanager
def _embedded_cluster(workers: int, device: str) -> Iterator[tuple[LocalCluster, str]]:
    _quiet_task_failures()
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        if device != "cpu" and gpu_available() and _has_dask_cuda():
            from dask_cuda import LocalCUDACluster

            with LocalCUDACluster(n_workers=workers or None, dashboard_address=":0") as cluster:
                yield cluster, "LocalCUDACluster"
            return
        with LocalCluster(
            n_workers=workers or default_worker_count(),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        ) as cluster:
            yield cluster, "LocalCluster"


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

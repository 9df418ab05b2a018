"""Fanning shard jobs out over a Dask cluster and gathering their small results.

Results are gathered as they complete, so progress shows shards done and examples per second
while the slow ones still run; the returned list is in shard order, so nothing downstream depends
on completion order. A job that raises (bad input) cancels the others and re-raises here with its
own message: the user sees which file or tensor is wrong, not a Dask traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from distributed import Client, as_completed


class ProgressSink(Protocol):
    def __call__(self, stage: str, done: int, total: int, examples: int, seconds: float) -> None: ...


def quiet(stage: str, done: int, total: int, examples: int, seconds: float) -> None:
    """A progress sink that shows nothing (library use, tests)."""


JOB_UNITS = {"gate: sensitivity": "nodes", "choose": "tensor shares"}
"""What one job of a stage covers, where it is not a shard of the data: the sensitivity ranking
runs one candidate node per job, the ``auto`` method's choice one share of the tensors."""


def job_unit(stage: str) -> str:
    """The word for what ``done`` and ``total`` of a ``stage``'s progress count, for sinks that print it."""
    return JOB_UNITS.get(stage, "shards")


def run_shards(
    client: Client,
    stage: str,
    function: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    progress: ProgressSink = quiet,
) -> list[Any]:
    """``function(*job)`` for every job on the cluster; each result must have ``shard`` and ``examples``."""
    started = time.perf_counter()
    futures = [client.submit(function, *job, pure=False) for job in jobs]
    results: list[Any] = []
    progress(stage, 0, len(jobs), 0, 0.0)
    try:
        for future in as_completed(futures):
            results.append(future.result())
            examples = sum(result.examples for result in results)
            progress(stage, len(results), len(jobs), examples, time.perf_counter() - started)
    finally:
        client.cancel(futures)
    return sorted(results, key=lambda result: result.shard)

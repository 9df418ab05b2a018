"""The whole run, stage after stage, as ``int8flow run`` and the Python API execute it.

Nothing here computes: each line is a stage of ``int8flow.tasks.run.stages``, the report of
``int8flow.tasks.outputs.run_report`` or the MLflow logging of ``int8flow.tasks.tracking.run_logging``,
the same functions the Airflow tasks call one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from int8flow.schemas.run_config import RunConfig
from int8flow.schemas.stage_records import ClusterRecord
from int8flow.tasks.distributed.cluster import dask_client
from int8flow.tasks.distributed.fanout import ProgressSink, quiet
from int8flow.tasks.outputs.run_folder_lock import run_folder_lock
from int8flow.tasks.outputs.run_report import now, write_run_report
from int8flow.tasks.run import stages
from int8flow.tasks.run.plan import plan_run
from int8flow.tasks.tracking.run_logging import register, track


@dataclass(frozen=True)
class RunResult:
    """What a finished run left: its output folder, its report, its MLflow run and registered version."""

    out: str
    report: dict[str, Any]
    mlflow_run_id: str
    registered_version: str | None
    passed: bool


def run_pipeline(
    config: RunConfig,
    progress: ProgressSink = quiet,
    on_cluster: Callable[[ClusterRecord], None] = lambda info: None,
    cwd: str | None = None,
) -> RunResult:
    """Plan, calibrate, build, validate, gate, report, track and register: the ``int8flow run`` job."""
    started = now()
    with run_folder_lock(config.out):  # a second run given this --out waits, then finds it as a retry does
        out = plan_run(config, cwd).out
        with dask_client(config.scheduler, config.workers, config.device) as (client, info):
            on_cluster(info)
            stages.record_cluster(out, info)
            stages.observe(out, client, progress, config)
            stages.thresholds(out, client, progress, config)
            stages.correct(out, client, progress, config)
            stages.build(out, config)
            stages.validate(out, client, progress, config)
            gate = stages.gate(out, client, progress, config)
        report = write_run_report(out, started)
        run_id = track(out, config=config)
        registered = register(out, run_id, config) if gate.passed else None
    return RunResult(out, report, run_id, registered, gate.passed)

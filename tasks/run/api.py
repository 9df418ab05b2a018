"""The Python API: ``int8flow.run`` is ``int8flow run`` as a function, with the same settings.

Keyword arguments are the run settings of ``int8flow.schemas.run_config`` (the CLI options without
dashes, the Airflow form's fields), checked by the same rules with the same messages. A failed
accuracy gate is a result, not an exception: ``RunResult.passed`` is False and nothing is registered.
"""

from __future__ import annotations

import os
from typing import Any

from int8flow.schemas.run_config import RunConfig
from int8flow.tasks.distributed.fanout import ProgressSink, quiet
from int8flow.tasks.run.pipeline import RunResult, run_pipeline

__all__ = ["RunConfig", "RunResult", "run", "run_config"]


def run(
    model: str | os.PathLike[str],
    *,
    calib_data: str | os.PathLike[str],
    val_data: str | os.PathLike[str] | None = None,
    progress: ProgressSink = quiet,
    **settings: Any,
) -> RunResult:
    """Calibrate ``model`` on ``calib_data``, quantize, validate on ``val_data``, gate, track, register.

    ``settings`` are any other run settings (``method="percentile"``, ``max_top1_drop=0.5``,
    ``out="runs/resnet"``, ``register="resnet-int8"`` ...); an unknown name or a bad value raises
    ``RunConfigError`` naming it before anything runs. Paths may be ``pathlib.Path`` objects.
    """
    values = {"model": model, "calib_data": calib_data, "val_data": val_data, **settings}
    paths = {name: os.fspath(value) for name, value in values.items() if isinstance(value, os.PathLike)}
    return run_config(RunConfig.from_mapping({**values, **paths}), progress)


def run_config(config: RunConfig, progress: ProgressSink = quiet) -> RunResult:
    """Run a checked configuration (``RunConfig.from_mapping``), e.g. one loaded from a file."""
    return run_pipeline(config, progress)

"""int8flow: distributed, reproducible post-training INT8 quantization of ONNX CNNs.

The Python API is the ``int8flow run`` job as a function, with the same settings (one schema feeds
the CLI options, the Airflow trigger form, the MLflow params and these keyword arguments)::

    import int8flow

    result = int8flow.run("model.onnx", calib_data="calib/", val_data="val/", max_top1_drop=0.5)
    result.passed, result.report["accuracy"]["int8_top1"], result.mlflow_run_id

``int8flow.RunConfig.from_mapping({...})`` checks a configuration without running it, and
``int8flow.run_config(config)`` runs one. Names are loaded on first use, so ``import int8flow`` (and
importing ``int8flow.kernels`` on a worker) does not pull in Dask, MLflow or Airflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from int8flow.schemas.run_config import RunConfig, RunConfigError
    from int8flow.tasks.run.api import RunResult, run, run_config

__all__ = ["RunConfig", "RunConfigError", "RunResult", "run", "run_config"]

_HOMES = {
    "RunConfig": "int8flow.schemas.run_config",
    "RunConfigError": "int8flow.schemas.run_config",
    "RunResult": "int8flow.tasks.run.api",
    "run": "int8flow.tasks.run.api",
    "run_config": "int8flow.tasks.run.api",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'int8flow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

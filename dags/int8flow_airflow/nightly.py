"""The nightly model list: one ``int8_requantize`` run per production model.

The list is the Airflow Variable ``int8flow_nightly_models``, a JSON array with one object per model;
each object is the conf of that model's run (the trigger form's field names), and needs at least
``model`` and ``calib_data``::

    [
      {"model": "models:/resnet50-fp32@production", "calib_data": "/data/int8flow-data/imagenet-calib",
       "val_data": "/data/int8flow-data/imagenet-val", "preprocess": "imagenet-torch",
       "max_top1_drop": 1.0, "register": "resnet50-int8"}
    ]

Every entry is checked with the rules of the trigger form (the run-configuration schema) before anything is
triggered, so a typo
fails the nightly run at once, naming the entry, instead of one model's run later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from int8flow.schemas.run_config import RunConfig, RunConfigError
from int8flow_airflow.params import run_config_values, run_params

MODELS_VARIABLE = "int8flow_nightly_models"
SCHEDULE_ENV = "INT8FLOW_NIGHTLY_SCHEDULE"
DEFAULT_SCHEDULE = "0 2 * * *"
REQUIRED = ("model", "calib_data")


class NightlyModelsError(ValueError):
    """The nightly model list is missing, not JSON, or one of its entries is not a valid run conf."""


def nightly_schedule(environ: Mapping[str, str] = os.environ) -> str:
    """Cron expression (UTC) of the nightly runs: ``$INT8FLOW_NIGHTLY_SCHEDULE``, default 02:00."""
    return environ.get(SCHEDULE_ENV) or DEFAULT_SCHEDULE


def nightly_runs(entries: Any, nightly_run_id: str) -> list[dict[str, Any]]:
    """``TriggerDagRunOperator`` kwargs for every entry, once all are valid.

    Each run's id is ``nightly__<time of the nightly run>__<model name>``, so the runs of one night are
    easy to find and a retried trigger cannot start a second run of the same model that night.
    """
    if entries is None:
        raise NightlyModelsError(
            f"Airflow Variable {MODELS_VARIABLE} is not set; set it to a JSON list of run confs, e.g. "
            f'airflow variables set {MODELS_VARIABLE} \'[{{"model": "...", "calib_data": "..."}}]\''
        )
    if not isinstance(entries, list):
        raise NightlyModelsError(f"{MODELS_VARIABLE} must be a JSON list of objects, not {type(entries).__name__}")
    defaults = {name: param.value for name, param in run_params().items()}
    # "nightly__<when>": a manual run may not use the "scheduled__" prefix of the nightly run itself
    prefix = "nightly__" + nightly_run_id.split("__", 1)[-1]
    problems, runs, seen = [], [], {}
    for index, entry in enumerate(entries):
        where = f"{MODELS_VARIABLE}[{index}]"
        try:
            if not isinstance(entry, dict):
                raise RunConfigError(f"expected an object of run settings, got {type(entry).__name__}")
            missing = [name for name in REQUIRED if not entry.get(name)]
            if missing:
                raise RunConfigError(f"missing {', '.join(missing)}")
            # the form's rules (type, choices, bounds), in the schema's words; unknown names refused
            RunConfig.from_mapping(run_config_values({**defaults, **entry}, out="nightly-check"))
        except RunConfigError as error:
            problems.append(f"{where}: {error}")
            continue
        if entry["model"] in seen:
            problems.append(
                f"{where}: model {entry['model']} is already {MODELS_VARIABLE}[{seen[entry['model']]}]; "
                "one nightly run per model"
            )
            continue
        seen[entry["model"]] = index
        runs.append({"conf": entry, "trigger_run_id": f"{prefix}__{model_slug(entry['model'])}"})
    if problems:
        raise NightlyModelsError("invalid nightly model list, nothing triggered:\n" + "\n".join(problems))
    taken: dict[str, int] = {}
    for run in runs:  # two models with the same file name get -2, -3 ... so run ids stay unique
        count = taken[run["trigger_run_id"]] = taken.get(run["trigger_run_id"], 0) + 1
        if count > 1:
            run["trigger_run_id"] += f"-{count}"
    return runs


def model_slug(model_uri: str) -> str:
    """A short run-id-safe name of the model: registry name or file name without ``.onnx``."""
    if model_uri.startswith("models:/"):
        name = re.split(r"[/@]", model_uri.removeprefix("models:/"))[0]
    else:
        name = re.split(r"[?#]", model_uri)[0].rstrip("/").rsplit("/", 1)[-1].removesuffix(".onnx")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")[:64] or "model"

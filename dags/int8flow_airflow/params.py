"""The trigger form of ``int8_requantize``: one Airflow Param per run setting, made from the schema.

``int8flow.schemas.run_config.SETTINGS`` declares every setting once (type, default, bounds, choices, help,
section); this module turns each into a JSON-schema ``Param`` so the form, the CLI and MLflow can
never disagree. Only the defaults differ, and only where the deployment knows better:

- ``out`` is no form field: each DAG run writes to ``$INT8FLOW_RUNS_DIR/<dag_id>/<run_id>``;
- ``scheduler`` / ``tracking_uri`` default to the deployment's Dask scheduler and MLflow server
  (``INT8FLOW_DASK_SCHEDULER``, ``MLFLOW_TRACKING_URI``);
- ``model``, ``calib_data``, ``val_data`` and ``preprocess`` default to the bundled Fashion-MNIST
  demo, so the form as it opens is a run that works.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk import Param

from int8flow.schemas.run_config import SETTINGS, SETTINGS_BY_NAME, RunConfigError, Setting
from int8flow.tasks.data.mnist_idx import FASHION_MNIST_FOLDER
from int8flow.tasks.tracking.store_uri import default_tracking_uri

NOT_FORM_FIELDS = frozenset({"out"})
"""Settings the DAG fixes itself: one output directory per DAG run, so retries find their outputs."""

DEMO_MODEL = Path(__file__).resolve().parents[2] / "examples" / "models" / "fashion_mnist_resnet.onnx"
"""The bundled demo model, beside the DAG folder in a checkout (``make airflow``)."""

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}
_TITLE_WORDS = {"calib": "calibration", "val": "validation", "num": "number of", "top1": "top-1", "uri": "URI"}


def airflow_home(environ: Mapping[str, str] = os.environ) -> str:
    """``$AIRFLOW_HOME``, or ``~/airflow`` as Airflow itself defaults it."""
    return environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")


def runs_dir(environ: Mapping[str, str] = os.environ) -> str:
    """Where DAG runs write: ``$INT8FLOW_RUNS_DIR`` (a path or fsspec URL shared with the Dask workers)."""
    return (environ.get("INT8FLOW_RUNS_DIR") or f"{airflow_home(environ)}/int8flow-runs").rstrip("/")


def run_output_dir(dag_id: str, run_id: str, environ: Mapping[str, str] = os.environ) -> str:
    return f"{runs_dir(environ)}/{dag_id}/{run_id}"


def mlflow_ui_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """Where users reach the MLflow UI, ``$INT8FLOW_MLFLOW_UI_URL``, when the tracking URI is an address
    only the tasks reach (a compose service name); None: the tracking URI, when it is a server's."""
    return environ.get("INT8FLOW_MLFLOW_UI_URL") or None


def form_defaults(environ: Mapping[str, str] = os.environ) -> dict[str, tuple[Any, str]]:
    """Defaults that differ from the schema's, each with the note the form shows under the field."""
    tracking = environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(airflow_home(environ))
    return {
        "model": (str(DEMO_MODEL), "The form starts with the bundled Fashion-MNIST ResNet demo."),
        "calib_data": (f"{FASHION_MNIST_FOLDER}#train", "The form starts with the Fashion-MNIST training split."),
        "val_data": (
            f"{FASHION_MNIST_FOLDER}#t10k",
            "The form starts with the Fashion-MNIST test split; clear it to skip.",
        ),
        "preprocess": ("mnist", "The form starts with the demo model's preset."),
        "scheduler": (
            environ.get("INT8FLOW_DASK_SCHEDULER", ""),
            "Default: $INT8FLOW_DASK_SCHEDULER of the Airflow deployment.",
        ),
        "tracking_uri": (
            tracking,
            "Default: $MLFLOW_TRACKING_URI, else sqlite:///$AIRFLOW_HOME/mlflow.db; "
            "Airflow runs work in $AIRFLOW_HOME.",
        ),
    }


def run_params(environ: Mapping[str, str] = os.environ) -> dict[str, Param]:
    """One Param per setting (but ``out``), in the schema's order, grouped by its section."""
    overrides = form_defaults(environ)
    params = {}
    for setting in SETTINGS:
        if setting.name in NOT_FORM_FIELDS:
            continue
        default, note = overrides.get(setting.name, (setting.default, ""))
        params[setting.name] = setting_param(setting, default, note)
    return params


def setting_param(setting: Setting, default: Any, note: str = "") -> Param:
    json_type = _JSON_TYPES[setting.kind]
    schema: dict[str, Any] = {
        "type": [json_type, "null"] if setting.nullable or empty_means_none(setting) else json_type,
        "title": title(setting.name),
        "section": setting.section.capitalize(),
    }
    if setting.kind is list:
        schema["items"] = {"type": "string"}
        default = list(default)
    if setting.choices is not None:
        schema["enum"] = [*setting.choices, *([None] if setting.nullable else [])]
    if bounds := setting_bounds(setting):
        schema["allOf"] = [{"title": schema["title"], **bounds}]  # the refusal prints this part: the field's title
    if setting.pattern is not None:
        schema["pattern"] = f"^({setting.pattern})$"  # JSON schema patterns match anywhere; ours match whole
    description = _sentence(setting.help) + (f" {note}" if note else "")
    return Param(default, description=description, **schema)


def setting_bounds(setting: Setting) -> dict[str, Any]:
    """The JSON-schema bounds of a number setting, which ``setting_param`` keeps out of the top level.

    The form's number widget takes a top-level ``minimum``/``maximum`` as limits and moves a value
    beyond one back inside (-5 calibration examples became 1) without a word. Inside ``allOf`` the
    widget leaves what was typed alone, and the trigger refuses it: Airflow validates the whole
    schema and the form shows the error, which names the param and the bound.
    """
    bounds: dict[str, Any] = {}
    if setting.minimum is not None:
        bounds["exclusiveMinimum" if setting.exclusive_minimum else "minimum"] = setting.minimum
    if setting.maximum is not None:
        bounds["maximum"] = setting.maximum
    return bounds


def empty_means_none(setting: Setting) -> bool:
    """Text settings whose empty default means "none" (no scheduler, no registration ...).

    The form sends an empty text field as null and marks a field invalid that its type does not
    allow to be null; these accept null, and ``run_config_values`` turns it back into "".
    """
    return setting.kind is str and setting.default == "" and not setting.nullable


_FLAG = re.compile(r"--(no-)?([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def form_words(text: str) -> str:
    """``text`` (an error message written for the CLI) with each setting's flag replaced by the
    title of its form field, quoted: the trigger form has fields, not flags. ``--no-x`` reads "X" off."""

    def field(match: re.Match[str]) -> str:
        setting = SETTINGS_BY_NAME.get(match.group(2).replace("-", "_"))
        if setting is None or setting.positional:
            return match.group(0)
        quoted = f'"{title(setting.name)}"'
        return f"{quoted} off" if match.group(1) else quoted

    return _FLAG.sub(field, text)


def title(name: str) -> str:
    words = " ".join(_TITLE_WORDS.get(word, word) for word in name.split("_"))
    return words[0].upper() + words[1:]


def run_config_values(params: Mapping[str, Any], out: str) -> dict[str, Any]:
    """The values ``RunConfig.from_mapping`` takes: the run's params plus the DAG's ``out``.

    Unknown names stay in, so ``from_mapping`` refuses a mistyped conf key by name. An empty text
    field (null) becomes "" where "" means none; integers sent as JSON numbers (``64.0``, which JSON
    schema counts as an integer) become ints.
    """
    if "out" in params:
        raise RunConfigError(
            "'out' cannot be set for a DAG run: each run writes to $INT8FLOW_RUNS_DIR/<dag_id>/<run_id>"
        )
    settings = {setting.name: setting for setting in SETTINGS}
    values = {name: _from_form(settings.get(name), value) for name, value in params.items()}
    values["out"] = out
    return values


def _from_form(setting: Setting | None, value: Any) -> Any:
    if setting is None:
        return value
    if value is None and empty_means_none(setting):
        return ""
    if setting.kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _sentence(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."

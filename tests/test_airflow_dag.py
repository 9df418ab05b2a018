"""The Airflow DAGs on a real Airflow (SQLite): they import cleanly, their Params are the run settings,
and `airflow dags test` runs the whole pipeline on Fashion-MNIST into MLflow, or stops at a failed gate.

Airflow reads its configuration when first imported, so the session fixture sets ``AIRFLOW_HOME``
(a fresh folder) before any test imports it; the runs themselves go through the ``airflow`` CLI.
The real executor (LocalExecutor under ``airflow standalone``) is tested in test_airflow_executor.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO_MODEL

from int8flow.schemas.metric_names import metric_key
from int8flow.schemas.run_config import SETTINGS, RunConfig, RunConfigError
from int8flow.tasks.data.mnist_idx import FASHION_MNIST_FOLDER

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
AIRFLOW = Path(sys.executable).parent / "airflow"
FASHION_MNIST = Path(FASHION_MNIST_FOLDER)
DAG_ID = "int8_requantize"
DAG_IDS = {DAG_ID, "int8_requantize_nightly"}
TASK_IDS = ["plan", "observe", "thresholds", "correct", "build", "validate", "gate", "report", "track", "register"]
SMALL_RUN = {"calib_examples": 256, "val_examples": 1000, "batch_size": 64, "workers": 2, "sensitivity_examples": 32}
EXPECTED_METRICS = {
    metric_key(name)
    for name in (
        "calib_seconds",
        "calib_examples_per_second",
        "calib_examples",
        "calib_skipped_images",
        "observe_seconds",
        "reduce_seconds",
        "thresholds_seconds",
        "correct_seconds",
        "build_seconds",
        "validate_seconds",
        "gate_seconds",
        "fp32_top1",
        "int8_top1",
        "deploy_int8_top1",
        "deploy_int8_top5",
        "deploy_top1_drop",
        "deploy_agreement_top1",
        "top1_drop",
        "fp32_top5",
        "int8_top5",
        "top5_drop",
        "agreement_top1",
        "val_examples",
        "gate_attempts",
        "validate_examples_per_second",
    )
}
"""MLflow keys: ``accuracy/int8_top1``, ``time/calib_seconds``, ... (``metric_names``)."""
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
)


def airflow_environment(home: Path) -> dict[str, str]:
    """What every Airflow process of these tests runs with: its own home, our DAG folder, no examples."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MLFLOW_TRACKING_URI", "INT8FLOW_DASK_SCHEDULER", "INT8FLOW_RUNS_DIR")
        and not key.startswith("AIRFLOW")
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "PATH": f"{AIRFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated Airflow home; this process's environment points at it while the session runs."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = airflow_environment(home)
    with pytest.MonkeyPatch.context() as patch:
        for key in set(os.environ) - set(env):
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        done = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield home


@pytest.fixture(scope="session")
def dag_bag(airflow_home: Path) -> Any:
    """The DAG folder as the DAG processor parses it (bundle root on sys.path), warnings recorded."""
    from airflow.dag_processing.dagbag import BundleDagBag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
    bag.warnings_caught = [warning for warning in caught if _ours(warning.filename)]
    return bag


@pytest.fixture(scope="session")
def dag(dag_bag: Any) -> Any:
    return dag_bag.dags[DAG_ID]


def _ours(filename: str) -> bool:
    path = Path(filename).resolve()
    return any(path.is_relative_to(REPO / folder) for folder in ("dags", "int8flow", "tasks", "schemas", "kernels"))


def test_dag_folder_imports_without_errors_or_warnings_of_ours(dag_bag: Any) -> None:
    assert dag_bag.import_errors == {}
    assert dag_bag.captured_warnings == {}
    assert [str(warning.message) for warning in dag_bag.warnings_caught] == []
    assert set(dag_bag.dags) == DAG_IDS


def test_the_tasks_are_the_pipeline_stages_in_order(dag: Any) -> None:
    order = [task.task_id for task in dag.topological_sort()]
    assert order == TASK_IDS
    assert dag.schedule is None and dag.catchup is False
    gate = dag.get_task("gate")
    assert gate.retries == 3 and gate.retry_exponential_backoff == 2.0


def test_the_tasks_that_log_an_mlflow_run_have_its_link_after_serialization(dag: Any) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))  # what the UI reads the links from
    linked = {task.task_id: task.extra_links for task in scheduled.tasks if task.extra_links}
    assert linked == {"gate": ["MLflow run"], "track": ["MLflow run"]}


def test_params_are_the_run_settings_but_out_in_schema_order(dag: Any) -> None:
    assert list(dag.params) == [setting.name for setting in SETTINGS if setting.name != "out"]


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.name != "out"], ids=lambda s: s.name)
def test_each_param_has_its_settings_type_choices_bounds_and_words(dag: Any, setting: Any) -> None:
    param = dag.params.get_param(setting.name)
    schema = param.schema
    json_type = JSON_TYPES[setting.kind]
    empty_is_none = setting.kind is str and setting.default == ""  # the form sends an empty field as null
    assert schema["type"] == ([json_type, "null"] if setting.nullable or empty_is_none else json_type)
    assert schema.get("enum") == (None if setting.choices is None else list(setting.choices))
    bound = "exclusiveMinimum" if setting.exclusive_minimum else "minimum"
    bounds = {bound: setting.minimum, "maximum": setting.maximum}
    assert not bounds.keys() & schema.keys()  # the form's number widget would clamp to a top-level bound
    (within,) = schema.get("allOf", [{}])
    assert {key: within.get(key) for key in bounds} == bounds
    assert schema["section"] == setting.section.capitalize()
    assert schema["title"] and param.description.startswith(setting.help[0].upper() + setting.help[1:])


def test_every_param_accepts_its_default(dag: Any) -> None:
    for name, param in dag.params.items():
        assert copy.copy(param).resolve() == param.value, name


def test_the_form_defaults_are_a_run_that_configures(dag: Any, airflow_home: Path) -> None:
    values = {name: param.value for name, param in dag.params.items()}
    config = RunConfig.from_mapping({**values, "out": str(airflow_home / "check")})
    assert (config.model, config.calib_data, config.val_data) == (
        str(DEMO_MODEL),
        f"{FASHION_MNIST}#train",
        f"{FASHION_MNIST}#t10k",
    )
    assert (config.preprocess, config.scheduler, config.alias) == ("mnist", "", "int8-candidate")
    assert config.tracking_uri == f"sqlite:///{airflow_home.resolve()}/mlflow.db"


@pytest.mark.usefixtures("dag_bag")  # int8flow_airflow on sys.path, as the DAG processor puts it
def test_deployment_settings_come_from_the_environment() -> None:
    from int8flow_airflow.params import run_output_dir, run_params

    environ = {
        "AIRFLOW_HOME": "/opt/airflow",
        "INT8FLOW_DASK_SCHEDULER": "tcp://dask-scheduler:8786",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    }
    params = run_params(environ)
    assert params["scheduler"].value == "tcp://dask-scheduler:8786"
    assert params["tracking_uri"].value == "http://mlflow:5000"
    assert run_output_dir(DAG_ID, "manual__1", environ) == "/opt/airflow/int8flow-runs/int8_requantize/manual__1"
    environ["INT8FLOW_RUNS_DIR"] = "s3://bucket/runs/"
    assert run_output_dir(DAG_ID, "manual__1", environ) == "s3://bucket/runs/int8_requantize/manual__1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("method", "kl"),
        ("alias_policy", "best:speed"),
        ("num_bins", -8),
        ("num_bins", 1000),
        ("num_bins", "8192"),
        ("calib_examples", 0),
        ("calib_examples", -5),
        ("percentile", 0),
        ("percentile", 100.5),
        ("device", "tpu"),
        ("max_top1_drop", "1"),
        ("exclude", "Conv"),
        ("model", None),
    ],
)
def test_a_bad_value_fails_the_trigger_with_a_param_validation_error(dag: Any, name: str, value: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))  # what the scheduler validates with
    scheduled.params.deep_merge({}).validate()
    with pytest.raises(ParamValidationError, match=name):
        scheduled.params.deep_merge({name: value}).validate()


@pytest.mark.usefixtures("dag_bag")  # int8flow_airflow on sys.path, as the DAG processor puts it
def test_error_messages_name_the_forms_fields_not_cli_flags() -> None:
    from int8flow_airflow.params import form_words

    message = "raise --max-top1-drop, try another --method or --no-bias-correction; --unknown-flag; model x"
    assert form_words(message) == (
        'raise "Max top-1 drop", try another "Method" or "Bias correction" off; --unknown-flag; model x'
    )


def test_a_run_config_comes_from_the_params_and_the_dags_out() -> None:
    from int8flow_airflow.params import run_config_values

    form = {"model": "m.onnx", "calib_data": "d", "batch_size": 32.0, "register": None, "val_data": None}
    values = run_config_values(form, out="/runs/x")
    assert values == {
        "model": "m.onnx",
        "calib_data": "d",
        "batch_size": 32,
        "register": "",
        "val_data": None,
        "out": "/runs/x",
    }
    assert RunConfig.from_mapping(values).register == ""
    with pytest.raises(RunConfigError, match="'out' cannot be set"):
        run_config_values({"model": "m.onnx", "out": "/elsewhere"}, out="/runs/x")
    with pytest.raises(RunConfigError, match="unknown setting.*calib_exmples"):
        RunConfig.from_mapping(run_config_values({"model": "m", "calib_data": "d", "calib_exmples": 5}, out="o"))


@pytest.mark.usefixtures("dag_bag")  # int8flow_airflow on sys.path, as the DAG processor puts it
def test_the_nightly_list_becomes_one_named_run_per_model() -> None:
    from int8flow_airflow.nightly import nightly_runs

    entries = [
        {"model": "models:/resnet50-fp32@production", "calib_data": "/data/calib", "register": "resnet50-int8"},
        {"model": "/data/models/fashion.onnx", "calib_data": "/data/fm#train", "method": "percentile"},
    ]
    assert nightly_runs(entries, "scheduled__2026-07-02T02:00:00+00:00") == [
        {"conf": entries[0], "trigger_run_id": "nightly__2026-07-02T02:00:00+00:00__resnet50-fp32"},
        {"conf": entries[1], "trigger_run_id": "nightly__2026-07-02T02:00:00+00:00__fashion"},
    ]


@pytest.mark.usefixtures("dag_bag")  # int8flow_airflow on sys.path, as the DAG processor puts it
def test_a_bad_nightly_list_names_every_bad_entry_and_triggers_nothing() -> None:
    from int8flow_airflow.nightly import NightlyModelsError, nightly_runs

    entries = [
        {"model": "a.onnx"},
        {"model": "b.onnx", "calib_data": "d", "num_bins": 100},
        {"model": "c.onnx", "calib_data": "d", "methd": "mse"},
        {"model": "d.onnx", "calib_data": "d"},
        {"model": "d.onnx", "calib_data": "e"},
    ]
    with pytest.raises(NightlyModelsError) as raised:
        nightly_runs(entries, "scheduled__x")
    lines = str(raised.value).splitlines()[1:]
    assert [line.split(":")[0] for line in lines] == [f"int8flow_nightly_models[{i}]" for i in (0, 1, 2, 4)]
    assert "missing calib_data" in lines[0] and "choose one of" in lines[1] and "methd" in lines[2]
    with pytest.raises(NightlyModelsError, match="is not set"):
        nightly_runs(None, "scheduled__x")


# --- airflow dags test: the whole pipeline in one process ------------------------------------------


@dataclass(frozen=True)
class DagTest:
    run_id: str
    returncode: int
    output: str
    out: Path

    def states(self) -> dict[str, tuple[str, int]]:
        """task id -> (state, try number), from Airflow's database."""
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(
                select(TaskInstance.task_id, TaskInstance.state, TaskInstance.try_number).where(
                    TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == self.run_id
                )
            ).all()
        return {task_id: (str(state), try_number) for task_id, state, try_number in rows}


def dags_test(home: Path, conf: dict[str, Any]) -> DagTest:
    """Run the DAG with ``conf``; its output folder is named after the run (a run that fails at
    ``plan`` on bad input leaves none)."""
    done = subprocess.run(
        [str(AIRFLOW), "dags", "test", DAG_ID, "-c", json.dumps(conf)],
        env=airflow_environment(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    run_id = newest_run_id()
    return DagTest(run_id, done.returncode, done.stdout + done.stderr, home / "int8flow-runs" / DAG_ID / run_id)


def newest_run_id() -> str:
    """The run ``dags test`` just made: these tests run one DAG run at a time."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalars(select(DagRun.run_id).where(DagRun.dag_id == DAG_ID).order_by(DagRun.id.desc())).first()


def mlflow_client(home: Path) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{home.resolve()}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs_with_key(home: Path, run_key: str) -> list[Any]:
    client = mlflow_client(home)
    experiment = client.get_experiment_by_name("int8flow/fashion_mnist_resnet")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`int8flow.run_key` = '{run_key}'")


@pytest.fixture(scope="module")
def passed_run(airflow_home: Path) -> DagTest:
    conf = {**SMALL_RUN, "max_top1_drop": 1.0, "register": "fashion-int8-dagtest", "alias": "int8-ci"}
    return dags_test(airflow_home, conf)


@pytest.fixture(scope="module")
def failed_gate_run(airflow_home: Path) -> DagTest:
    conf = {
        "calib_examples": 64,
        "val_examples": 128,
        "batch_size": 32,
        "workers": 2,
        "sensitivity_examples": 16,
        "max_top1_drop": -1,
        "fallback_budget": 1,
        "register": "fashion-int8-gate-failed",
        "method": "auto",  # the thresholds task then starts its own cluster
    }
    return dags_test(airflow_home, conf)


@pytest.fixture(scope="module")
def bad_input_run(airflow_home: Path) -> DagTest:
    return dags_test(airflow_home, {**SMALL_RUN, "calib_data": str(airflow_home / "no-such-data")})


def traceback_lines(output: str) -> list[str]:
    """The lines of a printed traceback: its header and its frames."""
    return [line for line in output.splitlines() if line.startswith("Traceback") or line.startswith("  File ")]


@pytest.mark.slow
def test_bad_input_fails_plan_at_once_with_one_log_line_and_no_traceback(
    bad_input_run: DagTest, airflow_home: Path
) -> None:
    states = bad_input_run.states()
    assert bad_input_run.returncode != 0
    assert states["plan"] == ("failed", 1)  # FailedAtOnce: no retry
    assert {states[task][0] for task in TASK_IDS[1:]} == {"upstream_failed"}
    (line,) = [line for line in bad_input_run.output.splitlines() if "bad input" in line]
    assert "Task exited" in line and f"bad input, not retried: {airflow_home}/no-such-data: no such file" in line
    assert traceback_lines(bad_input_run.output) == []


@pytest.mark.slow
@needs_fashion_mnist
def test_dags_test_runs_every_stage_and_tracks_one_mlflow_run_matching_the_report(
    passed_run: DagTest, airflow_home: Path
) -> None:
    from int8flow.tasks.outputs.run_report import run_metrics

    assert passed_run.returncode == 0, passed_run.output[-5000:]
    assert passed_run.states() == {task_id: ("success", 1) for task_id in TASK_IDS}
    report = json.loads((passed_run.out / "report.json").read_text())
    (run,) = runs_with_key(airflow_home, f"{DAG_ID}/{passed_run.run_id}")
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) == EXPECTED_METRICS
    assert run.data.metrics == pytest.approx(run_metrics(report), rel=1e-12)
    accuracy = report["accuracy"]
    assert run.data.metrics["accuracy/fp32_top1"] == accuracy["fp32_top1"] == 93.6  # first 1000 of t10k, FP32
    assert run.data.metrics["count/val_examples"] == accuracy["examples"] == 1000
    assert run.data.metrics["count/calib_examples"] == 256
    assert accuracy["top1_drop"] <= 1.0 and report["gate"]["passed"]
    assert "out" not in run.data.params and "alias" not in run.data.params  # operational: tags
    assert run.data.tags["int8flow.setting.out"] == str(passed_run.out)
    assert run.data.tags["int8flow.setting.alias"] == "int8-ci"
    assert run.data.tags["int8flow.gate"] == "passed"
    assert run.data.tags["int8flow.model_sha256"] == report["model"]["sha256"]
    started = report["started"][:16].replace("-", "").replace(":", "").replace("T", "-")  # UTC, as report.json
    assert run.info.run_name == f"fashion_mnist_resnet-percentile-{started}"
    span = [datetime.fromisoformat(report[key]).timestamp() * 1000 for key in ("started", "finished")]
    assert [run.info.start_time, run.info.end_time] == span  # the calibration's duration, not the logging's
    tags = run.data.tags
    assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == (f"airflow:{DAG_ID}", "JOB")
    assert tags["mlflow.user"] and tags["airflow.dag_id"] == DAG_ID and tags["airflow.run_id"] == passed_run.run_id
    assert tags["airflow.url"].endswith(f"dags/{DAG_ID}/runs/{passed_run.run_id}")
    # no [api] base_url here: the URL is a path, so the description links nowhere (the browser test follows one)
    assert tags["mlflow.note.content"].endswith(f"Started by `airflow:{DAG_ID}`.")
    assert f"MLflow run {run.info.run_id} in experiment int8flow/fashion_mnist_resnet: sqlite:///" in passed_run.output
    assert "XCom not found" not in passed_run.output  # gate and track push their link's value, "" for a store


@pytest.mark.slow
@needs_fashion_mnist
def test_the_registered_version_has_the_alias_and_the_fp32_source(passed_run: DagTest, airflow_home: Path) -> None:
    client = mlflow_client(airflow_home)
    (run,) = runs_with_key(airflow_home, f"{DAG_ID}/{passed_run.run_id}")
    version = client.get_model_version_by_alias("fashion-int8-dagtest", "int8-ci")
    report = json.loads((passed_run.out / "report.json").read_text())
    assert version.run_id == run.info.run_id
    (int8_model,) = run.outputs.model_outputs  # model.int8.onnx, logged as an MLflow ONNX model
    assert version.source == f"models:/{int8_model.model_id}"
    assert version.tags["fp32_model_uri"] == str(DEMO_MODEL)
    assert version.tags["fp32_sha256"] == report["model"]["sha256"]
    assert version.tags["method"] == "percentile"  # the default
    versions = client.search_model_versions("name = 'fashion-int8-dagtest'")
    assert [str(v.version) for v in versions] == [str(version.version)]
    assert run.data.tags["int8flow.registered_version"] == str(version.version)


@pytest.mark.slow
@needs_fashion_mnist
def test_a_failed_gate_fails_the_run_at_the_gate_task_and_registers_nothing(
    failed_gate_run: DagTest, airflow_home: Path
) -> None:
    from mlflow.exceptions import MlflowException

    assert failed_gate_run.returncode != 0
    states = failed_gate_run.states()
    assert {task: states[task] for task in TASK_IDS[:6]} == {task: ("success", 1) for task in TASK_IDS[:6]}
    assert states["gate"] == ("failed", 1)  # FailedAtOnce: no retry
    assert {states[task][0] for task in ("report", "track", "register")} == {"upstream_failed"}
    (line,) = [line for line in failed_gate_run.output.splitlines() if "accuracy gate failed" in line]
    assert "Task exited" in line and "accuracy gate failed: INT8 top-1" in line
    assert '> "Max top-1 drop" -1 after 2 attempt(s)' in line  # the form's field, not a flag
    assert traceback_lines(failed_gate_run.output) == []
    assert "XCom not found" not in failed_gate_run.output  # the "MLflow run" link finds what gate pushed
    for progress in ("gate: sensitivity 0/14 nodes", "gate: sensitivity 14/14 nodes, 224 examples"):
        assert progress in failed_gate_run.output  # 14 nodes ranked on 16 examples each
    assert "gate: attempt 2/2 validate 8/8 shards, 128 examples" in failed_gate_run.output
    with pytest.raises(MlflowException):
        mlflow_client(airflow_home).get_registered_model("fashion-int8-gate-failed")
    (run,) = runs_with_key(airflow_home, f"{DAG_ID}/{failed_gate_run.run_id}")  # tracked, as `int8flow run` does
    assert run.data.tags["int8flow.gate"] == "failed"
    assert "int8flow.registered_version" not in run.data.tags
    assert run.data.tags["airflow.run_id"] == failed_gate_run.run_id  # linked back like a passing run
    assert re.fullmatch(r"fashion_mnist_resnet-auto-\d{8}-\d{4}-gate-failed", run.info.run_name)
    table = json.loads((failed_gate_run.out / "calibration.json").read_text())
    assert table["metadata"]["method"] == "auto" and table["metadata"]["auto_examples"] == "64"
    assert {tensor["method"] for tensor in table["tensors"]} <= {"percentile", "entropy", "mse"}

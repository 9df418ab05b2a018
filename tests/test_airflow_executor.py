"""The DAGs under Airflow's real executor: ``airflow standalone`` (scheduler, LocalExecutor, task
processes under the supervisor, API server, triggerer), driven over the REST API as the UI drives it.

``airflow dags test`` runs tasks in its own process, so it cannot catch what only the real executor
does: a Dask ``LocalCluster`` whose workers are spawned re-imports the Airflow CLI in the task
supervisor's environment and fails (STACK.md); forked workers, as ``int8flow.tasks.distributed.cluster``
starts them, work.
This file starts one standalone Airflow, triggers a small Fashion-MNIST run through the REST API,
clears its ``track`` and ``register`` tasks to check that a rerun adds no MLflow run or model version,
and lets the nightly DAG trigger a run from the model list, on an external Dask cluster (scheduler and
worker processes started by the test). Every process it starts is stopped
afterwards, also when a test fails; on failure the Airflow and task logs are in the report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from airflow_standalone import RUN_TIMEOUT, Standalone, running_standalone, wait_until
from test_airflow_dag import DAG_ID, DEMO_MODEL, FASHION_MNIST, TASK_IDS, mlflow_client, runs_with_key

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist"),
]

NIGHTLY_DAG_ID = "int8_requantize_nightly"
REGISTERED = "fashion-int8-executor"
REST_CONF = {
    "calib_examples": 128,
    "val_examples": 256,
    "batch_size": 64,
    "workers": 2,
    "sensitivity_examples": 16,
    "max_top1_drop": 2.0,
    "register": REGISTERED,
}
NIGHTLY_ENTRY = {
    "model": str(DEMO_MODEL),
    "calib_data": f"{FASHION_MNIST}#train",
    "val_data": f"{FASHION_MNIST}#t10k",
    "preprocess": "mnist",
    "calib_examples": 64,
    "val_examples": 128,
    "batch_size": 32,
    "workers": 1,
    "sensitivity_examples": 8,
    "method": "percentile",
}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """``airflow standalone`` on free ports (tests/airflow_standalone.py), every process stopped afterwards."""
    with running_standalone(tmp_path_factory.mktemp("airflow-standalone"), (DAG_ID, NIGHTLY_DAG_ID)) as airflow:
        yield airflow


def nightly_entry(scheduler: str) -> dict[str, Any]:
    """The nightly model runs on an external Dask cluster: the production shape, under the real executor."""
    return {**NIGHTLY_ENTRY, "scheduler": scheduler}


@pytest.fixture(scope="module")
def rest_run_id(airflow: Standalone, external_dask_scheduler: str) -> str:
    """A run triggered as the UI form does; the nightly DAG is unpaused too, so both run at once.

    Unpaused, the nightly DAG (catchup=False) runs at once for its latest cron time, so the test
    need not trigger it; that run waits for its model's run, and a second one would wait for it.
    """
    entries = [nightly_entry(external_dask_scheduler)]
    airflow.api("POST", "/variables", json={"key": "int8flow_nightly_models", "value": json.dumps(entries)})
    assert airflow.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})["is_paused"] is False
    rest = airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": REST_CONF})
    assert airflow.api("PATCH", f"/dags/{NIGHTLY_DAG_ID}", json={"is_paused": False})["is_paused"] is False
    return rest["dag_run_id"]


def tracked_runs(airflow: Standalone, run_id: str) -> list[Any]:
    return runs_with_key(airflow.home, f"{DAG_ID}/{run_id}")


def test_a_rest_triggered_run_succeeds_under_the_real_executor(airflow: Standalone, rest_run_id: str) -> None:
    run_id = rest_run_id
    assert airflow.wait_for_run(DAG_ID, run_id) == "success", airflow.logs(run_id)
    assert airflow.task_states(DAG_ID, run_id) == {task: ("success", 1) for task in TASK_IDS}
    cluster = json.loads((airflow.home / "int8flow-runs" / DAG_ID / run_id / "stages" / "cluster.json").read_text())
    assert cluster["workers"] == 2 and cluster["kind"] == "LocalCluster"  # forked Dask workers in a task
    (run,) = tracked_runs(airflow, run_id)
    report = json.loads((airflow.home / "int8flow-runs" / DAG_ID / run_id / "report.json").read_text())
    assert run.data.metrics["accuracy/int8_top1"] == round(report["accuracy"]["int8_top1"], 4)
    assert run.data.metrics["count/val_examples"] == 256
    version = mlflow_client(airflow.home).get_model_version_by_alias(REGISTERED, "int8-candidate")
    assert version.run_id == run.info.run_id


def test_clearing_track_and_register_reruns_them_without_a_second_run_or_version(
    airflow: Standalone, rest_run_id: str
) -> None:
    run_id = rest_run_id
    assert airflow.wait_for_run(DAG_ID, run_id) == "success", airflow.logs(run_id)
    airflow.api(
        "POST",
        f"/dags/{DAG_ID}/clearTaskInstances",
        json={
            "dag_run_id": run_id,
            "task_ids": ["track", "register"],
            "dry_run": False,
            "only_failed": False,
        },
    )
    rerun = wait_until(lambda: airflow.task_states(DAG_ID, run_id)["register"] == ("success", 2), RUN_TIMEOUT, 2)
    assert rerun, f"{airflow.task_states(DAG_ID, run_id)}\n{airflow.logs(run_id)}"
    assert airflow.task_states(DAG_ID, run_id)["track"] == ("success", 2)
    (run,) = tracked_runs(airflow, run_id)
    versions = mlflow_client(airflow.home).search_model_versions(f"name = '{REGISTERED}'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]


def test_the_nightly_dag_triggers_one_run_per_listed_model_with_its_settings(
    airflow: Standalone, rest_run_id: str, external_dask_scheduler: str
) -> None:
    def nightly_run_ids() -> list[str]:
        return [run["dag_run_id"] for run in airflow.api("GET", f"/dags/{NIGHTLY_DAG_ID}/dagRuns")["dag_runs"]]

    assert wait_until(nightly_run_ids, 60, interval=1), f"the unpaused nightly DAG did not run\n{airflow.logs()}"
    (nightly_run_id,) = nightly_run_ids()
    assert nightly_run_id.startswith("scheduled__")
    expected = "nightly__" + nightly_run_id.split("__", 1)[1] + "__fashion_mnist_resnet"

    def triggered() -> bool:
        return expected in [run["dag_run_id"] for run in airflow.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]]

    assert wait_until(triggered, RUN_TIMEOUT, interval=2), airflow.logs(nightly_run_id)
    assert airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{expected}")["conf"] == nightly_entry(external_dask_scheduler)
    assert airflow.wait_for_run(DAG_ID, expected) == "success", airflow.logs(expected)
    cluster = json.loads((airflow.home / "int8flow-runs" / DAG_ID / expected / "stages" / "cluster.json").read_text())
    assert (cluster["kind"], cluster["scheduler"]) == ("external", external_dask_scheduler)
    assert airflow.task_states(NIGHTLY_DAG_ID, nightly_run_id)["model_runs"] == ("success", 1)
    (run,) = tracked_runs(airflow, expected)
    assert run.data.params["method"] == "percentile" and run.data.metrics["count/calib_examples"] == 64

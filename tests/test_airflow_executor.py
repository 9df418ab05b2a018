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
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from test_airflow_dag import (
    AIRFLOW,
    DAG_ID,
    DEMO_MODEL,
    FASHION_MNIST,
    TASK_IDS,
    airflow_environment,
    mlflow_client,
    runs_with_key,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist"),
]

NIGHTLY_DAG_ID = "int8_requantize_nightly"
START_TIMEOUT = 180
RUN_TIMEOUT = 300
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


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def stop(process: subprocess.Popen) -> list[str]:
    """SIGINT to standalone's process group, then SIGTERM, then SIGKILL to whatever is still running.

    On SIGINT standalone's components (scheduler, API server, ...) shut down; standalone itself ignores
    it (see ``airflow``) and SIGTERM ends it. Task processes and forked Dask workers are in the group.
    Returns what each signal left running, for the test report.
    """
    pgid = process.pid  # start_new_session=True: standalone leads its own process group
    steps = []
    started = time.monotonic()
    for sig, grace in ((signal.SIGINT, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if not group_members(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        components_done = (
            (lambda: group_members(pgid) in ([], [pgid])) if sig is signal.SIGINT else (lambda: not group_members(pgid))
        )
        wait_until(components_done, grace)
        steps.append(f"{sig.name}: after {time.monotonic() - started:.1f} s running {process_names(pgid)}")
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        pass
    return steps


def process_names(pgid: int) -> list[str]:
    names = []
    for pid in group_members(pgid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        names.append(f"{pid} {command[:80]}")
    return names


@dataclass
class Standalone:
    home: Path
    url: str
    process: subprocess.Popen
    token: str = ""

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(
            method, f"{self.url}/api/v2{path}", headers={"Authorization": f"Bearer {self.token}"}, timeout=30, **kwargs
        )
        assert response.ok, f"{method} {path}: {response.status_code} {response.text}\n{self.logs()}"
        return response.json() if response.content else None

    def logs(self, run_id: str | None = None) -> str:
        """The end of standalone's output and of every task log of ``run_id`` (for failure reports)."""
        parts = [f"--- standalone (last lines) ---\n{tail(self.home / 'standalone.log', 80)}"]
        if run_id is not None:
            for log in sorted((self.home / "logs").glob(f"dag_id=*/run_id={run_id}/task_id=*/attempt=*.log")):
                parts.append(f"--- {log.relative_to(self.home / 'logs')} ---\n{task_log_text(log)}")
        return "\n".join(parts)

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> str:
        finished = wait_until(lambda: self.run_state(dag_id, run_id) in ("success", "failed"), timeout, interval=2)
        state = self.run_state(dag_id, run_id)
        assert finished, f"{dag_id} {run_id} still {state} after {timeout} s\n{self.logs(run_id)}"
        return state

    def task_states(self, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
        instances = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in instances}


def tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no file)"


def task_log_text(path: Path, lines: int = 60) -> str:
    """A task log (JSON lines) as ``time logger: event`` text, last ``lines`` lines."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            out.append(line)
            continue
        text = f"{record.get('timestamp', '')[11:19]} {record.get('level', '')} {record.get('logger', '')}: "
        detail = f"\n{record['error_detail']}" if "error_detail" in record else ""
        out.append(text + str(record.get("event", "")) + detail)
    return "\n".join(out[-lines:])


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    home = tmp_path_factory.mktemp("airflow-standalone")
    api_port, log_port, trigger_log_port = free_ports(3)
    env = airflow_environment(home)
    env.update(
        {
            "AIRFLOW__CORE__PARALLELISM": "4",  # the default 32 starts 32 executor workers (~5.6 GiB)
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        }
    )
    # standalone starts with SIGINT ignored, as under a non-interactive shell: on the group's SIGINT its
    # components stop cleanly, while a standalone that handles SIGINT also SIGTERMs the scheduler mid-
    # shutdown, which then hangs and leaves its LocalExecutor workers behind (Airflow 3.3.2, measured).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with (home / "standalone.log").open("w") as output:
            process = subprocess.Popen(
                [str(AIRFLOW), "standalone"],
                env=env,
                cwd=home,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    airflow = Standalone(home, f"http://127.0.0.1:{api_port}", process)
    try:
        password_file = home / "simple_auth_manager_passwords.json.generated"

        def api_up() -> bool:
            assert process.poll() is None, f"airflow standalone exited with {process.returncode}\n{airflow.logs()}"
            try:
                return password_file.exists() and requests.get(f"{airflow.url}/api/v2/version", timeout=2).ok
            except requests.ConnectionError:
                return False

        assert wait_until(api_up, START_TIMEOUT, interval=0.5), f"no API after {START_TIMEOUT} s\n{airflow.logs()}"
        password = json.loads(password_file.read_text())["admin"]
        token = requests.post(f"{airflow.url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        assert token.ok, token.text
        airflow.token = token.json()["access_token"]

        def parsed(dag_id: str) -> bool:
            return requests.get(
                f"{airflow.url}/api/v2/dags/{dag_id}", timeout=5, headers={"Authorization": f"Bearer {airflow.token}"}
            ).ok

        assert wait_until(lambda: parsed(DAG_ID) and parsed(NIGHTLY_DAG_ID), 120, interval=1), airflow.logs()
        yield airflow
    finally:
        steps = stop(process)
        leftover = group_members(process.pid)
        print(airflow.logs(), "--- stopping airflow standalone ---", *steps, sep="\n")
        assert not leftover, f"processes of airflow standalone still running: {leftover}"


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
    assert run.data.metrics["int8_top1"] == round(report["accuracy"]["int8_top1"], 4)
    assert run.data.metrics["val_examples"] == 256
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
    assert run.data.params["method"] == "percentile" and run.data.metrics["calib_examples"] == 64

"""A real ``airflow standalone`` (scheduler, LocalExecutor, API server, triggerer, DAG processor) for
the tests that need Airflow's real executor or its UI: started on free ports in its own process
group, stopped with every process of that group, also when a test fails.

Used by test_airflow_executor.py (REST-triggered runs) and test_browser.py (the UI in Chromium).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from test_airflow_dag import AIRFLOW, airflow_environment

START_TIMEOUT = 180
PARSE_TIMEOUT = 120
RUN_TIMEOUT = 300


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
    it (see ``running_standalone``) and SIGTERM ends it. Task processes and forked Dask workers are in
    the group. Returns what each signal left running, for the test report.
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
        response = requests.request(method, f"{self.url}/api/v2{path}", headers=self.headers(), timeout=30, **kwargs)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text}\n{self.logs()}"
        return response.json() if response.content else None

    def headers(self) -> dict[str, str]:
        """The API's login; none when everyone is admin (``SIMPLE_AUTH_MANAGER_ALL_ADMINS``)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

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


@contextlib.contextmanager
def running_standalone(
    home: Path, dag_ids: Iterable[str], environment: Mapping[str, str] | None = None
) -> Iterator[Standalone]:
    """``airflow standalone`` in ``home`` on free ports, up, logged in over the API (``Standalone.token``)
    and with ``dag_ids`` parsed; every process of its group is stopped on exit (the Airflow log printed),
    and the exit fails if one is left.

    ``environment`` adds to or overrides ``airflow_environment(home)`` (e.g. ``MLFLOW_TRACKING_URI``).
    """
    dag_ids = tuple(dag_ids)
    api_port, log_port, trigger_log_port = free_ports(3)
    env = airflow_environment(home)
    env.update(
        {
            "AIRFLOW__CORE__PARALLELISM": "4",  # the default 32 starts 32 executor workers (~5.6 GiB)
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",  # absolute links back to a DAG run
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
            **(environment or {}),
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
        # Everyone is admin: no users, no password file, the API needs no token.
        all_admins = env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "").lower() == "true"
        password_file = home / "simple_auth_manager_passwords.json.generated"

        def api_up() -> bool:
            assert process.poll() is None, f"airflow standalone exited with {process.returncode}\n{airflow.logs()}"
            try:
                logins = all_admins or password_file.exists()
                return logins and requests.get(f"{airflow.url}/api/v2/version", timeout=2).ok
            except requests.ConnectionError:
                return False

        assert wait_until(api_up, START_TIMEOUT, interval=0.5), f"no API after {START_TIMEOUT} s\n{airflow.logs()}"
        if not all_admins:
            password = json.loads(password_file.read_text())["admin"]
            login = {"username": "admin", "password": password}
            token = requests.post(f"{airflow.url}/auth/token", json=login, timeout=30)
            assert token.ok, token.text
            airflow.token = token.json()["access_token"]

        def parsed(dag_id: str) -> bool:
            return requests.get(f"{airflow.url}/api/v2/dags/{dag_id}", timeout=5, headers=airflow.headers()).ok

        assert wait_until(lambda: all(parsed(dag_id) for dag_id in dag_ids), PARSE_TIMEOUT, interval=1), airflow.logs()
        yield airflow
    finally:
        steps = stop(process)
        leftover = group_members(process.pid)
        print(airflow.logs(), "--- stopping airflow standalone ---", *steps, sep="\n")
        assert not leftover, f"processes of airflow standalone still running: {leftover}"

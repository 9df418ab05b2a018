"""A real ``mlflow server`` for the tests that talk to a tracking server, as production runs one:
a SQLite store and the artifacts it serves itself, both in the test's folder, on 127.0.0.1, in its own
process group, stopped afterwards (also when a test fails)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import requests

START_TIMEOUT = 120


@contextmanager
def running_mlflow_server(folder: Path) -> Iterator[str]:
    """The server's URL while it runs; its log is ``folder/server.log``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/db"]
    command += ["--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    log = folder / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # 2 processes, not 10
            cwd=folder,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            with suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            assert time.monotonic() < deadline, f"mlflow server not up in {START_TIMEOUT} s\n{log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

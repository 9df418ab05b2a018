"""Faults a nightly run meets: the CLI killed mid-run and run again, and runs started together on one host.

Real processes throughout: ``int8flow run`` subprocesses with their embedded Dask clusters, a SQLite
MLflow store created by the runs themselves. Outputs are compared by sha256 with an undisturbed run.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO_MODEL, flags
from mlflow import MlflowClient

from int8flow.tasks.data import fashion_mnist_folder

pytestmark = pytest.mark.slow
SCRIPT = str(Path(sys.executable).parent / "int8flow")
SETTINGS = {"preprocess": "mnist", "calib_examples": 256, "batch_size": 16, "workers": 1, "shards": 8}
DETERMINISTIC = ("calibration.json", "calibration.cache", "model.int8.onnx")


def command(out: Path, tracking: Path) -> list[str]:
    return [
        SCRIPT, "run", str(DEMO_MODEL), f"--calib-data={fashion_mnist_folder()}#train", *flags(SETTINGS),
        f"--out={out}", f"--tracking-uri=sqlite:///{tracking}",
    ]  # fmt: skip


def digests(out: Path) -> dict[str, str]:
    names = [*DETERMINISTIC, *(f"histograms/{path.name}" for path in sorted((out / "histograms").iterdir()))]
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in names}


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("undisturbed")
    done = subprocess.run(command(folder / "out", folder / "mlflow.db"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return digests(folder / "out")


def test_a_run_killed_during_observe_and_run_again_writes_the_same_bytes(
    undisturbed: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(command(out, tmp_path / "mlflow.db"), start_new_session=True, **quiet)
    deadline = time.monotonic() + 300
    while not list((out / "histograms").glob("shard=*.parquet")) and process.poll() is None:
        assert time.monotonic() < deadline, "no shard was written within 300 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the CLI, its Dask scheduler and worker processes at once
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    again = subprocess.run(command(out, tmp_path / "mlflow.db"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert digests(out) == undisturbed


def test_runs_started_together_on_a_new_tracking_store_all_succeed(undisturbed: dict[str, str], tmp_path: Path) -> None:
    store = tmp_path / "shared" / "mlflow.db"
    runs = [subprocess.Popen(command(tmp_path / f"out{index}", store), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for index in range(2)]  # fmt: skip
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [error[-2000:] for error in errors]
    assert all(digests(tmp_path / f"out{index}") == undisturbed for index in range(2))
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("int8flow/fashion_mnist_resnet")
    assert len(client.search_runs([experiment.experiment_id])) == 2

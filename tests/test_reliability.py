"""Faults a nightly run meets: the CLI killed mid-run and run again, and runs started together on one host.

Real processes throughout: ``int8flow run`` subprocesses with their embedded Dask clusters, a SQLite
MLflow store created by the runs themselves. Outputs are compared by sha256 with an undisturbed run.
"""

from __future__ import annotations

import hashlib
import json
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
SETTINGS = {
    "preprocess": "mnist", "calib_examples": 256, "val_examples": 256, "batch_size": 16, "workers": 1, "shards": 8,
    "max_top1_drop": 100, "register": "reliability-int8",
}  # fmt: skip
DETERMINISTIC = ("calibration.json", "calibration.cache", "model.int8.onnx")
# What appears when a stage is done: killing the run then kills it in the next one.
KILL_WHEN = {
    "observe": "histograms/shard=*.parquet",
    "thresholds": "stages/observe.json",
    "correct": "stages/thresholds.json",
    "build": "stages/correct.json",
    "validate": "stages/build.json",
    "gate": "stages/validate.json",
    "report": "stages/gate.json",
    "track and register": "report.json",
}


def command(out: Path, tracking: Path) -> list[str]:
    folder = fashion_mnist_folder()
    return [
        SCRIPT, "run", str(DEMO_MODEL), f"--calib-data={folder}#train", f"--val-data={folder}#t10k", *flags(SETTINGS),
        f"--out={out}", f"--tracking-uri=sqlite:///{tracking}",
    ]  # fmt: skip


def run(out: Path, tracking: Path) -> subprocess.CompletedProcess[str]:
    """A run in its own working folder (MLflow's artifacts go there), to the end."""
    return subprocess.run(command(out, tracking), capture_output=True, text=True, timeout=600, cwd=tracking.parent)


def digests(out: Path) -> dict[str, str]:
    names = [
        *DETERMINISTIC,
        *(
            f"{folder}/{path.name}"
            for folder in ("histograms", "bias_sums")
            for path in sorted((out / folder).iterdir())
        ),
    ]
    found = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in names}
    report = json.loads((out / "report.json").read_text())
    found["report.json accuracy"] = json.dumps(report["accuracy"], sort_keys=True)
    return found


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("undisturbed")
    done = run(folder / "out", folder / "mlflow.db")
    assert done.returncode == 0, done.stderr[-2000:]
    return digests(folder / "out")


@pytest.mark.parametrize("stage", list(KILL_WHEN))
def test_a_run_killed_in_any_stage_and_run_again_writes_the_same_bytes_and_registers_once(
    undisturbed: dict[str, str], tmp_path: Path, stage: str
) -> None:
    out, store = tmp_path / "out", tmp_path / "mlflow.db"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(command(out, store), start_new_session=True, cwd=tmp_path, **quiet)
    deadline = time.monotonic() + 300
    while not list(out.glob(KILL_WHEN[stage])) and process.poll() is None:
        assert time.monotonic() < deadline, f"{KILL_WHEN[stage]} did not appear within 300 s"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the CLI, its Dask scheduler and worker processes at once
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    again = run(out, store)
    assert again.returncode == 0, again.stderr[-2000:]
    assert digests(out) == undisturbed
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    versions = client.search_model_versions("name = 'reliability-int8'")
    assert len(versions) == 1, "a version registered by the killed run and one by the rerun"
    registered_run = client.get_run(versions[0].run_id)
    assert registered_run.info.status == "FINISHED"
    assert client.get_model_version_by_alias("reliability-int8", "int8-candidate").version == versions[0].version


def test_runs_started_together_on_a_new_tracking_store_all_succeed(undisturbed: dict[str, str], tmp_path: Path) -> None:
    store = tmp_path / "shared" / "mlflow.db"
    runs = [subprocess.Popen(command(tmp_path / f"out{index}", store), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path) for index in range(2)]  # fmt: skip
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [error[-2000:] for error in errors]
    assert all(digests(tmp_path / f"out{index}") == undisturbed for index in range(2))
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("int8flow/fashion_mnist_resnet")
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_runs_started_together_on_one_out_take_turns_and_leave_one_runs_files(
    undisturbed: dict[str, str], tmp_path: Path
) -> None:
    """The second waits for the first, then finds the folder as a retry does: nothing interleaves, the
    manifest lists exactly the files there, and both runs are tracked."""
    out, store = tmp_path / "out", tmp_path / "mlflow.db"
    runs = [subprocess.Popen(command(out, store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             cwd=tmp_path) for _ in range(2)]  # fmt: skip
    errors = [run.communicate(timeout=900)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [error[-2000:] for error in errors]
    assert digests(out) == undisturbed
    written = {str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()}
    assert written == set(json.loads((out / "manifest.json").read_text())) | {"manifest.json"}
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("int8flow/fashion_mnist_resnet")
    assert [run.info.status for run in client.search_runs([experiment.experiment_id])] == ["FINISHED", "FINISHED"]

"""A run deletes and uploads only what it wrote itself: the manifest, links never followed, foreign folders refused.

Real runs of the demo model (``int8flow run`` in-process, an embedded Dask cluster, a SQLite MLflow
store); the user's files sit where a careless tool would clean up: inside ``plots/``, ``histograms/``
and ``stages/``, behind a link, beside the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DEMO_MODEL
from mlflow import MlflowClient

from int8flow.schemas.run_folder import MANIFEST_FILE
from int8flow.tasks.cli.main import main
from int8flow.tasks.data import fashion_mnist_folder

pytestmark = pytest.mark.slow


def run(out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(
        ["run", str(DEMO_MODEL), "--preprocess", "mnist", "--calib-data", f"{fashion_mnist_folder()}#train"]
        + ["--calib-examples", "64", "--workers", "1", "--out", str(out)]
        + ["--tracking-uri", f"sqlite:///{out.parent}/mlflow.db", *extra]
    )
    return code, capsys.readouterr().err


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file() or path.is_symlink()}


def test_a_linked_run_subfolder_is_refused_and_what_it_points_to_is_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "V" / "precious.txt"
    precious.parent.mkdir()
    precious.write_text("x")
    (tmp_path / "O").mkdir()
    (tmp_path / "O" / "histograms").symlink_to(precious.parent)
    code, err = run(tmp_path / "O", capsys)
    assert code == 2 and err.count("\n") == 1
    assert "histograms is a symbolic link; int8flow writes only into folders it creates itself" in err
    assert precious.read_text() == "x" and files_under(tmp_path / "V") == {"precious.txt"}


def test_a_folder_holding_no_run_is_refused_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    for name in ("stages/keep.txt", "histograms/keep.txt"):
        (out / name).parent.mkdir(parents=True)
        (out / name).write_text(name)
    code, err = run(out, capsys)
    assert code == 2
    assert err == (
        f"int8flow: error: --out {out} is not empty and holds no int8flow run (histograms, stages); "
        "choose a new or empty folder\n"
    )
    assert files_under(out) == {"stages/keep.txt", "histograms/keep.txt"}


def test_overwrite_removes_exactly_the_earlier_runs_files_and_mlflow_gets_exactly_the_new_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run(out, capsys, "--shards", "3")[0] == 0
    first = json.loads((out / MANIFEST_FILE).read_text())
    assert set(first) | {MANIFEST_FILE} == files_under(out) and "histograms/shard=00002.parquet" in first
    secret = tmp_path / "secret.key"
    secret.write_text("s3cr3t")
    user_files = {"plots/mine.png", "histograms/mine.txt", "stages/mine.json", "notes.txt"}
    for name in user_files:
        (out / name).write_text("mine")
    (out / "credentials").symlink_to(secret)

    code, err = run(out, capsys, "--shards", "2", "--method", "naive", "--overwrite")
    assert code == 0, err
    second = json.loads((out / MANIFEST_FILE).read_text())
    assert files_under(out) == set(second) | {MANIFEST_FILE} | user_files | {"credentials"}
    assert "histograms/shard=00002.parquet" not in second and "histograms/shard=00001.parquet" in second
    assert all((out / name).read_text() == "mine" for name in user_files) and secret.read_text() == "s3cr3t"

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("int8flow/fashion_mnist_resnet")
    latest = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert latest.data.params["method"] == "naive"

    def artifacts(path: str | None = None) -> set[str]:
        found = set()
        for item in client.list_artifacts(latest.info.run_id, path):
            found |= artifacts(item.path) if item.is_dir else {item.path}
        return found

    assert artifacts() == set(second) | {MANIFEST_FILE}

"""The installed package: one ``int8flow`` namespace, and the Python API that runs the same job as the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import DEMO_MODEL, flags

import int8flow
from int8flow.schemas.run_config import RunConfigError
from int8flow.tasks.cli.main import main
from int8flow.tasks.data import fashion_mnist_folder

REPO = Path(__file__).resolve().parents[1]
MODEL = DEMO_MODEL
SETTINGS = {"preprocess": "mnist", "calib_examples": 128, "val_examples": 256, "workers": 1, "max_top1_drop": 5.0}


def python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("name", ["tasks", "kernels", "schemas"])
def test_no_generic_top_level_package_is_installed(name: str, tmp_path: Path) -> None:
    done = python(f"import {name}", tmp_path)
    assert done.returncode != 0 and f"No module named '{name}'" in done.stderr


def test_the_code_imports_under_int8flow_from_anywhere(tmp_path: Path) -> None:
    done = python("import int8flow.tasks.cli.main, int8flow.kernels.histogram, int8flow.schemas.run_config", tmp_path)
    assert done.returncode == 0, done.stderr


def test_importing_the_api_loads_no_cluster_or_tracking_library(tmp_path: Path) -> None:
    done = python(
        "import sys, int8flow; print(sorted({'dask', 'distributed', 'mlflow', 'airflow'} & set(sys.modules)))", tmp_path
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_every_package_folder_is_installed() -> None:
    """A folder with an ``__init__.py`` missing from pyproject's list would be left out of the wheel."""
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    task_packages = {
        ".".join(("int8flow", "tasks", *init.parent.relative_to(REPO / "tasks").parts))
        for init in (REPO / "tasks").rglob("__init__.py")
    }
    assert declared == {"int8flow", "int8flow.kernels", "int8flow.schemas", *task_packages}


def test_an_unknown_setting_is_refused_by_name_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(RunConfigError, match=r"unknown setting\(s\) methd"):
        int8flow.run(MODEL, calib_data=f"{fashion_mnist_folder()}#train", methd="mse", out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_python_api_runs_the_same_job_as_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = fashion_mnist_folder()
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    result = int8flow.run(
        MODEL,
        calib_data=Path(data + "#train"),
        val_data=f"{data}#t10k",
        out=tmp_path / "api",
        tracking_uri=tracking,
        **SETTINGS,
    )
    code = main(
        [
            "run",
            str(MODEL),
            "--calib-data",
            f"{data}#train",
            "--val-data",
            f"{data}#t10k",
            *flags(SETTINGS),
            "--out",
            str(tmp_path / "cli"),
            "--tracking-uri",
            tracking,
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert result.passed and result.out == str(tmp_path / "api") and result.registered_version is None
    assert (tmp_path / "api" / "calibration.json").read_bytes() == (tmp_path / "cli" / "calibration.json").read_bytes()
    cli_report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert result.report["accuracy"] == cli_report["accuracy"] and result.report["accuracy"]["examples"] == 256
    assert result.report == json.loads((tmp_path / "api" / "report.json").read_text())

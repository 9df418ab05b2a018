"""The command line end to end: the demo, re-thresholding its partials, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from int8flow.kernels.histogram import Histogram
from int8flow.kernels.thresholds import METHODS, ThresholdSettings
from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.tasks.calibration.shard_demo import DEMO_TENSORS, demo_fingerprint, example_activations
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.cli.main import EXIT_BAD_INPUT, main

EXAMPLES = 64


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    script = Path(sys.executable).parent / "int8flow"
    done = subprocess.run(
        [str(script), "shard-demo", "--out", str(out), "--examples", str(EXAMPLES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "bit-identical thresholds for every split" in done.stdout
    return out


def one_pass_table(method: str) -> CalibrationTable:
    """The table computed without shards or batches: every example's values in one histogram."""
    examples = [example_activations(index) for index in range(EXAMPLES)]
    histograms = {name: Histogram.of(np.concatenate([e[name] for e in examples])) for name in DEMO_TENSORS}
    metadata = {"model_sha256": demo_fingerprint(), "num_bins": "8192", "examples": str(EXAMPLES)}
    return build_calibration_table(histograms, ThresholdSettings(method=method), metadata)


def read_table(path: Path) -> CalibrationTable:
    return CalibrationTable.from_json(path.read_text(), str(path))


def test_demo_table_equals_the_one_pass_table(demo_out: Path) -> None:
    assert (demo_out / "calibration.json").read_text() == one_pass_table("entropy").to_json()


@pytest.mark.parametrize("method", [m for m in METHODS if m != "entropy"])
def test_demo_writes_every_method_exactly(demo_out: Path, method: str) -> None:
    assert (demo_out / "methods" / method / "calibration.json").read_text() == one_pass_table(method).to_json()


def test_demo_tensorrt_cache_holds_the_json_scales(demo_out: Path) -> None:
    cache_path = demo_out / "calibration.cache"
    from_cache = CalibrationTable.from_tensorrt_cache(cache_path.read_text(), str(cache_path)).by_name()
    from_json = read_table(demo_out / "calibration.json").by_name()
    assert cache_path.read_text().splitlines()[0] == "TRT-8601-EntropyCalibration2"
    for name, record in from_json.items():
        assert from_cache[name].scale == float(np.float32(record.scale))


def test_rethreshold_reproduces_a_method_from_the_partials(demo_out: Path, tmp_path: Path) -> None:
    code = main(["rethreshold", str(demo_out / "histograms"), "--method", "percentile", "--out", str(tmp_path)])
    assert code == 0
    ours = json.loads((tmp_path / "calibration.json").read_text())
    demo = json.loads((demo_out / "methods" / "percentile" / "calibration.json").read_text())
    assert ours["tensors"] == demo["tensors"]
    assert ours["metadata"]["histogram_files"] == "1"


def test_rethreshold_records_the_symmetric_setting(demo_out: Path, tmp_path: Path) -> None:
    args = [
        "rethreshold",
        str(demo_out / "histograms"),
        "--method",
        "mse",
        "--no-unsigned-activations",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    table = read_table(tmp_path / "calibration.json")
    assert table.metadata["unsigned_activations"] == "false"
    unsigned = read_table(demo_out / "methods" / "mse" / "calibration.json")
    assert unsigned.metadata["unsigned_activations"] == "true"  # the default
    pooled = unsigned.by_name()["head/pool_out"]  # a ReLU output: finer steps let MSE clip less
    assert not pooled.signed and pooled.threshold > table.by_name()["head/pool_out"].threshold
    assert table.by_name()["stem/conv_out"] == unsigned.by_name()["stem/conv_out"]  # signed: unchanged


def test_rethreshold_of_a_missing_folder_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main(["rethreshold", str(missing), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert str(missing) in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_rethreshold_refuses_the_auto_method_naming_what_it_needs(
    demo_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["rethreshold", str(demo_out / "histograms"), "--method", "auto", "--out", str(tmp_path / "out")]
    assert main(args) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "int8flow run --method auto" in error and "percentile" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_bin_count_that_cannot_merge_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shard-demo", "--out", str(tmp_path), "--num-bins", "8001"]) == EXIT_BAD_INPUT
    assert "power of two" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [[], ["run"], ["runs"], ["shard-demo"], ["rethreshold"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: int8flow" in capsys.readouterr().out


def test_an_unexpected_error_exits_4_with_one_line_and_the_traceback_in_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken tracking database is no ValueError/OSError of ours: it must not leave a bare traceback."""
    (tmp_path / "mlflow.db").write_text("this is not a SQLite database\n" * 100)
    assert main(["runs", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("int8flow: unexpected error: ") and err.count("\n") == 1
    log = Path(err.rstrip().rpartition("the traceback is in ")[2])
    assert log.is_file() and log.read_text().startswith("Traceback (most recent call last):")
    log.unlink()

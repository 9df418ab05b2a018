"""Planning checks of ``int8flow run``: an unusable ``--out`` is refused up front with a one-line
remedy, and a ``--batch-size`` larger than the data is not refused (it runs as one short batch)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO_MODEL

from int8flow.schemas.run_config import RunConfig
from int8flow.schemas.run_folder import PLAN_FILE
from int8flow.tasks.data import fashion_mnist_folder
from int8flow.tasks.data.sharding import batch_ranges
from int8flow.tasks.run.plan import OutputDirectoryError, plan_run


def config(tmp_path: Path, out: Path, **overrides: Any) -> RunConfig:
    return RunConfig.from_mapping(
        {
            "model": str(DEMO_MODEL),
            "calib_data": f"{fashion_mnist_folder()}#train",
            "preprocess": "mnist",
            "calib_examples": 64,
            "workers": 1,
            "out": str(out),
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            **overrides,
        }
    )


def assert_one_line(error: BaseException, *parts: str) -> None:
    message = str(error)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def test_an_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(OutputDirectoryError) as error:
        plan_run(config(tmp_path, out))
    assert_one_line(error.value, f"--out {out} is a file, not a folder", "choose another --out")
    assert out.read_text() == "not a folder"


def test_an_out_inside_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    out = tmp_path / "blocker" / "out"
    with pytest.raises(OutputDirectoryError) as error:
        plan_run(config(tmp_path, out))
    assert_one_line(error.value, f"--out {out}: cannot write there", "choose a writable folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders; os.access says writable")
def test_a_read_only_out_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        for out in (parent, parent / "new"):
            with pytest.raises(OutputDirectoryError) as error:
                plan_run(config(tmp_path, out))
            assert_one_line(error.value, f"--out {out}: cannot write there (permission denied)", "writable folder")
    finally:
        parent.chmod(stat.S_IRWXU)


def test_a_batch_larger_than_the_data_is_planned(tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = plan_run(config(tmp_path, out, calib_examples=10, batch_size=32))
    assert plan.calibration.sample == 10
    assert (out / PLAN_FILE).is_file()


def test_a_batch_larger_than_a_shard_is_one_short_batch() -> None:
    assert batch_ranges(range(10), 32) == [range(10)]
    assert batch_ranges(range(3, 5), 32) == [range(3, 5)]
    assert batch_ranges(range(0), 32) == []

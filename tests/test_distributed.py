"""Calibration on real Dask clusters: the table, bias corrections and the auto method's choice
included, does not depend on workers, shards, batch size, or a worker killed mid-stage. Model: the
committed Fashion-MNIST ResNet; data: Debian's Fashion-MNIST."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import DEMO_MODEL
from graph_builders import wide_mlp_model
from threadpoolctl import threadpool_limits

from int8flow.schemas.run_config import SETTINGS_BY_NAME, RunConfig
from int8flow.schemas.stage_records import CorrectRecord
from int8flow.schemas.threshold_settings import ThresholdSettings
from int8flow.tasks.calibration.table import rethreshold
from int8flow.tasks.data import fashion_mnist_folder, load_mnist_split
from int8flow.tasks.distributed.cluster import ClusterUnavailableError, dask_client
from int8flow.tasks.distributed.fanout import ProgressSink
from int8flow.tasks.run import stages
from int8flow.tasks.run.plan import load_plan, plan_run

MODEL = str(DEMO_MODEL)
CALIB_EXAMPLES = 600
VAL = f"{fashion_mnist_folder()}#t10k"


def config(
    out: Path,
    batch_size: int,
    shards: int,
    workers: int,
    model: str = MODEL,
    val_data: str | None = None,
    engine: str = "onnxruntime",
    method: str = "percentile",
) -> RunConfig:
    return RunConfig.from_mapping(
        {
            "model": model,
            "engine": engine,
            "method": method,
            "val_data": val_data,
            "val_examples": CALIB_EXAMPLES,
            "calib_data": f"{fashion_mnist_folder()}#train",
            "preprocess": "mnist",
            "calib_examples": CALIB_EXAMPLES,
            "batch_size": batch_size,
            "shards": shards,
            "workers": workers,
            "out": str(out),
            "tracking_uri": f"sqlite:///{out.parent}/mlflow.db",
        }
    )


def calibrate(
    out: Path,
    client,
    batch_size: int,
    shards: int,
    workers: int,
    progress=stages.quiet,
    model: str = MODEL,
    engine: str = "onnxruntime",
    method: str = "percentile",
) -> bytes:  # type: ignore[no-untyped-def]
    plan_run(config(out, batch_size, shards, workers, model, engine=engine, method=method))
    stages.observe(str(out), client, progress)
    stages.thresholds(str(out), client, progress)
    stages.correct(str(out), client, progress)
    return (out / "calibration.json").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One worker, one shard, batches of 64."""
    with dask_client(workers=1) as (client, info):
        assert info.workers == 1
        return calibrate(tmp_path_factory.mktemp("one") / "out", client, 64, 1, 1)


@pytest.fixture(scope="module")
def auto_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``--method auto``: one worker, one shard, batches of 64; the output folder."""
    out = tmp_path_factory.mktemp("auto") / "out"
    with dask_client(workers=1) as (client, _):
        calibrate(out, client, 64, 1, 1, method="auto")
    return out


@pytest.fixture(scope="module")
def two_workers():  # type: ignore[no-untyped-def]
    with dask_client(workers=2) as (client, info):
        assert info.workers == 2 and info.kind == "LocalCluster"
        yield client


@pytest.mark.parametrize(("shards", "batch_size"), [(4, 64), (7, 64), (4, 16), (7, 16), (1, 16)])
def test_table_is_bit_identical_for_any_sharding(
    reference: bytes,
    two_workers,
    tmp_path: Path,
    shards: int,
    batch_size: int,  # type: ignore[no-untyped-def]
) -> None:
    table = calibrate(tmp_path / "out", two_workers, batch_size, shards, 2)
    assert table == reference
    correction = stages.load_record(load_plan(str(tmp_path / "out")), CorrectRecord)
    assert correction is not None  # its own sample, smaller than the 600 calibration examples
    assert correction.examples == SETTINGS_BY_NAME["correction_examples"].default < CALIB_EXAMPLES
    for folder in ("histograms", "bias_sums"):
        assert sorted(path.name for path in (tmp_path / "out" / folder).iterdir()) == [
            f"shard={index:05d}.parquet" for index in range(shards)
        ]


@pytest.mark.parametrize(("shards", "batch_size"), [(4, 16), (7, 64)])
def test_the_auto_method_gives_one_table_for_any_sharding(
    auto_reference: Path, two_workers, tmp_path: Path, shards: int, batch_size: int
) -> None:  # type: ignore[no-untyped-def]
    table = calibrate(tmp_path / "out", two_workers, batch_size, shards, 2, method="auto")
    assert table == (auto_reference / "calibration.json").read_bytes()


def test_the_auto_table_takes_each_threshold_from_the_method_it_names(auto_reference: Path, tmp_path: Path) -> None:
    """Every tensor's threshold and divergence are those its method's own table holds, from the same
    histograms; the demo's tensors do not all pick one method; the slice size is recorded."""
    auto = json.loads((auto_reference / "calibration.json").read_text())
    assert auto["metadata"]["method"] == "auto" and auto["metadata"]["auto_examples"] == "64"
    methods = {tensor["method"] for tensor in auto["tensors"]}
    assert len(methods) > 1 and methods <= {"percentile", "entropy", "mse"}
    own = {
        method: rethreshold(
            str(auto_reference / "histograms"), ThresholdSettings(method=method), str(tmp_path)
        ).by_name()
        for method in methods
    }
    for tensor in auto["tensors"]:
        record = own[tensor["method"]][tensor["name"]]
        assert (tensor["threshold"], tensor["divergence"]) == (
            record.threshold,
            None if math.isnan(record.divergence) else record.divergence,
        )


def test_the_reference_table_holds_a_bias_correction_for_every_layer(reference: bytes) -> None:
    corrections = json.loads(reference)["bias_corrections"]
    layers = [node for node in onnx.load(MODEL).graph.node if node.op_type in ("Conv", "Gemm")]
    assert sorted(corrections) == sorted(node.name for node in layers)
    assert all(any(shift != 0.0 for shift in shifts) for shifts in corrections.values())


def test_a_model_whose_products_blas_sums_by_thread_count_gives_one_table_for_one_or_two_workers(
    two_workers,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """One embedded worker on two cores had two BLAS threads, two workers one each: the 1000-wide Gemms'
    activations, and so the table, followed --workers. Here the one worker is forked with one BLAS thread
    and the two with the default (every core), and the tables must still agree."""
    model = tmp_path / "wide_mlp.onnx"
    onnx.save(wide_mlp_model(), model)
    with threadpool_limits(1, user_api="blas"), dask_client(workers=1) as (one_worker, _):
        alone = calibrate(tmp_path / "one", one_worker, 64, 1, 1, model=str(model), engine="int8flow")
    assert calibrate(tmp_path / "two", two_workers, 16, 5, 2, model=str(model), engine="int8flow") == alone


@pytest.mark.parametrize(("shards", "batch_size"), [(1, 64), (5, 16)])
def test_the_numpy_reference_engine_gives_one_table_for_any_sharding(
    two_workers, tmp_path: Path, shards: int, batch_size: int
) -> None:  # type: ignore[no-untyped-def]
    """``--engine int8flow`` (the exact reference executor) keeps the contract too; its table differs
    from onnxruntime's only by the last bits of the float32 activations."""
    with dask_client(workers=1) as (one_worker, _):
        alone = calibrate(tmp_path / "one", one_worker, 64, 1, 1, engine="int8flow")
    assert calibrate(tmp_path / "two", two_workers, batch_size, shards, 2, engine="int8flow") == alone


VALIDATION_SPLITS = [(1, 64, 1), (5, 16, 2), (12, 7, 2)]


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory, two_workers) -> dict[tuple[int, int, int], object]:  # type: ignore[no-untyped-def]
    """The accuracy (FP32 and INT8 by the engine and int8flow, and the deployed model in onnxruntime)
    of one calibration, validated under each (shards, batch size, workers) split."""
    out = tmp_path_factory.mktemp("validated") / "out"
    accuracies = {}
    with dask_client(workers=1) as (one_worker, _):
        for shards, batch_size, workers in VALIDATION_SPLITS:
            client = one_worker if workers == 1 else two_workers
            plan_run(replace(config(out, batch_size, shards, workers, val_data=VAL), overwrite=True))
            stages.observe(str(out), client)
            stages.thresholds(str(out))
            stages.correct(str(out), client)
            stages.build(str(out))
            record = stages.validate(str(out), client)
            assert record is not None
            accuracies[(shards, batch_size, workers)] = record.accuracy
    return accuracies


def test_validation_and_the_deployment_check_do_not_depend_on_the_split(validated) -> None:  # type: ignore[no-untyped-def]
    first, *others = validated.values()
    assert first.deploy_runtime == "onnxruntime" and first.deploy_agreement_top1 is not None
    assert first.deploy_agreement_top1 >= 99.0 and first.examples == CALIB_EXAMPLES
    assert all(other == first for other in others)


def test_rerun_with_fewer_shards_removes_the_stale_partials(reference: bytes, two_workers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calibrate(tmp_path / "out", two_workers, 64, 7, 2)
    assert calibrate(tmp_path / "out", two_workers, 64, 3, 2) == reference
    assert len(list((tmp_path / "out" / "histograms").iterdir())) == 3


def test_a_shard_rerun_rewrites_its_file_identically(two_workers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calibrate(tmp_path / "out", two_workers, 64, 4, 2)
    before = {path.name: path.read_bytes() for path in (tmp_path / "out" / "histograms").iterdir()}
    stages.observe(str(tmp_path / "out"), two_workers)
    after = {path.name: path.read_bytes() for path in (tmp_path / "out" / "histograms").iterdir()}
    assert after == before


def worker_killer(client, stage: str, killed: list[int]) -> ProgressSink:  # type: ignore[no-untyped-def]
    """A progress sink that SIGKILLs the second worker once the first shard of ``stage`` is done."""
    pids = list(client.run(os.getpid).values())

    def kill_after_first_shard(reported: str, done: int, total: int, examples: int, seconds: float) -> None:
        if reported == stage and done == 1 and not killed:
            os.kill(pids[1], signal.SIGKILL)
            killed.append(pids[1])

    return kill_after_first_shard


@pytest.mark.parametrize("stage", ["observe", "correct"])
def test_a_worker_killed_mid_calibration_does_not_change_the_table(
    reference: bytes, tmp_path: Path, stage: str
) -> None:
    """SIGKILL one worker process after the first shard of a pass: its shards are recomputed elsewhere."""
    with dask_client(workers=2) as (client, _):
        killed: list[int] = []
        table = calibrate(tmp_path / "out", client, 16, 12, 2, worker_killer(client, stage, killed))
        survivors = list(client.run(os.getpid).values())
    assert killed and killed[0] not in survivors
    assert table == reference


def test_a_worker_killed_mid_choice_does_not_change_the_auto_table(auto_reference: Path, tmp_path: Path) -> None:
    with dask_client(workers=2) as (client, _):
        killed: list[int] = []
        table = calibrate(tmp_path / "out", client, 16, 12, 2, worker_killer(client, "choose", killed), method="auto")
        survivors = list(client.run(os.getpid).values())
    assert killed and killed[0] not in survivors
    assert table == (auto_reference / "calibration.json").read_bytes()


def test_a_worker_killed_mid_validate_does_not_change_the_accuracy(tmp_path: Path) -> None:
    """SIGKILL one worker after the first validation shard: the accuracy equals an undisturbed validation."""
    out = tmp_path / "out"
    with dask_client(workers=2) as (client, _):
        plan_run(config(out, 16, 12, 2, val_data=VAL))
        stages.observe(str(out), client)
        stages.thresholds(str(out))
        stages.build(str(out))
        undisturbed = stages.validate(str(out), client)
        killed: list[int] = []
        disturbed = stages.validate(str(out), client, worker_killer(client, "validate", killed))
        survivors = list(client.run(os.getpid).values())
    assert killed and killed[0] not in survivors
    assert undisturbed is not None and disturbed is not None
    assert disturbed.accuracy == undisturbed.accuracy and disturbed.accuracy.examples == CALIB_EXAMPLES


def test_an_external_cluster_gives_the_same_table(
    reference: bytes, external_dask_scheduler: str, tmp_path: Path
) -> None:
    with dask_client(external_dask_scheduler) as (client, info):
        assert info.kind == "external" and info.scheduler == external_dask_scheduler
        assert calibrate(tmp_path / "out", client, 32, 5, 1) == reference


def test_an_unreachable_scheduler_fails_fast_naming_it() -> None:
    with pytest.raises(ClusterUnavailableError, match=r"tcp://127\.0\.0\.1:9 did not answer"):
        with dask_client("tcp://127.0.0.1:9"):
            pass


def write_idx_split(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """``train`` idx files of ``images`` (uint8, N x 28 x 28) and ``labels``, as the MNIST format lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", *images.shape)
    (folder / "train-images-idx3-ubyte").write_bytes(header + images.astype(np.uint8).tobytes())
    label_header = struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", len(labels))
    (folder / "train-labels-idx1-ubyte").write_bytes(label_header + labels.astype(np.uint8).tobytes())


def calibrate_folder(data: Path, out: Path, client) -> bytes:  # type: ignore[no-untyped-def]
    plan_run(replace(config(out, 32, 2, 2), calib_data=f"{data}#train", calib_examples=128))
    stages.observe(str(out), client)
    stages.thresholds(str(out))
    return (out / "calibration.json").read_bytes()


def test_a_reused_worker_reads_a_rewritten_dataset_afresh(two_workers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A long-lived worker (an external cluster serving every nightly run) caches opened data sets; a
    data set rewritten at the same URI between runs must be read as it is now, not as cached."""
    images, labels = load_mnist_split(fashion_mnist_folder(), "train")
    data = tmp_path / "data"
    write_idx_split(data, images[:128], labels[:128])
    first = calibrate_folder(data, tmp_path / "first", two_workers)
    write_idx_split(data, 255 - images[128:256], labels[128:256])  # the same URI, other (inverted) images
    second = calibrate_folder(data, tmp_path / "second", two_workers)
    with dask_client(workers=1) as (fresh, _):
        expected = calibrate_folder(data, tmp_path / "fresh", fresh)
    assert second == expected
    assert second != first

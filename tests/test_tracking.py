"""MLflow tracking against a real SQLite store: what a run, a registration and the runs table hold."""

from __future__ import annotations

import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import fsspec
import mlflow.artifacts
import onnx
import pytest
from conftest import DEMO_MODEL
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Run
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow_server import running_mlflow_server

from int8flow.schemas.run_config import RunConfig
from int8flow.tasks.cli.main import EXIT_UNAVAILABLE, main
from int8flow.tasks.data import fashion_mnist_folder
from int8flow.tasks.graph.load import ModelLoadError
from int8flow.tasks.run.plan import plan_run
from int8flow.tasks.tracking.logged_model import ModelToLog
from int8flow.tasks.tracking.mlflow_store import (
    INT8_MODEL_NAME,
    TrackingUnavailableError,
    check_tracking_store,
    default_experiment_name,
    experiment_for,
    find_run,
    log_run,
    register_int8_model,
    runs_table,
    tracking_client,
)
from int8flow.tasks.tracking.store_uri import default_tracking_uri

MODEL = DEMO_MODEL
CONCURRENT_RUNS = 4
CONCURRENT_CHILD = """
import sys, time
from pathlib import Path
from int8flow.tasks.tracking.mlflow_store import experiment_for, log_run

store, folder, artifacts, index = sys.argv[1:5]
(Path(folder) / f"ready-{index}").touch()
deadline = time.monotonic() + 300
while not (Path(folder) / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.005)
experiment_id = experiment_for(store, "int8flow/concurrent")
print(log_run(store, experiment_id, f"run-{index}", {"index": index}, {"int8_top1": 0.9}, {}, artifacts))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: creating its tables takes seconds, each test uses its own experiment."""
    return default_tracking_uri(str(tmp_path_factory.mktemp("store")))


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """The outputs of a calibration: the INT8 model at the top, tables and reports in folders."""
    directory = tmp_path / "outputs"
    (directory / "tables").mkdir(parents=True)
    (directory / "reports").mkdir()
    shutil.copyfile(MODEL, directory / "model.int8.onnx")
    (directory / "tables" / "calibration.json").write_text('{"conv1": 2.5}')
    (directory / "reports" / "accuracy.txt").write_text("int8 top1 0.9012\n")
    return directory


def artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    files = []
    for info in client.list_artifacts(run_id, path):
        files.extend(artifact_files(client, run_id, info.path) if info.is_dir else [info.path])
    return sorted(files)


def user_tags(run: Run) -> dict[str, str]:
    return {key: value for key, value in run.data.tags.items() if not key.startswith("mlflow.")}


INT8_MODEL_TO_LOG = ModelToLog("model.int8.onnx", INT8_MODEL_NAME)


def log_simple_run(store: str, experiment_id: str, artifacts: Path, run_key: str | None = None) -> str:
    """A run with its INT8 model logged as an MLflow model, as ``run_logging.track`` logs one."""
    return log_run(
        store,
        experiment_id,
        "simple",
        {"method": "entropy"},
        {"accuracy/int8_top1": 0.9},
        {},
        str(artifacts),
        run_key,
        model=INT8_MODEL_TO_LOG,
    )


def test_default_tracking_uri_is_a_sqlite_file_in_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri("out") == f"sqlite:///{tmp_path.resolve()}/out/mlflow.db"


@pytest.mark.parametrize(
    ("model_uri", "name"),
    [
        ("examples/models/fashion_mnist_resnet.onnx", "int8flow/fashion_mnist_resnet"),
        ("s3://zoo/cnn/resnet50.onnx?versionId=3", "int8flow/resnet50"),
        ("https://host/models/model.int8.onnx", "int8flow/model.int8"),
        ("models:/fmnist@champion", "int8flow/fmnist"),
        ("models:/fmnist/3", "int8flow/fmnist"),
    ],
)
def test_default_experiment_name_names_the_model(model_uri: str, name: str) -> None:
    assert default_experiment_name(model_uri) == name


def test_default_experiment_name_rejects_a_malformed_registry_uri() -> None:
    with pytest.raises(ModelLoadError) as error:
        default_experiment_name("models:/fmnist")
    assert str(error.value) == (
        "models:/fmnist: not a registered model URI; use models:/<name>@<alias> or models:/<name>/<version>"
    )


def test_experiment_for_creates_once_with_artifacts_beside_the_database(store: str) -> None:
    experiment_id = experiment_for(store, "int8flow/fashion_mnist_resnet")
    assert experiment_for(store, "int8flow/fashion_mnist_resnet") == experiment_id
    database = Path(store.removeprefix("sqlite:///"))
    expected = (database.parent / "mlartifacts" / "int8flow_fashion_mnist_resnet").as_uri()
    experiment = tracking_client(store).get_experiment(experiment_id)
    assert experiment.artifact_location == expected
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow's GenAI view


def test_an_existing_experiment_gets_the_model_development_kind_unless_it_has_one(store: str) -> None:
    client = tracking_client(store)
    untagged = client.create_experiment("int8flow/older")
    chosen = client.create_experiment("int8flow/chosen", tags={"mlflow.experimentKind": "finetuning"})
    assert experiment_for(store, "int8flow/older") == untagged
    assert experiment_for(store, "int8flow/chosen") == chosen
    assert client.get_experiment(untagged).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "finetuning"


def test_run_artifacts_stay_under_the_database_folder_not_the_working_directory(
    store: str, artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    working = tmp_path / "cwd"
    working.mkdir()
    monkeypatch.chdir(working)
    run_id = log_simple_run(store, experiment_for(store, "int8flow/cwd-check"), artifacts)
    artifact_uri = tracking_client(store).get_run(run_id).info.artifact_uri
    database_folder = Path(store.removeprefix("sqlite:///")).parent
    assert artifact_uri == f"{database_folder.as_uri()}/mlartifacts/int8flow_cwd-check/{run_id}/artifacts"
    assert list(working.iterdir()) == []


def test_log_run_records_params_metrics_tags_and_artifacts_exactly(store: str, artifacts: Path, tmp_path: Path) -> None:
    per_layer = {f"layer_{index:03d}": str(index) for index in range(250)}  # more than one batch of 100
    params = {"method": "entropy", "calib_examples": "512", "exclude": ""} | per_layer
    metrics = {"fp32_top1": 0.9125, "int8_top1": 0.9087, "top1_drop": 0.0038, "calib_seconds": 41.5}
    tags = {"int8flow.model": "fashion_mnist_resnet", "int8flow.gate": "passed"}
    experiment_id = experiment_for(store, "int8flow/exact")

    run_id = log_run(store, experiment_id, "entropy-512", params, metrics, tags, str(artifacts))

    client = tracking_client(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "entropy-512"
    assert run.data.params == params
    assert run.data.metrics == metrics
    assert user_tags(run) == tags
    assert artifact_files(client, run_id) == ["model.int8.onnx", "reports/accuracy.txt", "tables/calibration.json"]
    downloaded = client.download_artifacts(run_id, "model.int8.onnx", str(tmp_path / "download"))
    assert Path(downloaded).read_bytes() == MODEL.read_bytes()


def test_log_run_cuts_a_param_value_to_mlflows_limit(store: str, artifacts: Path) -> None:
    experiment_id = experiment_for(store, "int8flow/long-param")
    run_id = log_run(store, experiment_id, "long", {"excluded_nodes": "x" * 7000}, {}, {}, str(artifacts))
    assert tracking_client(store).get_run(run_id).data.params == {"excluded_nodes": "x" * 6000}


def test_log_run_reads_an_fsspec_folder_and_skips_half_written_files(store: str, memory_dir: str) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{memory_dir}/model.int8.onnx", MODEL.read_bytes())
    fs.pipe(f"{memory_dir}/tables/calibration.json", b"{}")
    fs.pipe(f"{memory_dir}/tables/.calibration.json.tmp-0123456789abcdef", b"{")
    run_id = log_run(store, experiment_for(store, "int8flow/fsspec"), "remote", {}, {}, {}, memory_dir)
    assert artifact_files(tracking_client(store), run_id) == ["model.int8.onnx", "tables/calibration.json"]


def test_log_run_with_a_known_run_key_returns_the_finished_run(store: str, artifacts: Path) -> None:
    experiment_id = experiment_for(store, "int8flow/dedup")
    first = log_simple_run(store, experiment_id, artifacts, run_key="nightly-2026-11-26")
    second = log_simple_run(store, experiment_id, artifacts, run_key="nightly-2026-11-26")
    assert second == first
    assert [run.info.run_id for run in tracking_client(store).search_runs([experiment_id])] == [first]
    assert find_run(store, experiment_id, "int8flow.run_key", "nightly-2026-11-26") == first
    assert find_run(store, experiment_id, "int8flow.run_key", "nightly-2026-11-27") is None


def test_a_missing_artifacts_folder_is_reported_before_any_run_exists(store: str, tmp_path: Path) -> None:
    experiment_id = experiment_for(store, "int8flow/no-outputs")
    missing = tmp_path / "missing"
    with pytest.raises(ValueError) as error:
        log_simple_run(store, experiment_id, missing)
    assert str(error.value) == f"{missing}: artifacts directory not found; write the run's outputs there first"
    assert tracking_client(store).search_runs([experiment_id]) == []


def test_a_run_that_fails_while_logging_is_failed_and_not_reused(store: str, artifacts: Path) -> None:
    experiment_id = experiment_for(store, "int8flow/failed")
    with pytest.raises(MlflowException):
        log_run(store, experiment_id, "bad", {}, {"top1_drop%": 0.1}, {}, str(artifacts), run_key="retry-me")
    [failed] = tracking_client(store).search_runs([experiment_id])
    assert failed.info.status == "FAILED"

    retried = log_simple_run(store, experiment_id, artifacts, run_key="retry-me")
    assert retried != failed.info.run_id
    assert find_run(store, experiment_id, "int8flow.run_key", "retry-me") == retried


def test_registering_a_run_twice_keeps_one_version_with_alias_and_tags(store: str, artifacts: Path) -> None:
    run_id = log_simple_run(store, experiment_for(store, "int8flow/register"), artifacts)
    tags = {"int8flow.method": "entropy", "int8flow.gate": "passed"}

    first = register_int8_model(store, "fmnist-int8", run_id, tags=tags, alias="champion")
    second = register_int8_model(store, "fmnist-int8", run_id, tags=tags, alias="champion")

    client = tracking_client(store)
    assert (first, second) == ("1", "1")
    [version] = client.search_model_versions("name = 'fmnist-int8'")
    assert version.run_id == run_id
    (output,) = client.get_run(run_id).outputs.model_outputs
    assert version.source == f"models:/{output.model_id}"
    assert version.tags == tags
    assert str(client.get_model_version_by_alias("fmnist-int8", "champion").version) == "1"
    assert client.get_run(run_id).data.tags["int8flow.registered_version"] == "1"


def test_registering_a_run_without_a_logged_model_names_the_remedy_and_registers_nothing(
    store: str, artifacts: Path
) -> None:
    run_id = log_run(store, experiment_for(store, "int8flow/no-model"), "bare", {}, {}, {}, str(artifacts))
    with pytest.raises(ValueError) as error:
        register_int8_model(store, "fmnist-int8-missing", run_id)
    assert str(error.value) == (
        f"run {run_id} has no logged model 'int8-model'; log the INT8 model with the run before registering it"
    )
    assert tracking_client(store).search_registered_models("name = 'fmnist-int8-missing'") == []


def test_runs_table_compares_runs_newest_first(store: str, artifacts: Path) -> None:
    experiment_id = experiment_for(store, "int8flow/table")
    older = log_run(
        store,
        experiment_id,
        "minmax",
        {"method": "minmax", "calib_examples": "256"},
        {
            "accuracy/fp32_top1": 0.9125,
            "accuracy/int8_top1": 0.8871,
            "accuracy/top1_drop": 0.0254,
            "accuracy/agreement_top1": 0.95,
            "time/calib_seconds": 12.34,
        },
        {"int8flow.model": "fashion_mnist_resnet", "int8flow.gate": "failed"},
        str(artifacts),
    )
    newer = log_run(
        store,
        experiment_id,
        "entropy",
        {"method": "entropy"},
        {"accuracy/fp32_top1": 0.9125, "accuracy/int8_top1": 0.9087},
        {"int8flow.model": "fashion_mnist_resnet", "int8flow.gate": "passed"},
        str(artifacts),
        model=INT8_MODEL_TO_LOG,
    )
    register_int8_model(store, "fmnist-table", newer)
    client = tracking_client(store)
    assert client.get_run(newer).info.start_time > client.get_run(older).info.start_time

    columns, rows = runs_table(store, "int8flow/table")

    assert columns == [
        "run", "start (UTC)", "model", "method", "calib examples", "fp32_top1", "int8_top1", "top1_drop",
        "agreement_top1", "calib_seconds", "gate", "registered version",
    ]  # fmt: skip
    assert [row[2:] for row in rows] == [
        ["fashion_mnist_resnet", "entropy", "-", "0.9125", "0.9087", "-", "-", "-", "passed", "1"],
        ["fashion_mnist_resnet", "minmax", "256", "0.9125", "0.8871", "0.0254", "0.9500", "12.3", "failed", "-"],
    ]
    assert [row[0] for row in rows] == [newer[:8], older[:8]]
    assert len(rows[0][1]) == len("2026-11-26 09:23:13")


def test_runs_table_without_a_name_covers_every_int8flow_experiment(store: str, artifacts: Path) -> None:
    outside = log_simple_run(store, experiment_for(store, "someone-else"), artifacts)
    inside = log_simple_run(store, experiment_for(store, "int8flow/listed"), artifacts)
    client = tracking_client(store)
    int8flow_ids = [
        experiment.experiment_id
        for experiment in client.search_experiments()
        if experiment.name.startswith("int8flow/")
    ]
    expected = [
        run.info.run_id[:8] for run in client.search_runs(int8flow_ids, order_by=["attributes.start_time DESC"])
    ]

    _, rows = runs_table(store, None)

    assert [row[0] for row in rows] == expected
    assert rows[0][0] == inside[:8]
    assert outside[:8] not in expected


def test_runs_table_of_an_unknown_experiment_lists_the_existing_ones(tmp_path: Path) -> None:
    store = default_tracking_uri(str(tmp_path))
    experiment_for(store, "int8flow/fashion_mnist_resnet")
    with pytest.raises(ValueError) as error:
        runs_table(store, "int8flow/resnet50")
    assert str(error.value) == (
        f"no experiment 'int8flow/resnet50' in {store} (experiments: Default, int8flow/fashion_mnist_resnet); "
        "pass one of those names"
    )


def test_an_unreachable_tracking_server_is_a_retryable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    server = f"http://127.0.0.1:{port}"
    with pytest.raises(TrackingUnavailableError) as error:
        experiment_for(server, "int8flow/fashion_mnist_resnet")
    assert str(error.value) == (
        f"MLflow tracking server {server} unreachable (ConnectionError); start it or fix the tracking URI, then retry"
    )


def closed_port_server() -> str:
    """The URL of a port nothing listens on: bound, then released."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{closed.getsockname()[1]}"


def last_error(stderr: Path) -> str:
    """The last ``SomeError: message`` line of a child's stderr: what a failure report should show."""
    lines = stderr.read_text().splitlines()
    errors = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception)\b", line)]
    return (errors or lines or ["(no output)"])[-1]


@pytest.mark.slow
def test_runs_that_create_one_sqlite_store_at_the_same_moment_all_log(tmp_path: Path, artifacts: Path) -> None:
    """Concurrent runs on one host are the nightly DAG's normal case: N processes wait at a start file
    (imports done), then all open the same new database at once; each must log its run."""
    store = default_tracking_uri(str(tmp_path / "shared"))
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as files:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CONCURRENT_CHILD, store, str(logs), str(artifacts), str(index)],
                stdout=files.enter_context((logs / f"out-{index}").open("w")),
                stderr=files.enter_context((logs / f"err-{index}").open("w")),
            )
            for index in range(CONCURRENT_RUNS)
        ]
        try:
            ready_by = time.monotonic() + 300  # four MLflow imports on two busy cores
            while len(list(logs.glob("ready-*"))) < CONCURRENT_RUNS:
                assert all(child.poll() is None for child in children), "a child died before the start signal"
                assert time.monotonic() < ready_by, "children not ready in 300 s"
                time.sleep(0.05)
            (logs / "go").touch()
            done_by = time.monotonic() + 300
            codes = [child.wait(timeout=max(1.0, done_by - time.monotonic())) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    failures = {index: last_error(logs / f"err-{index}") for index, code in enumerate(codes) if code != 0}
    assert failures == {}

    client = tracking_client(store)
    experiment = client.get_experiment_by_name("int8flow/concurrent")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == [f"run-{index}" for index in range(CONCURRENT_RUNS)]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert sorted(run.info.run_id for run in runs) == sorted(
        (logs / f"out-{index}").read_text().strip() for index in range(CONCURRENT_RUNS)
    )
    assert sorted(experiment.name for experiment in client.search_experiments()) == ["Default", "int8flow/concurrent"]


def plan_config(out: Path, tracking_uri: str) -> RunConfig:
    return RunConfig.from_mapping(
        {
            "model": str(MODEL),
            "calib_data": f"{fashion_mnist_folder()}#train",
            "preprocess": "mnist",
            "calib_examples": 256,
            "workers": 1,
            "out": str(out),
            "tracking_uri": tracking_uri,
        }
    )


def test_planning_against_an_unreachable_tracking_server_fails_in_seconds_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # MLflow's default: minutes of retries
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    server = closed_port_server()
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as error:
        plan_run(plan_config(tmp_path / "out", server), cwd=str(tmp_path / "cwd"))
    assert time.monotonic() - started < 15
    assert str(error.value) == (
        f"MLflow tracking server {server} unreachable (ConnectionError); start it or fix the tracking URI, then retry"
    )
    assert list(tmp_path.iterdir()) == []


def test_int8flow_run_against_an_unreachable_tracking_server_exits_3_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = closed_port_server()
    out = tmp_path / "out"
    started = time.monotonic()
    code = main(
        ["run", str(MODEL), "--calib-data", f"{fashion_mnist_folder()}#train", "--preprocess", "mnist"]
        + ["--workers", "1", "--out", str(out), "--tracking-uri", server]
    )
    assert (code, time.monotonic() - started < 15, out.exists()) == (EXIT_UNAVAILABLE, True, False)
    assert capsys.readouterr().err == (
        f"int8flow: error: MLflow tracking server {server} unreachable (ConnectionError); "
        "start it or fix the tracking URI, then retry\n"
    )


def test_planning_creates_the_sqlite_store_before_any_work(tmp_path: Path) -> None:
    store = default_tracking_uri(str(tmp_path / "new" / "folder"))
    plan_run(plan_config(tmp_path / "out", store))
    database = tmp_path / "new" / "folder" / "mlflow.db"
    assert database.exists()
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"experiments", "runs", "registered_models", "alembic_version"} <= tables
    assert [experiment.name for experiment in tracking_client(store).search_experiments()] == ["Default"]


def test_a_sqlite_store_whose_folder_cannot_be_made_is_bad_input_found_while_planning(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    store = default_tracking_uri(str(tmp_path / "a-file" / "sub"))
    out = tmp_path / "out"
    with pytest.raises(ValueError) as error:
        plan_run(plan_config(out, store))
    assert str(error.value).startswith(
        f"tracking store {store}: cannot create or write {tmp_path / 'a-file' / 'sub'} ("
    )
    assert str(error.value).endswith("); choose a writable folder for --tracking-uri")
    assert not out.exists()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow_server(tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.mark.slow
def test_a_running_tracking_server_passes_the_check_and_a_wrong_path_is_bad_input(mlflow_server: str) -> None:
    check_tracking_store(mlflow_server, 5.0)
    check_tracking_store(f"{mlflow_server}/", 5.0)
    wrong = f"{mlflow_server}/not-mlflow"
    with pytest.raises(ValueError) as error:
        check_tracking_store(wrong, 5.0)
    assert str(error.value) == (
        f"{wrong} answered HTTP 404 to an MLflow API request, so it is no MLflow tracking server; fix the tracking URI"
    )


@pytest.mark.slow
def test_a_tracking_server_registers_the_runs_logged_model_once(mlflow_server: str, artifacts: Path) -> None:
    """A server checks what a SQLite store does not: a ``models:/<id>`` source must come with its model id."""
    run_id = log_simple_run(mlflow_server, experiment_for(mlflow_server, "int8flow/server-register"), artifacts)
    versions = [register_int8_model(mlflow_server, "fmnist-server", run_id, alias="champion") for _ in range(2)]
    client = tracking_client(mlflow_server)
    (output,) = client.get_run(run_id).outputs.model_outputs
    (version,) = client.search_model_versions("name = 'fmnist-server'")
    assert (versions, version.source, version.run_id) == (["1", "1"], f"models:/{output.model_id}", run_id)
    assert str(client.get_model_version_by_alias("fmnist-server", "champion").version) == "1"


def test_a_tracking_server_run_has_a_page_and_a_local_store_none() -> None:
    from int8flow.schemas.uri_redaction import REDACTED
    from int8flow.tasks.tracking.run_logging import mlflow_run_url

    assert mlflow_run_url("https://bob:s3cr3t@mlflow.example/", "3", "abc") == (
        f"https://{REDACTED}@mlflow.example/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert mlflow_run_url("sqlite:///mlflow.db", "3", "abc") is None


def test_creating_a_new_store_prints_nothing(tmp_path: Path) -> None:
    """MLflow announces each table and migration of a new SQLite store on stderr, which Airflow's
    task log labels ERROR; int8flow makes stores routinely, so it holds them back."""
    uri = f"sqlite:///{tmp_path}/fresh.db"
    code = f"from int8flow.tasks.tracking.mlflow_store import experiment_for; experiment_for({uri!r}, 'int8flow/x')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "fresh.db").is_file(), done.stderr[-2000:]
    assert (done.stdout, done.stderr) == ("", "")


def test_the_best_policy_moves_the_alias_only_to_a_version_that_measured_at_least_as_well(
    store: str, artifacts: Path
) -> None:
    from int8flow.schemas.run_config import RunConfig
    from int8flow.tasks.tracking.run_logging import takes_alias

    experiment_id = experiment_for(store, "int8flow/alias-policy")
    held_metrics = {"accuracy/int8_top1": 91.5, "accuracy/top1_drop": 0.3}
    held = log_run(store, experiment_id, "held", {}, held_metrics, {}, str(artifacts), model=INT8_MODEL_TO_LOG)
    register_int8_model(store, "fmnist-policy", held, alias="champion")

    def config(policy: str) -> RunConfig:
        values = {"model": "m.onnx", "calib_data": "d", "register": "fmnist-policy", "alias": "champion"}
        return RunConfig.from_mapping({**values, "alias_policy": policy})

    best = config("best:int8_top1")
    assert not takes_alias(store, best, {"accuracy/int8_top1": 91.4})
    assert takes_alias(store, best, {"accuracy/int8_top1": 91.5})  # a tie goes to the newer version
    assert not takes_alias(store, best, {})  # not measured (no validation): never over one that was
    assert takes_alias(store, config("best:top1_drop"), {"accuracy/top1_drop": 0.2})  # drops: lower is better
    assert not takes_alias(store, config("best:top1_drop"), {"accuracy/top1_drop": 0.4})
    assert takes_alias(store, config("latest"), {"accuracy/int8_top1": 10.0})
    unheld = RunConfig.from_mapping({**best.as_dict(), "alias": "nightly"})
    assert takes_alias(store, unheld, {"accuracy/int8_top1": 10.0})  # the alias points nowhere yet


def test_the_int8_model_is_logged_as_an_onnx_model_with_the_graphs_signature(
    store: str, artifacts: Path, tmp_path: Path
) -> None:
    client = tracking_client(store)
    run_id = log_simple_run(store, experiment_for(store, "int8flow/logged-model"), artifacts)

    (output,) = client.get_run(run_id).outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert (logged.name, logged.status, logged.source_run_id) == ("int8-model", LoggedModelStatus.READY, run_id)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=logged.artifact_location, dst_path=str(tmp_path), tracking_uri=store
        )
    )
    signature = Model.load(str(folder / "MLmodel")).signature
    assert signature.inputs.to_dict() == [
        {"name": "input", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 1, 28, 28)}}
    ]
    assert signature.outputs.to_dict() == [
        {"name": "logits", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 10)}}
    ]
    assert sorted(path.name for path in folder.glob("*.onnx")) == ["model.onnx"]  # no external-data file
    requirements = sorted(line.split("==")[0] for line in (folder / "requirements.txt").read_text().split())
    assert requirements == ["mlflow", "onnx", "onnxruntime"]  # what running it needs, stated, not inferred
    assert onnx.load(folder / "model.onnx").SerializeToString() == onnx.load(MODEL).SerializeToString()


def test_a_registered_fp32_source_is_the_runs_input_model_and_its_version_the_int8_logged_model(
    tmp_path: Path,
) -> None:
    """End to end through ``int8flow run``: FP32 from the registry in, INT8 registered out, linked."""
    store = default_tracking_uri(str(tmp_path / "tracking"))
    client = tracking_client(store)
    fp32_run = log_run(
        store,
        experiment_for(store, "int8flow/fp32-source"),
        "fp32",
        {},
        {},
        {},
        str(DEMO_MODEL.parent),
        files=[DEMO_MODEL.name],
        model=ModelToLog(DEMO_MODEL.name, "fp32-model"),
    )
    register_int8_model(store, "fmnist-fp32", fp32_run, model_name="fp32-model", alias="production")
    (fp32_output,) = client.get_run(fp32_run).outputs.model_outputs

    code = main(
        ["run", "models:/fmnist-fp32@production", "--calib-data", f"{fashion_mnist_folder()}#train"]
        + ["--val-data", f"{fashion_mnist_folder()}#t10k", "--preprocess", "mnist", "--calib-examples", "64"]
        + ["--val-examples", "128", "--workers", "1", "--no-bias-correction", "--out", str(tmp_path / "out")]
        + ["--tracking-uri", store, "--register", "fmnist-int8"]
    )

    assert code == 0
    version = client.get_model_version_by_alias("fmnist-int8", "int8-candidate")
    run = client.get_run(version.run_id)
    assert [model.model_id for model in run.inputs.model_inputs] == [fp32_output.model_id]
    (int8_output,) = run.outputs.model_outputs
    assert version.source == f"models:/{int8_output.model_id}"
    assert client.get_logged_model(int8_output.model_id).tags["int8flow.model"] == "models:/fmnist-fp32@production"
    assert (version.tags["fp32_registered_name"], version.tags["fp32_registered_version"]) == ("fmnist-fp32", "1")


def test_the_logged_models_tags_and_params_carry_no_credentials(store: str, artifacts: Path) -> None:
    from int8flow.schemas.uri_redaction import redact_uri

    secret = "s3://alice:hunter2@bucket/model.onnx"
    model = ModelToLog("model.int8.onnx", INT8_MODEL_NAME, tags={"int8flow.model": secret}, params={"model": secret})
    experiment_id = experiment_for(store, "int8flow/redacted-model")
    run_id = log_run(store, experiment_id, "redacted", {}, {}, {}, str(artifacts), model=model)
    client = tracking_client(store)
    (output,) = client.get_run(run_id).outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert "hunter2" not in redact_uri(secret)
    assert (logged.tags["int8flow.model"], logged.params["model"]) == (redact_uri(secret), redact_uri(secret))

"""Resolving model URIs: paths pass through, registered versions come down as one readable ONNX file."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.artifacts
import mlflow.onnx
import onnx
import pytest
from conftest import DEMO_MODEL

from int8flow.tasks.graph.load import ModelLoadError, read_model_bytes
from int8flow.tasks.tracking.mlflow_store import experiment_for, log_run, tracking_client
from int8flow.tasks.tracking.model_source import ResolvedModel, resolve_model
from int8flow.tasks.tracking.store_uri import default_tracking_uri

MODEL = DEMO_MODEL


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry holding the example model both ways it gets there: a version whose source is a plain
    run artifact ("plain"), and logged with ``mlflow.onnx.log_model`` ("logged", as int8flow registers
    its INT8 models), each as version 1 with alias ``champion``."""
    tracking_uri = default_tracking_uri(str(tmp_path_factory.mktemp("registry")))
    experiment_id = experiment_for(tracking_uri, "int8flow/fashion_mnist_resnet")
    outputs = tmp_path_factory.mktemp("outputs")
    shutil.copyfile(MODEL, outputs / "model.int8.onnx")
    run_id = log_run(tracking_uri, experiment_id, "plain", {}, {}, {}, str(outputs))
    client = tracking_client(tracking_uri)
    client.create_registered_model("plain")
    source = f"{client.get_run(run_id).info.artifact_uri}/model.int8.onnx"
    client.create_model_version("plain", source=source, run_id=run_id)
    client.set_registered_model_alias("plain", "champion", "1")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.onnx.log_model(
                onnx.load(MODEL),
                name="model",
                onnx_execution_providers=["CPUExecutionProvider"],
                registered_model_name="logged",
            )
    tracking_client(tracking_uri).set_registered_model_alias("logged", "champion", "1")
    yield tracking_uri


def test_a_path_or_url_passes_through_without_touching_tracking(tmp_path: Path, memory_dir: str) -> None:
    tracking_dir = tmp_path / "tracking"
    for uri in (str(MODEL), f"{memory_dir}/model.onnx"):
        assert resolve_model(uri, default_tracking_uri(str(tracking_dir)), str(tmp_path)) == ResolvedModel(
            uri, uri, None, None
        )
    assert not tracking_dir.exists()


@pytest.mark.parametrize("reference", ["@champion", "/1"])
def test_a_version_registered_from_a_run_file_downloads_as_the_same_bytes(
    store: str, tmp_path: Path, reference: str
) -> None:
    resolved = resolve_model(f"models:/plain{reference}", store, str(tmp_path))
    assert resolved == ResolvedModel(
        f"models:/plain{reference}", str(tmp_path / "plain" / "1" / "model.int8.onnx"), "plain", "1"
    )
    assert read_model_bytes(resolved.path) == MODEL.read_bytes()


@pytest.mark.parametrize("reference", ["@champion", "/1"])
def test_a_version_logged_with_external_data_downloads_as_one_file_of_the_same_bytes(
    store: str, tmp_path: Path, reference: str
) -> None:
    logged_files = mlflow.artifacts.list_artifacts(
        artifact_uri=tracking_client(store).get_model_version_download_uri("logged", "1"), tracking_uri=store
    )
    assert [info.path.endswith(".data") for info in logged_files].count(True) == 1

    resolved = resolve_model(f"models:/logged{reference}", store, str(tmp_path))

    assert resolved == ResolvedModel(
        f"models:/logged{reference}", str(tmp_path / "logged" / "1" / "model.onnx"), "logged", "1"
    )
    assert read_model_bytes(resolved.path) == MODEL.read_bytes()


def test_a_version_downloads_to_an_fsspec_folder_for_remote_workers(store: str, memory_dir: str) -> None:
    resolved = resolve_model("models:/plain@champion", store, memory_dir)
    assert resolved.path == f"{memory_dir}/plain/1/model.int8.onnx"
    assert read_model_bytes(resolved.path) == MODEL.read_bytes()


def test_a_missing_alias_lists_the_versions_and_aliases_there_are(store: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as error:
        resolve_model("models:/plain@staging", store, str(tmp_path))
    assert str(error.value) == (
        f"models:/plain@staging: registered model 'plain' in {store} has no alias 'staging' "
        "(versions: 1; aliases: @champion->1); use one of those or register the model first"
    )


def test_a_missing_version_lists_the_versions_and_aliases_there_are(store: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as error:
        resolve_model("models:/logged/4", store, str(tmp_path))
    assert str(error.value) == (
        f"models:/logged/4: registered model 'logged' in {store} has no version 4 "
        "(versions: 1; aliases: @champion->1); use one of those or register the model first"
    )


def test_a_missing_registered_model_lists_the_registered_models(store: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as error:
        resolve_model("models:/resnet50@champion", store, str(tmp_path))
    assert str(error.value) == (
        f"models:/resnet50@champion: no registered model 'resnet50' in {store} "
        "(registered models: logged, plain); check the name or the tracking URI"
    )


def test_a_malformed_registry_uri_names_the_expected_forms(store: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as error:
        resolve_model("models:/plain/latest", store, str(tmp_path))
    assert str(error.value) == (
        "models:/plain/latest: not a registered model URI; use models:/<name>@<alias> or models:/<name>/<version>"
    )

"""Turning the model URI a user gives into a location every calibration worker can read ONNX bytes from.

Paths and fsspec URLs already are such a location. A registered model (``models:/name@alias`` or
``models:/name/version``) is downloaded once, by the process that plans the run, into
``download_dir``; workers then read the single ONNX file from there and never talk to MLflow.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
import onnx
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from onnx.checker import MAXIMUM_PROTOBUF

from int8flow.tasks.graph.load import ModelLoadError, fill_external_data, read_external_data
from int8flow.tasks.outputs.atomic_files import atomic_write_bytes
from int8flow.tasks.tracking.mlflow_store import (
    RegistryReference,
    filter_literal,
    reachable,
    registry_reference,
    tracking_client,
)


@dataclass(frozen=True)
class ResolvedModel:
    """Where to read the model from, and which registered version it was, for lineage tags."""

    uri: str
    path: str
    registered_name: str | None
    registered_version: str | None


def resolve_model(uri: str, tracking_uri: str, download_dir: str) -> ResolvedModel:
    """Resolve ``uri``; a registered version is downloaded to ``download_dir``/<name>/<version>/.

    ``download_dir`` may be an fsspec URL (a shared bucket) so that workers on other machines can
    read the file. Weights that MLflow saved as ONNX external data are folded back into the one
    file: the staging folder they were downloaded to is gone when workers run, and the folded file
    has the bytes (and fingerprint) of the model that was logged.
    """
    reference = registry_reference(uri)
    if reference is None:
        return ResolvedModel(uri, uri, None, None)
    client = tracking_client(tracking_uri)
    with reachable(tracking_uri):
        version = _model_version(client, uri, tracking_uri, reference)
        # Not download_artifacts("models:/..."): MLflow resolves those with the process-wide registry URI.
        download_uri = client.get_model_version_download_uri(version.name, version.version)
        with tempfile.TemporaryDirectory(prefix="int8flow-model-") as staging:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=download_uri, dst_path=staging, tracking_uri=tracking_uri, registry_uri=tracking_uri
                )
            )
            onnx_file = _single_onnx_file(local, uri, download_uri)
            data = _self_contained_bytes(onnx_file, f"{uri} ({onnx_file.name} from {download_uri})")
    target = f"{_local_or_url(download_dir)}/{_folder_name(version.name)}/{version.version}/{onnx_file.name}"
    atomic_write_bytes(target, data)
    return ResolvedModel(uri, target, version.name, str(version.version))


def _model_version(client: MlflowClient, uri: str, tracking_uri: str, reference: RegistryReference) -> ModelVersion:
    try:
        registered = client.get_registered_model(reference.name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        names = sorted(model.name for model in client.search_registered_models())
        raise ModelLoadError(
            f"{uri}: no registered model {reference.name!r} in {tracking_uri} "
            f"(registered models: {', '.join(names) or 'none'}); check the name or the tracking URI"
        ) from None
    version = reference.version if reference.alias is None else registered.aliases.get(reference.alias)
    if version is not None:
        try:
            return client.get_model_version(reference.name, str(version))
        except MlflowException as error:
            if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
    versions = sorted(
        int(existing.version) for existing in client.search_model_versions(f"name = {filter_literal(reference.name)}")
    )
    aliases = ", ".join(f"@{alias}->{number}" for alias, number in sorted(registered.aliases.items()))
    wanted = f"alias {reference.alias!r}" if reference.alias is not None else f"version {reference.version}"
    raise ModelLoadError(
        f"{uri}: registered model {reference.name!r} in {tracking_uri} has no {wanted} "
        f"(versions: {', '.join(map(str, versions)) or 'none'}; aliases: {aliases or 'none'}); "
        "use one of those or register the model first"
    )


def _single_onnx_file(local: Path, uri: str, download_uri: str) -> Path:
    """The one ``.onnx`` file of a version: a file source is itself, a logged model holds one."""
    found = [local] if local.is_file() and local.suffix == ".onnx" else sorted(local.rglob("*.onnx"))
    if len(found) != 1:
        listed = ", ".join(path.name for path in found) or "none"
        raise ModelLoadError(
            f"{uri}: expected one .onnx file in the version's artifacts at {download_uri}, found {listed}; "
            "register a version whose source is a single ONNX model"
        )
    return found[0]


def _self_contained_bytes(onnx_file: Path, source: str) -> bytes:
    """The file's bytes, with any external-data tensors loaded into the model itself.

    The data files are read next to ``onnx_file`` in the staging folder (never the working
    directory), with the loader's checks: a location outside the folder or a data file missing from
    the version's artifacts is refused by name. Loading clears ``external_data`` and
    ``data_location``, so a model that ``mlflow.onnx.log_model`` split into graph and weights
    serialises back to the bytes of the model that was logged, and keeps its fingerprint. A model
    whose weights do not fit in one protobuf (2 GiB) is refused: workers read a registered model
    as the one file written to ``download_dir``.
    """
    data = onnx_file.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - not ONNX: the planner's load reports it with the model's name
        return data
    files = read_external_data(model, str(onnx_file), source)
    if not files:
        return data
    fill_external_data(model, files, str(onnx_file), source)
    if model.ByteSize() > MAXIMUM_PROTOBUF:
        raise ModelLoadError(
            f"{source}: with the weights from {', '.join(sorted(files))} the model is over 2 GiB, more than one "
            "ONNX file holds; download the version's files into one folder and calibrate that model.onnx by path"
        )
    return model.SerializeToString()


def _local_or_url(download_dir: str) -> str:
    """An absolute path for a local folder, so the file stays readable from any working directory."""
    fs, path = url_to_fs(download_dir)
    return path.rstrip("/") if isinstance(fs, LocalFileSystem) else download_dir.rstrip("/")


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".") or "model"

"""MLflow tracking for `int8flow run`: experiments, one run per calibration, INT8 model registration.

Every function takes the tracking URI explicitly and builds its own client: MLflow's global
tracking/registry URI is process state, and two calibrations in one process (tests, a Dask client
in a notebook, an Airflow worker running several tasks) must never log into each other's store.
Airflow retries a task that failed half-way, so logging and registering are idempotent: a retry
finds the run or model version the first try left behind instead of adding a duplicate.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse

import requests
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from int8flow.schemas.metric_names import metric_key
from int8flow.schemas.uri_redaction import redact_text
from int8flow.tasks.graph.load import ModelLoadError
from int8flow.tasks.outputs.atomic_files import TEMP_MARKER
from int8flow.tasks.outputs.manifest import through_link
from int8flow.tasks.tracking.logged_model import ModelToLog, log_onnx_model, run_logged_model
from int8flow.tasks.tracking.sqlite_lock import database_lock
from int8flow.tasks.tracking.store_uri import sqlite_file

EXPERIMENT_PREFIX = "int8flow/"
RUN_KEY_TAG = "int8flow.run_key"
MODEL_TAG = "int8flow.model"
GATE_TAG = "int8flow.gate"
REGISTERED_VERSION_TAG = "int8flow.registered_version"
MODEL_SHA256_TAG = "int8flow.model_sha256"
CALIB_FINGERPRINT_TAG = "int8flow.calib_data_fingerprint"
VAL_FINGERPRINT_TAG = "int8flow.val_data_fingerprint"
VERSION_TAG = "int8flow.version"
PLAN_KEY_TAG = "int8flow.plan_key"
SETTING_TAG_PREFIX = "int8flow.setting."
"""Operational settings (``Setting.operational``: where a run ran and where its results went) are tags."""
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, prompts); ours are
# model development: runs with params, metrics and models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
INT8_MODEL_NAME = "int8-model"
"""The logged model of a run's ``model.int8.onnx``: what the registry makes versions of."""
MODELS_URI_FORMS = "models:/<name>@<alias> or models:/<name>/<version>"

TRACKING_CHECK_TIMEOUT_S = 5.0
"""How long planning waits for the tracking server: it answers in milliseconds when it is up."""
SCHEMA_LOCK_TIMEOUT_S = 300.0
"""How long a first client waits while another process creates a SQLite store's tables (seconds, usually)."""

_PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"
MODELS_SCHEME = "models:/"
_LOGGED_MODEL_URI = re.compile(r"models:/(?P<model_id>m-[0-9a-f]+)")
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))")
_NO_TAGS: Mapping[str, str] = MappingProxyType({})
_READY_DATABASES: set[Path] = set()
"""SQLite files this process has opened a store on: MLflow caches that store, so they need no lock again."""


class TrackingUnavailableError(RuntimeError):
    """The tracking server did not answer; transient, so an Airflow task may retry."""


@dataclass(frozen=True)
class RegistryReference:
    """A registered model version named by alias or by number, as in a ``models:/`` URI."""

    name: str
    alias: str | None
    version: str | None


def registry_reference(uri: str) -> RegistryReference | None:
    """Parse a ``models:/`` URI; None for paths and other URLs, which are not in the registry."""
    if not uri.startswith("models:"):
        return None
    match = _MODELS_URI.fullmatch(uri)
    if match is None:
        raise ModelLoadError(f"{uri}: not a registered model URI; use {MODELS_URI_FORMS}")
    return RegistryReference(match["name"], match["alias"], match["version"])


def default_experiment_name(model_uri: str) -> str:
    """``int8flow/<model>``: runs of one model land together whichever file or version they used."""
    reference = registry_reference(model_uri)
    if reference is not None:
        return EXPERIMENT_PREFIX + reference.name
    file_name = posixpath.basename(re.split(r"[?#]", model_uri.replace("\\", "/"), maxsplit=1)[0])
    return EXPERIMENT_PREFIX + (file_name.removesuffix(".onnx") or "model")


def tracking_client(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri`` for runs and registry alike.

    The registry URI is passed too: left out, MLflow takes it from ``MLFLOW_REGISTRY_URI`` or
    ``mlflow.set_registry_uri`` state before falling back to the tracking URI. The first client of
    a process on a SQLite file is built under that file's lock (see :func:`_first_sqlite_client`).
    """
    database = sqlite_file(tracking_uri)
    if database is None:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    if database in _READY_DATABASES:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return _first_sqlite_client(tracking_uri, database)


def check_tracking_store(tracking_uri: str, timeout_s: float = TRACKING_CHECK_TIMEOUT_S) -> None:
    """Fail in seconds, before any work, where the finished run could not be logged.

    A server gets one request, no retries, at most ``timeout_s`` to answer: MLflow's own calls retry
    for minutes, right for the final logging of a long run but not for finding a wrong URI or a
    stopped server. A SQLite store gets its folder made and its tables created (under the lock of
    :func:`tracking_client`). Other stores (Databricks, plugins) are left to MLflow.
    """
    database = sqlite_file(tracking_uri)
    if database is not None:
        _check_sqlite_folder(tracking_uri, database)
        tracking_client(tracking_uri)
        return
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return
    with reachable(tracking_uri):  # MLflow's call, for its credentials and TLS settings (MLFLOW_TRACKING_*)
        response = http_request(
            get_default_host_creds(tracking_uri),
            _PROBE_ENDPOINT,
            "POST",
            max_retries=0,
            timeout=timeout_s,
            raise_on_status=False,
            json={"max_results": 1},
        )
    status = response.status_code
    if status == 200:
        return
    if status == 429 or status >= 500:
        raise TrackingUnavailableError(
            f"MLflow tracking server {tracking_uri} answered HTTP {status}; wait until it recovers, then retry"
        )
    if status in (401, 403):
        raise ValueError(
            f"MLflow tracking server {tracking_uri} refused the request (HTTP {status}); set MLFLOW_TRACKING_TOKEN "
            "or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    raise ValueError(
        f"{tracking_uri} answered HTTP {status} to an MLflow API request, so it is no MLflow tracking server; "
        "fix the tracking URI"
    )


@contextmanager
def reachable(tracking_uri: str) -> Iterator[None]:
    """Re-raise a failed connection to the tracking server as :class:`TrackingUnavailableError`.

    MLflow wraps ``requests`` connection errors in a plain ``MlflowException`` that also covers
    bad requests; only the exception chain tells "server down, retry" from "wrong call, fix it".
    """
    try:
        yield
    except (MlflowException, requests.exceptions.RequestException) as error:
        cause = _connection_failure(error)
        if cause is None:
            raise
        raise TrackingUnavailableError(
            f"MLflow tracking server {tracking_uri} unreachable ({type(cause).__name__}); "
            "start it or fix the tracking URI, then retry"
        ) from error


def experiment_for(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created on first use.

    With a SQLite store, artifacts go beside the database, so they never land in a ``./mlruns`` of
    whatever directory the command happened to run in; a tracking server chooses its own place.
    """
    client = tracking_client(tracking_uri)
    with reachable(tracking_uri):
        existing = client.get_experiment_by_name(name)
        if existing is None:
            try:
                return client.create_experiment(
                    name,
                    artifact_location=_artifact_location(tracking_uri, name),
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            except MlflowException as error:
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
            existing = client.get_experiment_by_name(name)  # a parallel task created it first
        if existing.lifecycle_stage == "deleted":
            raise ValueError(
                f"experiment {name!r} is deleted in {tracking_uri}; restore it "
                f"(mlflow experiments restore --experiment-id {existing.experiment_id}) or choose another name"
            )
        if EXPERIMENT_KIND_TAG not in existing.tags:  # an experiment of an older int8flow; a user's choice stays
            client.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return existing.experiment_id


def find_run(tracking_uri: str, experiment_id: str, tag_key: str, tag_value: str) -> str | None:
    """The newest FINISHED run tagged ``tag_key=tag_value``: failed tries must not count as done."""
    client = tracking_client(tracking_uri)
    with reachable(tracking_uri):
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{tag_key}` = {filter_literal(tag_value)} and attributes.status = 'FINISHED'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
    return runs[0].info.run_id if runs else None


def log_run(
    tracking_uri: str,
    experiment_id: str,
    run_name: str,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    artifacts_dir: str,
    run_key: str | None = None,
    files: Collection[str] | None = None,
    span_ms: tuple[int, int] | None = None,
    model: ModelToLog | None = None,
) -> str:
    """Log one calibration as one FINISHED run and return its id.

    ``model``: an ONNX file of ``artifacts_dir`` to log as an MLflow model of the run too
    (``logged_model``), so the registry can make a version of it.

    ``span_ms``: when the work started and ended (epoch milliseconds), so MLflow's Duration is the
    calibration's, not the logging's; None: now, as logged.

    With ``run_key``, a FINISHED run carrying the same key is returned instead: an Airflow retry
    after the run was logged must not duplicate it. A run that fails while logging is marked FAILED
    so that it is neither mistaken for a result nor found by the next retry.
    """
    fs, root = url_to_fs(artifacts_dir)
    if not fs.isdir(root):
        raise ValueError(f"{artifacts_dir}: artifacts directory not found; write the run's outputs there first")
    if run_key is not None:
        existing = find_run(tracking_uri, experiment_id, RUN_KEY_TAG, run_key)
        if existing is not None:
            return existing
    run_tags = _redacted(tags if run_key is None else {**tags, RUN_KEY_TAG: run_key})
    client = tracking_client(tracking_uri)
    with reachable(tracking_uri):
        start_ms, end_ms = span_ms or (None, None)
        run_id = client.create_run(experiment_id, start_time=start_ms, run_name=run_name, tags=run_tags).info.run_id
        try:
            # MlflowClient.log_batch splits into requests of at most 100 params, within MLflow's limits.
            client.log_batch(
                run_id,
                metrics=[Metric(key, float(value), _now_ms(), 0) for key, value in metrics.items()],
                params=[Param(key, _param_value(value)) for key, value in _redacted(params).items()],
            )
            _log_artifacts(client, run_id, fs, root, files)
            if model is not None:
                redacted = replace(model, tags=_redacted(model.tags), params=_redacted(model.params))
                log_onnx_model(client, experiment_id, run_id, fs.cat_file(f"{root.rstrip('/')}/{model.file}"), redacted)
        except BaseException:
            with suppress(MlflowException):
                client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=end_ms)
    return run_id


def register_int8_model(
    tracking_uri: str,
    name: str,
    run_id: str,
    model_name: str = INT8_MODEL_NAME,
    tags: Mapping[str, str] = _NO_TAGS,
    alias: str | None = None,
) -> str:
    """Register the run's logged model ``model_name`` as a version of ``name`` and return the version.

    The version's source is the logged model, ``models:/<model id>`` as ``mlflow.onnx.log_model``
    registers one, so the registry shows the signature and links the model (a later run that takes
    this version as its FP32 source finds the model from it, :func:`registered_model_id`). A version
    already made from this run is reused, so a retried task keeps one version per run; its tags and
    the alias are (re)applied either way. The run gets the version as tag
    ``int8flow.registered_version`` for the runs table.
    """
    tags = _redacted(tags)
    client = tracking_client(tracking_uri)
    with reachable(tracking_uri):
        model = run_logged_model(client, run_id, model_name)
        if model is None:
            raise ValueError(
                f"run {run_id} has no logged model {model_name!r}; log the INT8 model with the run "
                "before registering it"
            )
        _ensure_registered_model(client, name)
        versions = client.search_model_versions(f"name = {filter_literal(name)} and run_id = {filter_literal(run_id)}")
        if versions:
            version = min(int(existing.version) for existing in versions)
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
        else:
            with _resolving_models_in(tracking_uri):
                version = client.create_model_version(  # a tracking server refuses the source without model_id
                    name,
                    source=f"{MODELS_SCHEME}{model.model_id}",
                    run_id=run_id,
                    tags=dict(tags),
                    model_id=model.model_id,
                ).version
        if alias is not None:
            client.set_registered_model_alias(name, alias, version)
        client.set_tag(run_id, REGISTERED_VERSION_TAG, str(version))
    return str(version)


def registered_model_id(tracking_uri: str, name: str, version: str) -> str | None:
    """The MLflow model behind registered version ``name``/``version`` (its ``models:/<id>`` source);
    None for a version made from a plain file, which has none."""
    client = tracking_client(tracking_uri)
    with reachable(tracking_uri):
        source = client.get_model_version(name, version).source
    match = _LOGGED_MODEL_URI.fullmatch(source)
    return None if match is None else match["model_id"]


_GLOBAL_URI_LOCK = threading.Lock()


@contextmanager
def _resolving_models_in(tracking_uri: str) -> Iterator[None]:
    """MLflow's SQLite registry looks a ``models:/<id>`` source up through a client of the
    process-wide tracking URI (``SqlAlchemyStore.create_model_version``, a TODO of MLflow's), not of
    the client that asked: that URI is ``tracking_uri`` for the call, under a lock, and restored."""
    with _GLOBAL_URI_LOCK, _use_tracking_uri(tracking_uri):
        yield


def alias_metric(tracking_uri: str, name: str, alias: str, metric: str) -> float | None:
    """``metric`` (a plain name, ``metric_names``) of the run behind ``name@alias``; None while the
    alias points nowhere (or that run did not measure it)."""
    client = tracking_client(tracking_uri)
    with reachable(tracking_uri):
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException as error:
            missing = (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE))
            if error.error_code not in missing:
                raise
            return None
        value = client.get_run(version.run_id).data.metrics.get(metric_key(metric))
    return None if value is None else float(value)


def runs_table(tracking_uri: str, experiment_name: str | None) -> tuple[list[str], list[list[str]]]:
    """Columns and rows (newest run first) to compare calibrations side by side, as in the MLflow UI.

    Without an experiment name, every ``int8flow/...`` experiment is included.
    """
    client = tracking_client(tracking_uri)
    with reachable(tracking_uri):
        experiment_ids = _experiment_ids(client, tracking_uri, experiment_name)
        runs = (
            client.search_runs(experiment_ids, order_by=["attributes.start_time DESC"], max_results=1000)
            if experiment_ids
            else []
        )
    return [header for header, _ in _COLUMNS], [[cell(run) for _, cell in _COLUMNS] for run in runs]


def filter_literal(value: str) -> str:
    """``value`` quoted for an MLflow search filter, which has no escape for a quote inside a string."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both quote characters; MLflow search filters cannot match it, remove one")


def _first_sqlite_client(tracking_uri: str, database: Path) -> MlflowClient:
    """This process's first client on ``database``, built while holding the database's lock.

    Building an ``MlflowClient`` builds MLflow's tracking store (``TrackingServiceClient.__init__``
    reads ``self.store``), and ``SqlAlchemyStore.__init__`` creates the tables and runs every alembic
    migration when the file lacks them, with no lock: processes that open one new file at the same
    moment break it. MLflow then caches the store for the URI, and the registry store finds the
    tables made, so only this first construction needs the lock.
    """
    try:
        with database_lock(database, SCHEMA_LOCK_TIMEOUT_S), _quiet_schema_creation():
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            client.search_experiments(max_results=1)  # opens the store even if a later MLflow builds it lazily
    except TimeoutError as error:
        raise TrackingUnavailableError(
            f"tracking store {tracking_uri}: {error} while it creates the MLflow tables; "
            "retry once that process ends (stop it if it hangs)"
        ) from error
    _READY_DATABASES.add(database)
    return client


SCHEMA_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration")
"""They announce each table creation and migration of a new store on stderr, which Airflow's task
log labels ERROR; a new store is routine, so they are held at WARNING while it is made."""


@contextmanager
def _quiet_schema_creation() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in SCHEMA_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_sqlite_folder(tracking_uri: str, database: Path) -> None:
    """The database's folder exists (made if missing) and SQLite can write there and to the file."""
    folder = database.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in (folder, database):
            if path.exists() and not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    except OSError as error:
        raise ValueError(
            f"tracking store {tracking_uri}: cannot create or write {error.filename or folder} "
            f"({error.strerror or error}); choose a writable folder for --tracking-uri"
        ) from error


def _connection_failure(error: BaseException) -> BaseException | None:
    """The ``requests`` connection error or timeout in ``error``'s chain, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    database = sqlite_file(tracking_uri)
    if database is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment_name).strip("._") or "experiment"
    return (database.parent / "mlartifacts" / folder).as_uri()


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _redacted(values: Mapping[str, str]) -> dict[str, str]:
    """What MLflow receives: no value carries a URI's credentials, whoever built it (``uri_redaction``)."""
    return {key: redact_text(value) for key, value in values.items()}


def _param_value(value: str) -> str:
    """Cut to MLflow's 6000-character limit ourselves, so the result does not depend on
    ``MLFLOW_TRUNCATE_LONG_VALUES``: a finished calibration must not lose its run over one long
    value, and the full configuration is among the artifacts."""
    return str(value)[:MAX_PARAM_VAL_LENGTH]


def _log_artifacts(
    client: MlflowClient, run_id: str, fs: AbstractFileSystem, root: str, files: Collection[str] | None
) -> None:
    """Log ``files`` (relative names; None: every file under ``root``) at their relative paths.

    Files are staged locally because MLflow uploads only local files. Symbolic links are never
    followed (a link in an output folder to a credentials file must not become an artifact), and
    half-written temporaries (see ``int8flow.tasks.outputs.atomic_files``) are left out.
    """
    base = root.rstrip("/")
    names = [posixpath.relpath(file, base) for file in fs.find(root)] if files is None else sorted(files)
    with tempfile.TemporaryDirectory(prefix="int8flow-artifacts-") as staging:
        for relative in names:
            file = f"{base}/{relative}"
            if _is_temporary(posixpath.basename(relative)) or through_link(fs, base, relative) or not fs.isfile(file):
                continue
            local = os.path.join(staging, *relative.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            fs.get_file(file, local)
        client.log_artifacts(run_id, staging)


def _is_temporary(file_name: str) -> bool:
    return file_name.startswith(".") and TEMP_MARKER in file_name


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
        return
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def _experiment_ids(client: MlflowClient, tracking_uri: str, experiment_name: str | None) -> list[str]:
    if experiment_name is None:
        experiments = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")
        return [experiment.experiment_id for experiment in experiments]
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        names = sorted(experiment.name for experiment in client.search_experiments())
        raise ValueError(
            f"no experiment {experiment_name!r} in {tracking_uri} (experiments: {', '.join(names) or 'none'}); "
            "pass one of those names"
        )
    return [experiment.experiment_id]


def _param(key: str) -> Callable[[Run], str]:
    return lambda run: run.data.params.get(key, "-")


def _tag(key: str) -> Callable[[Run], str]:
    return lambda run: run.data.tags.get(key, "-")


def _metric(name: str, digits: int) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        value = run.data.metrics.get(metric_key(name))
        return "-" if value is None else f"{value:.{digits}f}"

    return cell


def _start_time(run: Run) -> str:
    return datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


_COLUMNS: tuple[tuple[str, Callable[[Run], str]], ...] = (
    ("run", lambda run: run.info.run_id[:8]),
    ("start (UTC)", _start_time),
    ("model", _tag(MODEL_TAG)),
    ("method", _param("method")),
    ("calib examples", _param("calib_examples")),
    ("fp32_top1", _metric("fp32_top1", 4)),
    ("int8_top1", _metric("int8_top1", 4)),
    ("top1_drop", _metric("top1_drop", 4)),
    ("agreement_top1", _metric("agreement_top1", 4)),
    ("calib_seconds", _metric("calib_seconds", 1)),
    ("gate", _tag(GATE_TAG)),
    ("registered version", _tag(REGISTERED_VERSION_TAG)),
)

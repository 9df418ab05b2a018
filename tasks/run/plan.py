"""The plan of a run: everything later stages need, fixed before any shard starts, saved as run.json.

Planning resolves the model (a registry URI becomes a file in the output directory, so every worker
reads the same bytes), fingerprints the data, checks the preprocessing against the model input and
fixes the shards. Every later stage (CLI or Airflow task) reloads the plan from the output
directory, so only that directory's path has to travel between them. The run key hashes what
determines the results (model, data, settings; not workers, shards or batch size), so a retry of the
same run finds its outputs, and a different run refuses to mix its outputs with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from int8flow.schemas.run_config import RunConfig
from int8flow.schemas.run_folder import (
    BIAS_SUMS_DIR,
    FP32_MODEL,
    HISTOGRAM_DIR,
    PLAN_FILE,
    RUN_SUBFOLDERS,
    STAGE_DIR,
    partial_file_name,
)
from int8flow.schemas.uri_redaction import REDACTED, redact_text
from int8flow.tasks.data.mnist_idx import DatasetError
from int8flow.tasks.data.preprocess import check_batch_fits, check_fits, parse_preprocess
from int8flow.tasks.data.sources import open_dataset
from int8flow.tasks.distributed.cluster import default_worker_count
from int8flow.tasks.distributed.shard_jobs import ModelRef, ShardSpec, check_labels
from int8flow.tasks.graph.fp32_ops import check_supported
from int8flow.tasks.graph.load import ModelLoadError, import_model, load_model
from int8flow.tasks.graph.quantize_pass import QuantizationOptions, calibration_tensors, excluded_nodes
from int8flow.tasks.graph.simplify import simplify
from int8flow.tasks.outputs.atomic_files import atomic_write_bytes, atomic_write_text
from int8flow.tasks.outputs.manifest import linked_names, owned_outputs, record_outputs, remove_outputs
from int8flow.tasks.tracking.mlflow_store import check_tracking_store
from int8flow.tasks.tracking.model_source import resolve_model
from int8flow.tasks.tracking.store_uri import default_tracking_uri

SHARDS_PER_WORKER = 4
_NOT_RESULT_SETTINGS = frozenset(
    {
        "batch_size",
        "scheduler",
        "workers",
        "shards",
        "out",
        "overwrite",
        "tracking_uri",
        "experiment",
        "register",
        "alias",
    }
)


class OutputDirectoryError(ValueError):
    """The output directory holds another run's results."""


@dataclass(frozen=True)
class DataPlan:
    """One data set as the run uses it: ``sample`` of its ``total`` examples."""

    uri: str
    fingerprint: str
    total: int
    sample: int
    seed: int | None


@dataclass(frozen=True)
class RunPlan:
    config: RunConfig
    run_key: str
    model_uri: str
    model: ModelRef
    registered_name: str | None
    registered_version: str | None
    calibration: DataPlan
    validation: DataPlan | None
    shards: int
    tensors: tuple[str, ...]
    tracking_uri: str

    @property
    def out(self) -> str:
        return self.config.out.rstrip("/")

    def path(self, name: str) -> str:
        return f"{self.out}/{name}"

    def histogram_path(self, shard: int) -> str:
        return f"{self.out}/{HISTOGRAM_DIR}/{partial_file_name(shard)}"

    def bias_sums_path(self, shard: int) -> str:
        return f"{self.out}/{BIAS_SUMS_DIR}/{partial_file_name(shard)}"

    def quantization_options(self, extra_exclude: tuple[str, ...] = ()) -> QuantizationOptions:
        return QuantizationOptions(
            self.config.exclude + extra_exclude, not self.config.per_tensor_weights, self.config.unsigned_activations
        )

    def subsample(self, data: DataPlan, count: int) -> DataPlan:
        """A seeded sample of ``count`` examples of ``data``'s data set; ``data`` itself when it holds
        no more (the bias-correction pass and the auto method's slice)."""
        return replace(data, sample=count) if count < data.sample else data

    def shard_specs(self, data: DataPlan) -> list[ShardSpec]:
        shards = min(self.shards, data.sample)
        return [
            ShardSpec(
                data.uri,
                data.fingerprint,
                data.total,
                data.sample,
                data.seed,
                shard,
                shards,
                self.config.batch_size,
                self.config.preprocess,
                self.config.on_bad_image,
            )
            for shard in range(shards)
        ]

    def to_json(self) -> str:
        """The plan as run.json holds it: every URI redacted (``uri_redaction``)."""
        record = asdict(self)
        record["config"] = self.config.as_dict()
        return redact_text(json.dumps(record, indent=2, sort_keys=True))

    @classmethod
    def from_json(cls, text: str, secrets: Mapping[str, str] | None = None) -> RunPlan:
        """The plan of ``to_json``; ``secrets`` (``RunConfig.secrets``) put the redacted URIs back."""
        record = _restored(json.loads(text), secrets or {})
        record["config"] = RunConfig.from_mapping(record["config"])
        record["model"] = ModelRef(**record["model"])
        record["calibration"] = DataPlan(**record["calibration"])
        record["validation"] = DataPlan(**record["validation"]) if record["validation"] else None
        record["tensors"] = tuple(record["tensors"])
        return cls(**record)


def plan_run(config: RunConfig, cwd: str | None = None) -> RunPlan:
    """Check every input, then write ``run.json``; nothing is written if any check fails.

    ``cwd`` is where the default tracking store goes (the working directory unless given); shards
    default to ``SHARDS_PER_WORKER`` per expected worker.
    """
    tracking_uri = config.tracking_uri or default_tracking_uri(cwd or os.getcwd())
    workers = config.workers or default_worker_count()
    with tempfile.TemporaryDirectory(prefix="int8flow-model-") as download:
        resolved = resolve_model(config.model, tracking_uri, download)
        loaded = load_model(resolved.path, config.model)  # external data read next to the model
    graph = simplify(import_model(loaded.proto, config.model))
    check_supported(graph)  # here, not on the first worker: nothing is written for a model that cannot run
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ModelLoadError(
            f"{config.model}: int8flow calibrates image classifiers with one input and one output; this model has "
            f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs"
        )
    excluded_nodes(graph, config.exclude)
    spec = parse_preprocess(config.preprocess)
    check_fits(spec, graph.inputs[0].shape, config.preprocess)
    check_batch_fits(spec, graph.inputs[0].shape, config.batch_size)
    calibration = _data_plan(config.calib_data, config.calib_examples, config.seed, "--calib-data")
    classes = graph.outputs[0].shape[-1]
    validation = (
        _data_plan(config.val_data, config.val_examples or None, None, "--val-data", classes)
        if config.val_data
        else None
    )
    sha256 = loaded.fingerprint
    # Redacted: a rotated token or signed URL reads the same data, so it must not make another run.
    settings = {name: value for name, value in config.redacted().as_dict().items() if name not in _NOT_RESULT_SETTINGS}
    identity = {
        "model": sha256,
        "calibration": calibration.fingerprint,
        "settings": settings,
        "validation": validation.fingerprint if validation else None,
    }
    run_key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    check_tracking_store(tracking_uri)  # after the inputs, before any write: a dead server fails now, not at the end
    _claim_output_directory(config.out, run_key, config.overwrite)
    _forget_stage_records(config.out)
    model_path = resolved.path
    if resolved.registered_name is not None:
        model_path = f"{config.out.rstrip('/')}/{FP32_MODEL}"
        atomic_write_bytes(model_path, loaded.data)  # self-contained: resolve_model folds external data in
        record_outputs(config.out, [model_path])
    plan = RunPlan(
        config=config,
        run_key=run_key,
        model_uri=config.model,
        model=ModelRef(model_path, sha256, config.device, config.engine),
        registered_name=resolved.registered_name,
        registered_version=resolved.registered_version,
        calibration=calibration,
        validation=validation,
        shards=config.shards or SHARDS_PER_WORKER * max(1, workers),
        tensors=tuple(calibration_tensors(graph)),
        tracking_uri=tracking_uri,
    )
    atomic_write_text(plan.path(PLAN_FILE), plan.to_json())
    record_outputs(config.out, [plan.path(PLAN_FILE)])
    return plan


def load_plan(out: str, config: RunConfig | None = None) -> RunPlan:
    """The plan an earlier stage wrote into ``out``: as stored (credentials redacted, for showing), or
    with the credentials of ``config`` (the configuration it was planned from) back in its URIs."""
    path = f"{out.rstrip('/')}/{PLAN_FILE}"
    try:
        with fsspec.open(path, "r") as file:
            plan = RunPlan.from_json(file.read(), config.secrets() if config else None)
    except FileNotFoundError:
        raise OutputDirectoryError(f"{path}: no run plan; run the plan stage (int8flow run) first") from None
    if config is not None and plan.config != config:
        differing = [name for name, value in config.as_dict().items() if plan.config.as_dict()[name] != value]
        raise OutputDirectoryError(
            f"{path} was planned with other settings ({', '.join(differing)}) than this stage was given; "
            "give the run's own settings, or plan again"
        )
    return plan


def working_plan(out: str, config: RunConfig | None = None) -> RunPlan:
    """The plan for a stage that reads the model or data or talks to the tracking store: its real URIs.

    run.json never holds credentials, so a run whose URIs carry them needs ``config`` here (the CLI
    and the API keep it in memory; an Airflow task rebuilds it from the DAG run's params).
    """
    plan = load_plan(out, config)
    used = [plan.model.path, plan.calibration.uri, plan.tracking_uri]
    if plan.validation is not None:
        used.append(plan.validation.uri)
    if config is None and any(REDACTED in uri for uri in used):
        raise OutputDirectoryError(
            f"{plan.path(PLAN_FILE)}: the run's URIs carry credentials, which int8flow does not store; "
            "give this stage the run's configuration (config=RunConfig) to read them"
        )
    return plan


def _restored(value: Any, secrets: Mapping[str, str]) -> Any:
    """``value`` (decoded JSON) with each string that is a redacted URI replaced by the real one."""
    if isinstance(value, str):
        return secrets.get(value, value)
    if isinstance(value, list):
        return [_restored(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: _restored(item, secrets) for key, item in value.items()}
    return value


def _data_plan(uri: str, sample: int | None, seed: int | None, flag: str, classes: int | None = None) -> DataPlan:
    """``classes``: the model's class count, which the labels of validation data must fit."""
    dataset = open_dataset(uri)
    total = len(dataset)
    chosen = total if sample is None else min(sample, total)
    if chosen < 1:  # a batch larger than the data is fine: it runs as one short batch
        raise DatasetError(f"{flag} {uri}: no examples to use; add data or choose another {flag}")
    if classes is not None:  # validation reads its first examples: a bad label fails now, not after calibration
        check_labels(dataset.labels(chosen), classes, uri, f"the first {chosen} examples")
    return DataPlan(uri, dataset.fingerprint(), total, chosen, seed)


def _claim_output_directory(out: str, run_key: str, overwrite: bool) -> None:
    """Make ``out`` this run's: new or empty, a retry of this run, or (``overwrite``) another int8flow run's.

    A folder int8flow did not write is refused rather than mixed into, and replacing another run
    removes only the files its manifest lists, so the user's own files there survive either way.
    """
    fs, root = url_to_fs(out)
    if "file" in fs.protocol:
        _check_local_output(out, root)
    linked = linked_names(out, RUN_SUBFOLDERS)
    if linked:
        raise OutputDirectoryError(
            f"--out {out}: {', '.join(linked)} is a symbolic link; int8flow writes only into folders it creates "
            "itself: remove the link or choose another --out"
        )
    plan_path = f"{root.rstrip('/')}/{PLAN_FILE}"
    if not fs.isfile(plan_path):
        if owned_outputs(out):
            return  # a plan of this folder that stopped before writing run.json
        present = (
            sorted(entry.rstrip("/").rpartition("/")[2] for entry in fs.ls(root, detail=False))
            if fs.isdir(root)
            else []
        )
        if present:
            shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
            raise OutputDirectoryError(
                f"--out {out} is not empty and holds no int8flow run ({shown}); choose a new or empty folder"
            )
        return
    with fs.open(plan_path, "r") as file:
        previous = json.loads(file.read()).get("run_key")
    if previous == run_key:
        return
    if not overwrite:
        raise OutputDirectoryError(
            f"--out {out} holds the results of another run (model, data or settings differ); choose another "
            "directory or pass --overwrite to replace them"
        )
    remove_outputs(out)


def _check_local_output(out: str, root: str) -> None:
    """A local ``out`` must be a folder (or not exist yet) that this process can write into."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise OutputDirectoryError(f"--out {out} is a file, not a folder; remove it or choose another --out")
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing.rstrip("/")) or "/"
    if not os.path.isdir(existing):
        raise OutputDirectoryError(
            f"--out {out}: cannot write there ({existing} is a file, not a folder); choose a writable folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirectoryError(f"--out {out}: cannot write there (permission denied); choose a writable folder")


def _forget_stage_records(out: str) -> None:
    """A new plan starts a new run: records of an earlier one (its gate's exclusions) must not leak in."""
    remove_outputs(out, {name for name in owned_outputs(out) if name.startswith(f"{STAGE_DIR}/")})

"""The stages of a run as functions of its output folder, for the CLI and for Airflow tasks alike.

Each stage reloads the plan from ``run.json``, does its work, and leaves a typed record under
``stages/`` (``int8flow.schemas.stage_records``); later stages and the report read those records.
So the only thing that travels between stages is the output folder's path, a retried stage redoes
only its own work, and the report of an Airflow run equals that of a CLI run. Stages that read the
model or the data take the run's ``config`` too: run.json holds its URIs without their credentials
(``int8flow.schemas.uri_redaction``), and only the caller has them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TypeVar

import fsspec
from distributed import Client

from int8flow.schemas.run_config import RunConfig
from int8flow.schemas.run_folder import stage_record_name
from int8flow.schemas.stage_records import (
    Accuracy,
    BuildRecord,
    ClusterRecord,
    CorrectRecord,
    GateRecord,
    ObserveRecord,
    StageRecord,
    TensorError,
    ThresholdsRecord,
    ValidateRecord,
)
from int8flow.schemas.uri_redaction import redact_text
from int8flow.tasks.calibration.steps import correct_biases, merge_histograms, observe_shards, write_table
from int8flow.tasks.calibration.table import quantization_errors, read_calibration_table
from int8flow.tasks.distributed.fanout import ProgressSink, quiet
from int8flow.tasks.outputs.atomic_files import atomic_write_text
from int8flow.tasks.outputs.int8_model import write_int8_model
from int8flow.tasks.outputs.manifest import record_outputs
from int8flow.tasks.outputs.plots import plot_sensitivity, plot_tensors
from int8flow.tasks.run.plan import RunPlan, load_plan, working_plan
from int8flow.tasks.validation.accuracy import validate_int8
from int8flow.tasks.validation.gate import GateResult, apply_gate

RecordT = TypeVar("RecordT", bound=StageRecord)
ResultT = TypeVar("ResultT")


class GateFailedError(RuntimeError):
    """INT8 accuracy stayed outside the gate after every fallback attempt; nothing is registered."""


def save_record(plan: RunPlan, record: StageRecord) -> None:
    path = plan.path(stage_record_name(record.STAGE))
    atomic_write_text(path, redact_text(record.to_json()))  # e.g. the sources of skipped images
    record_outputs(plan.out, [path])


def load_record(plan: RunPlan, kind: type[RecordT]) -> RecordT | None:
    """The record a finished stage left, or None if that stage has not run (or was skipped)."""
    path = plan.path(stage_record_name(kind.STAGE))
    try:
        with fsspec.open(path, "r") as file:
            return kind.from_json(file.read(), path)
    except FileNotFoundError:
        return None


def record_cluster(out: str, info: ClusterRecord) -> None:
    save_record(load_plan(out), info)


def observe(out: str, client: Client, progress: ProgressSink = quiet, config: RunConfig | None = None) -> ObserveRecord:
    plan = working_plan(out, config)
    shards, seconds = _timed(lambda: observe_shards(plan, client, progress))
    examples = sum(shard.examples for shard in shards)
    skipped_sources = tuple(source for shard in shards for source in shard.skipped_sources)
    record = ObserveRecord(
        seconds=seconds,
        examples=examples,
        examples_per_second=examples / seconds if seconds else 0.0,
        shards=len(shards),
        skipped_images=sum(shard.skipped for shard in shards),
        skipped_sources=skipped_sources[: ObserveRecord.MAX_SKIPPED_SOURCES],
    )
    save_record(plan, record)
    return record


def thresholds(
    out: str, client: Client | None = None, progress: ProgressSink = quiet, config: RunConfig | None = None
) -> ThresholdsRecord:
    """Merge the partials, choose thresholds, write the table, and plot the worst-fitting tensors.

    Only ``--method auto`` reads the model and data (on the workers of ``client``); the other
    methods need neither."""
    plan = load_plan(out) if client is None else working_plan(out, config)
    histograms, merge_seconds = _timed(lambda: merge_histograms(plan))
    table, threshold_seconds = _timed(lambda: write_table(plan, histograms, client, progress))
    errors = quantization_errors(histograms, table, plan.config.unsigned_activations)
    record = ThresholdsRecord(
        reduce_seconds=merge_seconds,
        thresholds_seconds=threshold_seconds,
        tensors=len(table.tensors),
        plots=tuple(plot_tensors(plan.out, histograms, table, errors)),
        errors=tuple(TensorError(name, error) for name, error in errors.items()),
    )
    record_outputs(plan.out, [plan.path(plot) for plot in record.plots])
    save_record(plan, record)
    return record


def correct(
    out: str, client: Client, progress: ProgressSink = quiet, config: RunConfig | None = None
) -> CorrectRecord | None:
    """Bias correction: the second pass over the calibration shards, and the table rewritten with
    each layer's shifts; None when the run has it off (the table keeps no corrections)."""
    plan = working_plan(out, config)
    if not plan.config.bias_correction:
        return None
    (shards, table), seconds = _timed(lambda: correct_biases(plan, client, progress))
    largest = max(
        ((abs(shift), node) for node, shifts in table.bias_corrections.items() for shift in shifts), default=(0.0, "")
    )
    record = CorrectRecord(
        seconds=seconds,
        examples=sum(shard.examples for shard in shards),
        layers=len(table.bias_corrections),
        largest_shift=largest[0],
        largest_shift_layer=largest[1],
    )
    save_record(plan, record)
    return record


def build(out: str, config: RunConfig | None = None) -> BuildRecord:
    """``model.int8.onnx`` with the exclusions the gate settled on (none before the gate ran)."""
    plan = working_plan(out, config)
    gate_record = load_record(plan, GateRecord)
    excluded = gate_record.final_excluded if gate_record else ()
    path, seconds = _timed(lambda: write_int8_model(plan, read_calibration_table(plan.out), excluded))
    record_outputs(plan.out, [path])
    record = BuildRecord(seconds=seconds, path=path, excluded=excluded)
    save_record(plan, record)
    return record


def validate(
    out: str, client: Client, progress: ProgressSink = quiet, config: RunConfig | None = None
) -> ValidateRecord | None:
    """Accuracy of the INT8 model with the user's exclusions; None when the run has no validation data."""
    plan = working_plan(out, config)
    if plan.validation is None:
        return None
    accuracy, seconds = _timed(lambda: validate_int8(plan, client, (), progress))
    record = ValidateRecord(
        seconds=seconds, examples_per_second=accuracy.examples / seconds if seconds else 0.0, accuracy=accuracy
    )
    save_record(plan, record)
    return record


def gate(out: str, client: Client, progress: ProgressSink = quiet, config: RunConfig | None = None) -> GateRecord:
    """Apply the accuracy gate (with fallback); the record says whether it passed and what was excluded.

    When the gate kept nodes in FP32, ``model.int8.onnx`` is rebuilt here, so every caller (CLI or
    Airflow) leaves the gate with the model the record describes.
    """
    plan = working_plan(out, config)
    first = load_record(plan, ValidateRecord)
    if first is None:
        record = GateRecord(
            seconds=0.0,
            max_top1_drop=plan.config.max_top1_drop,
            passed=True,
            attempts=(),
            final_excluded=(),
            final_accuracy=None,
            sensitivity=(),
            plots=(),
        )
        save_record(plan, record)
        return record
    result, seconds = _timed(lambda: apply_gate(plan, client, first.accuracy, progress))
    record = _gate_record(plan, result, seconds)
    record_outputs(plan.out, [plan.path(plot) for plot in record.plots])
    save_record(plan, record)
    if record.final_excluded:
        build(out, config)
    return record


def check_gate(out: str) -> None:
    """Raise GateFailedError, with the figures, when the recorded gate did not pass."""
    record = load_record(load_plan(out), GateRecord)
    if record is None or record.passed or record.final_accuracy is None:
        return
    final = record.final_accuracy
    raise GateFailedError(
        f"accuracy gate failed: INT8 top-1 {final.int8_top1:.2f}% ({_deployed_text(final)}) vs FP32 "
        f"{final.fp32_top1:.2f}%, a drop of {final.gate_top1_drop:.2f} points ({final.gate_decided_by}) > "
        f"--max-top1-drop {record.max_top1_drop:g} after "
        f"{len(record.attempts)} attempt(s) (FP32 kept: {', '.join(record.final_excluded) or 'none'}); "
        "raise --fallback-budget, exclude layers with --exclude, or try another --method; nothing was registered"
    )


def _deployed_text(accuracy: Accuracy) -> str:
    if accuracy.deploy_int8_top1 is None:
        return "no deployment check"
    return f"{accuracy.deploy_int8_top1:.2f}% in {accuracy.deploy_runtime}"


def _gate_record(plan: RunPlan, result: GateResult, seconds: float) -> GateRecord:
    sensitivity_plot = plot_sensitivity(plan.out, [asdict(node) for node in result.sensitivity])
    return GateRecord(
        seconds=seconds,
        max_top1_drop=result.max_top1_drop,
        passed=result.passed,
        attempts=result.attempts,
        final_excluded=result.final.excluded,
        final_accuracy=result.final.accuracy,
        sensitivity=result.sensitivity,
        plots=(sensitivity_plot,) if sensitivity_plot else (),
    )


def _timed(work: Callable[[], ResultT]) -> tuple[ResultT, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started

"""The stages of a run as functions of its output directory, for the CLI and for Airflow tasks alike.

Each stage reloads the plan from ``run.json``, does its work, and leaves a small JSON record under
``stages/`` (timings, counts, accuracies); later stages and the report read those records. So the
only thing that travels between stages is the output directory's path, a retried stage redoes only
its own work, and the report of an Airflow run equals that of a CLI run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import fsspec
from distributed import Client

from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.tasks.outputs.atomic_files import atomic_write_text
from int8flow.tasks.calibration.steps import merge_stage, observe_stage, threshold_stage
from int8flow.tasks.distributed.fanout import ProgressSink, quiet
from int8flow.tasks.validation.gate import GateResult, gate_stage
from int8flow.tasks.outputs.plots import plot_sensitivity, plot_tensor_histograms
from int8flow.tasks.run.plan import STAGE_DIR, RunPlan, load_plan
from int8flow.tasks.calibration.table import CALIBRATION_JSON
from int8flow.tasks.validation.accuracy import Accuracy, build_stage, validate_stage



class GateFailedError(RuntimeError):
    """INT8 accuracy stayed outside the gate after every fallback attempt; nothing is registered."""


def save_record(plan: RunPlan, stage: str, record: dict[str, Any]) -> None:
    atomic_write_text(plan.path(f"{STAGE_DIR}/{stage}.json"), json.dumps(record, indent=2, sort_keys=True))


def load_record(plan: RunPlan, stage: str) -> dict[str, Any] | None:
    """The record a finished stage left, or None if that stage has not run (or was skipped)."""
    try:
        with fsspec.open(plan.path(f"{STAGE_DIR}/{stage}.json"), "r") as file:
            return json.load(file)
    except FileNotFoundError:
        return None


def observe(out: str, client: Client, progress: ProgressSink = quiet) -> dict[str, Any]:
    plan = load_plan(out)
    shards, seconds = _timed(lambda: observe_stage(plan, client, progress))
    examples = sum(shard.examples for shard in shards)
    record = {
        "seconds": seconds,
        "examples": examples,
        "examples_per_second": examples / seconds if seconds else 0.0,
        "shards": len(shards),
        "skipped_images": sum(shard.skipped for shard in shards),
        "skipped_sources": [source for shard in shards for source in shard.skipped_sources][:20],
    }
    save_record(plan, "observe", record)
    return record


def thresholds(out: str) -> dict[str, Any]:
    """Merge the partials, choose thresholds, write the table, and plot the worst-fitting tensors."""
    plan = load_plan(out)
    histograms, merge_seconds = _timed(lambda: merge_stage(plan))
    table, threshold_seconds = _timed(lambda: threshold_stage(plan, histograms))
    record = {
        "reduce_seconds": merge_seconds,
        "thresholds_seconds": threshold_seconds,
        "tensors": len(table.tensors),
        "plots": plot_tensor_histograms(plan.out, histograms, table),
    }
    save_record(plan, "thresholds", record)
    return record


def build(out: str) -> dict[str, Any]:
    """``model.int8.onnx`` with the exclusions the gate settled on (none before the gate ran)."""
    plan = load_plan(out)
    gate = load_record(plan, "gate")
    excluded = tuple(gate["final_excluded"]) if gate else ()
    path, seconds = _timed(lambda: build_stage(plan, load_table(plan), excluded))
    record = {"seconds": seconds, "path": path, "excluded": list(excluded)}
    save_record(plan, "build", record)
    return record


def validate(out: str, client: Client, progress: ProgressSink = quiet) -> dict[str, Any] | None:
    """Accuracy of the INT8 model with the user's exclusions; None when the run has no validation data."""
    plan = load_plan(out)
    if plan.validation is None:
        return None
    accuracy, seconds = _timed(lambda: validate_stage(plan, client, (), progress))
    record = {
        "seconds": seconds,
        "examples_per_second": accuracy.examples / seconds if seconds else 0.0,
        "accuracy": asdict(accuracy),
    }
    save_record(plan, "validate", record)
    return record


def gate(out: str, client: Client, progress: ProgressSink = quiet) -> dict[str, Any]:
    """Apply the accuracy gate (with fallback); the record says whether it passed and what was excluded.

    When the gate kept nodes in FP32, ``model.int8.onnx`` is rebuilt here, so every caller (CLI or
    Airflow) leaves the gate with the model the record describes.
    """
    plan = load_plan(out)
    first = load_record(plan, "validate")
    if first is None:
        record = {"seconds": 0.0, "max_top1_drop": plan.config.max_top1_drop, "passed": True, "attempts": [],
                  "final_excluded": [], "sensitivity": [], "plots": []}
        save_record(plan, "gate", record)
        return record
    result, seconds = _timed(
        lambda: gate_stage(plan, client, load_table(plan), Accuracy(**first["accuracy"]), progress)
    )
    record = _gate_record(result, seconds)
    record["plots"] = [path for path in [plot_sensitivity(plan.out, record["sensitivity"])] if path]
    save_record(plan, "gate", record)
    if record["final_excluded"]:
        build(out)
    return record


def check_gate(out: str) -> None:
    """Raise GateFailedError, with the figures, when the recorded gate did not pass."""
    plan = load_plan(out)
    record = load_record(plan, "gate")
    if record is None or record["passed"]:
        return
    final = record["final_accuracy"]
    raise GateFailedError(
        f"accuracy gate failed: INT8 top-1 {final['int8_top1']:.2f}% vs FP32 {final['fp32_top1']:.2f}%, a drop of "
        f"{final['fp32_top1'] - final['int8_top1']:.2f} points > --max-top1-drop {record['max_top1_drop']:g} after "
        f"{len(record['attempts'])} attempt(s) (FP32 kept: {', '.join(record['final_excluded']) or 'none'}); "
        "raise --fallback-budget, exclude layers with --exclude, or try another --method; nothing was registered"
    )


def _gate_record(result: GateResult, seconds: float) -> dict[str, Any]:
    final = result.final
    return {
        "seconds": seconds,
        "max_top1_drop": result.max_top1_drop,
        "passed": result.passed,
        "attempts": [
            {
                "excluded": list(attempt.excluded),
                "int8_top1": attempt.accuracy.int8_top1,
                "top1_drop": attempt.accuracy.top1_drop,
                "passed": attempt.passed,
                "accuracy": asdict(attempt.accuracy),
            }
            for attempt in result.attempts
        ],
        "final_excluded": list(final.excluded),
        "final_accuracy": asdict(final.accuracy),
        "sensitivity": [asdict(node) for node in result.sensitivity],
    }


def load_table(plan: RunPlan) -> CalibrationTable:
    path = plan.path(CALIBRATION_JSON)
    with fsspec.open(path, "r") as file:
        return CalibrationTable.from_json(file.read(), path)


def _timed(work: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started

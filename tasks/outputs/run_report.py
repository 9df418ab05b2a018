"""The report of a run assembled from its plan and stage records, and the metrics derived from it.

The report is built from the output folder alone, so a run driven stage by stage from Airflow
reports exactly like one driven from the command line; MLflow's metrics are read off the report,
so the two can never disagree. ``report`` renders it; this module decides what it holds.
"""

from __future__ import annotations

import datetime
import json
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import fsspec

from int8flow.schemas.metric_names import ACCURACY, THROUGHPUT, TIME, listing_order, metric_group, metric_key
from int8flow.schemas.run_folder import REPORT_JSON
from int8flow.schemas.stage_records import (
    BuildRecord,
    ClusterRecord,
    CorrectRecord,
    GateRecord,
    ObserveRecord,
    ThresholdsRecord,
    ValidateRecord,
)
from int8flow.tasks.calibration.table import read_calibration_table
from int8flow.tasks.outputs.manifest import record_outputs
from int8flow.tasks.outputs.report import CALIBRATION_STAGES, write_report
from int8flow.tasks.outputs.report_html import write_report_html
from int8flow.tasks.run.plan import RunPlan, load_plan
from int8flow.tasks.run.stages import load_record


def int8flow_version() -> str:
    try:
        return version("int8flow")
    except PackageNotFoundError:
        return "unknown"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_run_report(out: str, started: str | None = None) -> dict[str, Any]:
    """report.json and report.md from the plan and the stage records."""
    plan = load_plan(out)
    report = assemble_report(plan, started or now(), now())
    record_outputs(plan.out, [*write_report(plan.out, report), write_report_html(plan.out, report)])
    return report


def read_run_report(plan: RunPlan) -> dict[str, Any]:
    with fsspec.open(plan.path(REPORT_JSON), "r") as file:
        report: dict[str, Any] = json.load(file)
    return report


def assemble_report(plan: RunPlan, started: str, finished: str) -> dict[str, Any]:
    observe = load_record(plan, ObserveRecord)
    thresholds = load_record(plan, ThresholdsRecord)
    correct = load_record(plan, CorrectRecord)
    build = load_record(plan, BuildRecord)
    validate = load_record(plan, ValidateRecord)
    gate = load_record(plan, GateRecord)
    cluster = load_record(plan, ClusterRecord)
    table = read_calibration_table(plan.out)
    errors = {entry.name: entry.error for entry in thresholds.errors} if thresholds else {}
    stage_times: dict[str, Any] = {
        "observe": {
            "seconds": observe.seconds if observe else None,
            "examples": observe.examples if observe else None,
            "examples_per_second": observe.examples_per_second if observe else None,
        },
        "reduce": {"seconds": thresholds.reduce_seconds if thresholds else None},
        "thresholds": {"seconds": thresholds.thresholds_seconds if thresholds else None},
        "correct": {
            "seconds": correct.seconds if correct else None,
            "examples": correct.examples if correct else None,
            "layers": correct.layers if correct else 0,
            "largest_shift": correct.largest_shift if correct else None,
            "largest_shift_layer": correct.largest_shift_layer if correct else None,
        },
        "build": {"seconds": build.seconds if build else None},
    }
    report: dict[str, Any] = {
        "int8flow_version": int8flow_version(),
        "started": started,
        "finished": finished,
        "model": {
            "uri": plan.model_uri,
            "sha256": plan.model.sha256,
            "registered_name": plan.registered_name,
            "registered_version": plan.registered_version,
        },
        "data": {
            "calibration": {
                "uri": plan.calibration.uri,
                "fingerprint": plan.calibration.fingerprint,
                "examples": observe.examples if observe else None,
                "skipped_images": observe.skipped_images if observe else None,
            },
        },
        "settings": plan.config.as_dict(),
        "stages": stage_times,
        "cluster": {
            "kind": cluster.kind if cluster else None,
            "scheduler": cluster.scheduler if cluster else None,
            "dashboard": cluster.dashboard if cluster else None,
            "workers": cluster.workers if cluster else None,
            "shards": observe.shards if observe else None,
            "device": plan.config.device,
        },
        "tensors": [
            {
                "name": r.name,
                "method": r.method,
                "threshold": r.threshold,
                "divergence": None if math.isnan(r.divergence) else r.divergence,  # as report.json holds it
                "error": errors.get(r.name),
                "signed": r.signed,
            }
            for r in table.tensors
        ],
        "plots": list(thresholds.plots if thresholds else ()) + list(gate.plots if gate else ()),
    }
    if validate is not None and gate is not None and gate.final_accuracy is not None:
        final = gate.final_accuracy
        report["accuracy"] = final.summary()
        report["data"]["validation"] = {
            "uri": plan.validation.uri if plan.validation else None,
            "fingerprint": plan.validation.fingerprint if plan.validation else None,
            "examples": final.examples,
            "skipped_images": final.skipped,
        }
        stage_times["validate"] = {
            "seconds": validate.seconds,
            "examples": validate.accuracy.examples,
            "examples_per_second": validate.examples_per_second,
            "gemm_fallbacks": validate.accuracy.gemm_fallbacks,
        }
        stage_times["gate"] = {"seconds": gate.seconds}
        report["gate"] = {
            "max_top1_drop": gate.max_top1_drop,
            "passed": gate.passed,
            "deploy_runtime": final.deploy_runtime,
            "decided_by": final.gate_decided_by,
            "attempts": [
                {
                    "excluded": list(attempt.excluded),
                    "int8_top1": attempt.accuracy.int8_top1,
                    "deploy_int8_top1": attempt.accuracy.deploy_int8_top1,
                    "top1_drop": attempt.accuracy.gate_top1_drop,
                    "decided_by": attempt.accuracy.gate_decided_by,
                    "passed": attempt.passed,
                }
                for attempt in gate.attempts
            ],
        }
        report["sensitivity"] = [
            {"node": node.node, "op_type": node.op_type, "error": node.error} for node in gate.sensitivity
        ]
    return report


METRIC_DECIMALS = {TIME: 3, THROUGHPUT: 1, ACCURACY: 4}
"""Decimals MLflow shows, by metric group: milliseconds, one tenth of an example per second, and
1e-4 points of accuracy (one example in a million), so a drop reads 0.2, not 0.19999999999998863;
counts stay whole."""


def run_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a run, keyed ``<group>/<name>`` (``metric_names``) as ``int8flow runs``
    and dashboards read them, rounded as ``METRIC_DECIMALS`` says (report.json keeps every digit),
    in ``listing_order``: MLflow's run page lists them as logged."""
    metrics = {metric_key(name): _rounded(name, value) for name, value in _exact_metrics(report).items()}
    return {key: metrics[key] for key in sorted(metrics, key=listing_order)}


def _rounded(name: str, value: float) -> float:
    decimals = METRIC_DECIMALS.get(metric_group(name))
    return value if decimals is None else round(value, decimals)


def _exact_metrics(report: dict[str, Any]) -> dict[str, float]:
    stage_times = report["stages"]
    observe = stage_times["observe"]
    calib_seconds = sum(stage_times[name]["seconds"] or 0.0 for name in CALIBRATION_STAGES)
    metrics = {
        "calib_seconds": calib_seconds,
        "calib_examples_per_second": (observe["examples"] or 0) / calib_seconds if calib_seconds else 0.0,
        "calib_examples": float(observe["examples"] or 0),
        "calib_skipped_images": float(report["data"]["calibration"]["skipped_images"] or 0),
    }
    for name, timing in stage_times.items():
        if timing.get("seconds") is not None:
            metrics[f"{name}_seconds"] = timing["seconds"]
    if "accuracy" in report:
        metrics.update({key: value for key, value in report["accuracy"].items() if key != "examples"})
        metrics["val_examples"] = float(report["accuracy"]["examples"])
        metrics["gate_attempts"] = float(len(report["gate"]["attempts"]))
        metrics["validate_examples_per_second"] = stage_times["validate"]["examples_per_second"]
    return metrics

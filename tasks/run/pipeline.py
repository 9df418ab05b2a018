"""The whole run, stage after stage, as ``int8flow run`` executes it; and the parts every caller shares.

The report, the MLflow run and the registration are built from the plan and the stage records in
the output directory, so a run driven stage by stage from Airflow reports and tracks exactly like
one driven from the command line.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import fsspec

from int8flow.schemas.run_config import RunConfig
from int8flow.tasks.run import stages
from int8flow.tasks.distributed.cluster import ClusterInfo, dask_client, default_worker_count
from int8flow.tasks.distributed.fanout import ProgressSink, quiet
from int8flow.tasks.outputs.report import REPORT_JSON, write_report
from int8flow.tasks.run.plan import RunPlan, load_plan, plan_run
from int8flow.tasks.run.stages import load_record, load_table, save_record
from int8flow.tasks.tracking.mlflow_store import (
    GATE_TAG,
    MODEL_TAG,
    default_experiment_name,
    experiment_for,
    log_run,
    register_int8_model,
)
from int8flow.tasks.validation.accuracy import INT8_MODEL, Accuracy


@dataclass(frozen=True)
class RunOutcome:
    out: str
    report: dict[str, Any]
    mlflow_run_id: str
    registered_version: str | None
    passed: bool


def int8flow_version() -> str:
    try:
        return version("int8flow")
    except PackageNotFoundError:
        return "unknown"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def plan(config: RunConfig, cwd: str | None = None) -> RunPlan:
    """Check the inputs and write the plan; shards default to four per expected worker."""
    workers = config.workers or default_worker_count()
    return plan_run(config, workers, cwd or os.getcwd())


def record_cluster(out: str, info: ClusterInfo) -> None:
    save_record(load_plan(out), "cluster", asdict(info))


def run_pipeline(
    config: RunConfig,
    progress: ProgressSink = quiet,
    on_cluster: Callable[[ClusterInfo], None] = lambda info: None,
    cwd: str | None = None,
) -> RunOutcome:
    """Plan, calibrate, build, validate, gate, report, track and register: the ``int8flow run`` job."""
    started = now()
    out = plan(config, cwd).out
    with dask_client(config.scheduler, config.workers, config.device) as (client, info):
        on_cluster(info)
        record_cluster(out, info)
        stages.observe(out, client, progress)
        stages.thresholds(out)
        stages.build(out)
        stages.validate(out, client, progress)
        gate = stages.gate(out, client, progress)
    report = write_run_report(out, started)
    run_id = track(out)
    registered = register(out, run_id) if gate["passed"] else None
    return RunOutcome(out, report, run_id, registered, gate["passed"])


def write_run_report(out: str, started: str | None = None) -> dict[str, Any]:
    """report.json and report.md from the plan and the stage records."""
    plan = load_plan(out)
    report = assemble_report(plan, started or now(), now())
    write_report(plan.out, report)
    return report


def assemble_report(plan: RunPlan, started: str, finished: str) -> dict[str, Any]:
    observe = load_record(plan, "observe") or {}
    thresholds = load_record(plan, "thresholds") or {}
    build = load_record(plan, "build") or {}
    validate = load_record(plan, "validate")
    gate = load_record(plan, "gate")
    cluster = load_record(plan, "cluster") or {}
    table = load_table(plan)
    stage_times: dict[str, Any] = {
        "observe": {
            "seconds": observe.get("seconds"),
            "examples": observe.get("examples"),
            "examples_per_second": observe.get("examples_per_second"),
        },
        "reduce": {"seconds": thresholds.get("reduce_seconds")},
        "thresholds": {"seconds": thresholds.get("thresholds_seconds")},
        "build": {"seconds": build.get("seconds")},
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
                "examples": observe.get("examples"),
                "skipped_images": observe.get("skipped_images"),
            },
        },
        "settings": plan.config.as_dict(),
        "stages": stage_times,
        "cluster": {
            "scheduler": cluster.get("scheduler"),
            "dashboard": cluster.get("dashboard"),
            "workers": cluster.get("workers"),
            "shards": observe.get("shards"),
            "device": plan.config.device,
        },
        "tensors": [
            {"name": r.name, "threshold": r.threshold, "divergence": r.divergence, "signed": r.signed}
            for r in table.tensors
        ],
        "plots": list(thresholds.get("plots", [])) + list((gate or {}).get("plots", [])),
    }
    if validate is not None and gate is not None:
        final = Accuracy(**gate["final_accuracy"])
        report["accuracy"] = final.summary()
        report["data"]["validation"] = {
            "uri": plan.validation.uri if plan.validation else None,
            "fingerprint": plan.validation.fingerprint if plan.validation else None,
            "examples": final.examples,
            "skipped_images": final.skipped,
        }
        stage_times["validate"] = {
            "seconds": validate["seconds"],
            "examples": validate["accuracy"]["examples"],
            "examples_per_second": validate["examples_per_second"],
        }
        stage_times["gate"] = {"seconds": gate["seconds"]}
        report["gate"] = {
            "max_top1_drop": gate["max_top1_drop"],
            "passed": gate["passed"],
            "attempts": [
                {key: attempt[key] for key in ("excluded", "int8_top1", "top1_drop", "passed")}
                for attempt in gate["attempts"]
            ],
        }
        report["sensitivity"] = gate["sensitivity"]
    return report


def run_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a run, under the stable names ``int8flow runs`` and dashboards read."""
    stages_ = report["stages"]
    observe = stages_["observe"]
    calib_seconds = sum(stages_[name]["seconds"] or 0.0 for name in ("observe", "reduce", "thresholds"))
    metrics = {
        "calib_seconds": calib_seconds,
        "calib_examples_per_second": (observe["examples"] or 0) / calib_seconds if calib_seconds else 0.0,
        "calib_examples": float(observe["examples"] or 0),
        "calib_skipped_images": float(report["data"]["calibration"]["skipped_images"] or 0),
    }
    for name, timing in stages_.items():
        if timing.get("seconds") is not None:
            metrics[f"{name}_seconds"] = timing["seconds"]
    if "accuracy" in report:
        metrics.update({key: value for key, value in report["accuracy"].items() if key != "examples"})
        metrics["val_examples"] = float(report["accuracy"]["examples"])
        metrics["gate_attempts"] = float(len(report["gate"]["attempts"]))
        metrics["validate_examples_per_second"] = stages_["validate"]["examples_per_second"]
    return metrics


def track(out: str, run_key: str | None = None) -> str:
    """Log the run (params, metrics, tags, every output file) to MLflow; returns the run id.

    ``run_key`` makes a retry find its own finished run instead of logging a duplicate (Airflow).
    """
    plan = load_plan(out)
    report = _load_report(plan)
    gate = load_record(plan, "gate")
    experiment = plan.config.experiment or default_experiment_name(plan.model_uri)
    experiment_id = experiment_for(plan.tracking_uri, experiment)
    tags = {
        MODEL_TAG: plan.model_uri,
        "int8flow.model_sha256": plan.model.sha256,
        "int8flow.calib_data_fingerprint": plan.calibration.fingerprint,
        "int8flow.val_data_fingerprint": plan.validation.fingerprint if plan.validation else "",
        "int8flow.version": int8flow_version(),
        "int8flow.plan_key": plan.run_key,
        GATE_TAG: _gate_tag(gate, plan),
    }
    run_name = f"{plan.config.method}-{plan.calibration.sample}"
    return log_run(
        plan.tracking_uri, experiment_id, run_name, plan.config.mlflow_params(), run_metrics(report), tags,
        plan.out, run_key=run_key,
    )


def register(out: str, run_id: str) -> str | None:
    """Register model.int8.onnx when the run asks for it and its gate passed; returns the version."""
    plan = load_plan(out)
    gate = load_record(plan, "gate")
    if not plan.config.register or (gate is not None and not gate["passed"]):
        return None
    report = _load_report(plan)
    tags = {name: f"{value:.6g}" for name, value in run_metrics(report).items()}
    tags.update({
        "fp32_model_uri": plan.model_uri,
        "fp32_sha256": plan.model.sha256,
        "fp32_registered_name": plan.registered_name or "",
        "fp32_registered_version": plan.registered_version or "",
        "method": plan.config.method,
    })
    return register_int8_model(
        plan.tracking_uri, plan.config.register, run_id, INT8_MODEL, tags, plan.config.alias or None
    )


def _gate_tag(gate: dict[str, Any] | None, plan: RunPlan) -> str:
    if gate is None or plan.config.max_top1_drop is None:
        return "none"
    return "passed" if gate["passed"] else "failed"


def _load_report(plan: RunPlan) -> dict[str, Any]:
    with fsspec.open(plan.path(REPORT_JSON), "r") as file:
        return json.load(file)

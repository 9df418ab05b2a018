"""A finished run in MLflow: its params, metrics, tags and outputs as one run, and its INT8 model registered.

Both read only the output folder (plan, stage records, report), so a run driven stage by stage from
Airflow is logged and registered exactly like one driven from the command line.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlflow.entities import SourceType
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

from int8flow.schemas.alias_policy import at_least_as_good, ranking_metric
from int8flow.schemas.metric_names import metric_key
from int8flow.schemas.run_config import RunConfig
from int8flow.schemas.run_folder import INT8_MODEL, MANIFEST_FILE
from int8flow.schemas.stage_records import GateRecord
from int8flow.schemas.uri_redaction import redact_uri
from int8flow.tasks.outputs.manifest import owned_outputs
from int8flow.tasks.outputs.run_report import int8flow_version, read_run_report, run_metrics
from int8flow.tasks.run.plan import RunPlan, load_plan, working_plan
from int8flow.tasks.run.stages import load_record
from int8flow.tasks.tracking.logged_model import ModelToLog
from int8flow.tasks.tracking.mlflow_store import (
    CALIB_FINGERPRINT_TAG,
    EXPERIMENT_PREFIX,
    GATE_TAG,
    INT8_MODEL_NAME,
    MODEL_SHA256_TAG,
    MODEL_TAG,
    PLAN_KEY_TAG,
    SETTING_TAG_PREFIX,
    VAL_FINGERPRINT_TAG,
    VERSION_TAG,
    alias_metric,
    default_experiment_name,
    experiment_for,
    log_run,
    register_int8_model,
    registered_model_id,
)


@dataclass(frozen=True)
class RunOrigin:
    """What started a run, for MLflow's Source and User columns, and tags that link back to it
    (an Airflow DAG run's id, logical date and URL)."""

    source_name: str = "int8flow run"
    source_type: str = SourceType.to_string(SourceType.LOCAL)
    links: Mapping[str, str] = field(default_factory=dict)
    page: str | None = None
    """Where a reader goes back to (an Airflow DAG run's page), linked from the run's description."""


def track(
    out: str, run_key: str | None = None, config: RunConfig | None = None, origin: RunOrigin = RunOrigin()
) -> str:
    """Log the run (params, metrics, tags, every output file) to MLflow; returns the run id.

    ``run_key`` makes a retry find its own finished run instead of logging a duplicate (Airflow).
    What is logged comes from the stored (redacted) plan; ``config`` only opens the tracking store.
    The MLflow run spans the report's start and end, so its Duration is the calibration's.
    """
    plan = load_plan(out)
    tracking_uri = working_plan(out, config).tracking_uri
    report = read_run_report(plan)
    experiment = plan.config.experiment or default_experiment_name(plan.model_uri)
    experiment_id = experiment_for(tracking_uri, experiment)
    tags = {
        MODEL_TAG: plan.model_uri,
        MODEL_SHA256_TAG: plan.model.sha256,
        CALIB_FINGERPRINT_TAG: plan.calibration.fingerprint,
        VAL_FINGERPRINT_TAG: plan.validation.fingerprint if plan.validation else "",
        VERSION_TAG: int8flow_version(),
        PLAN_KEY_TAG: plan.run_key,
        GATE_TAG: gate_tag(plan),
        **{SETTING_TAG_PREFIX + name: text for name, text in plan.config.operational_texts().items()},
        MLFLOW_SOURCE_NAME: origin.source_name,
        MLFLOW_SOURCE_TYPE: origin.source_type,
        MLFLOW_USER: getpass.getuser(),
        MLFLOW_RUN_NOTE: run_description(plan, report, origin),
        **origin.links,
    }
    outputs = owned_outputs(plan.out)
    params = plan.config.mlflow_params()
    return log_run(
        tracking_uri,
        experiment_id,
        run_name(plan, report["started"], tags[GATE_TAG]),
        params,
        run_metrics(report),
        tags,
        plan.out,
        run_key=run_key,
        files=[*outputs, MANIFEST_FILE],
        span_ms=(_epoch_ms(report["started"]), _epoch_ms(report["finished"])),
        model=int8_model_to_log(plan, tracking_uri, params) if INT8_MODEL in outputs else None,
    )


def int8_model_to_log(plan: RunPlan, tracking_uri: str, params: Mapping[str, str]) -> ModelToLog:
    """``model.int8.onnx`` as the run's logged model: its settings, its FP32 source (tags), and that
    source as the run's input model when it came from the registry as an MLflow model."""
    source_ids: tuple[str, ...] = ()
    if plan.registered_name is not None and plan.registered_version is not None:
        source_id = registered_model_id(tracking_uri, plan.registered_name, plan.registered_version)
        source_ids = () if source_id is None else (source_id,)
    return ModelToLog(
        file=INT8_MODEL,
        name=INT8_MODEL_NAME,
        tags={MODEL_TAG: plan.model_uri, MODEL_SHA256_TAG: plan.model.sha256, GATE_TAG: gate_tag(plan)},
        params=params,
        source_model_ids=source_ids,
    )


@dataclass(frozen=True)
class TrackedRun:
    """Where a tracked run went, for a log line and a link: its experiment and its page, if any."""

    run_id: str
    experiment: str
    url: str | None
    store: str
    """The tracking URI, redacted: what a reader opens when the store has no page (``url`` is None)."""

    def text(self) -> str:
        return f"MLflow run {self.run_id} in experiment {self.experiment}: {self.url or self.store}"


def tracked_run(out: str, run_id: str, config: RunConfig | None = None, ui_url: str | None = None) -> TrackedRun:
    """``ui_url``: where users reach the MLflow UI, when not at the tracking URI (a service name only
    the tasks resolve)."""
    plan = working_plan(out, config)
    experiment = plan.config.experiment or default_experiment_name(plan.model_uri)
    url = mlflow_run_url(ui_url or plan.tracking_uri, experiment_for(plan.tracking_uri, experiment), run_id)
    return TrackedRun(run_id, experiment, url, redact_uri(plan.tracking_uri))


MODEL_TRAINING_VIEW = "workflowType=machine_learning"
"""MLflow 3's UI opens every page in its GenAI view (traces, judges, prompts) unless the address asks
for its model-training view, whatever the experiment's kind: the run's page asks."""


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI when the store is a tracking server; None for a local store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{redact_uri(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def _epoch_ms(timestamp: str) -> int:
    return round(datetime.fromisoformat(timestamp).timestamp() * 1000)


VERSION_METRICS = ("fp32_top1", "int8_top1", "top1_drop", "agreement_top1", "deploy_int8_top1")
"""What a registry version shows of its run: the accuracy a reader deploys on; the rest is in the run."""


def register(out: str, run_id: str, config: RunConfig | None = None) -> str | None:
    """Register model.int8.onnx when the run asks for it and its gate passed; returns the version.

    Tags come from the stored (redacted) plan; ``config`` only opens the tracking store.
    """
    plan = load_plan(out)
    gate = load_record(plan, GateRecord)
    if not plan.config.register or (gate is not None and not gate.passed):
        return None
    metrics = run_metrics(read_run_report(plan))
    tracking_uri = working_plan(out, config).tracking_uri
    tags = {name: f"{metrics[metric_key(name)]:g}" for name in VERSION_METRICS if metric_key(name) in metrics}
    tags.update(
        {
            "fp32_model_uri": plan.model_uri,
            "fp32_sha256": plan.model.sha256,
            "method": plan.config.method,
            # registered without --val-data: no accuracy was measured, and the version says so
            "validated": str(plan.validation is not None).lower(),
        }
    )
    if plan.registered_name is not None:  # the FP32 model came from the registry: its name and version
        tags.update(fp32_registered_name=plan.registered_name, fp32_registered_version=plan.registered_version or "")
    alias = plan.config.alias or None
    if alias is not None and not takes_alias(tracking_uri, plan.config, metrics):
        alias = None
    return register_int8_model(tracking_uri, plan.config.register, run_id, INT8_MODEL_NAME, tags, alias)


def takes_alias(tracking_uri: str, config: RunConfig, metrics: Mapping[str, float]) -> bool:
    """Whether the new version gets the alias under ``--alias-policy``: always for ``latest``; for
    ``best:<metric>`` when the alias points nowhere yet or the new run measured at least as well
    (a run that did not measure the metric, registered without validation, never takes it from one
    that did)."""
    metric = ranking_metric(config.alias_policy)
    if metric is None:
        return True
    current = alias_metric(tracking_uri, config.register, config.alias, metric)
    if current is None:
        return True
    return metric_key(metric) in metrics and at_least_as_good(metric, metrics[metric_key(metric)], current)


def run_description(plan: RunPlan, report: Mapping[str, Any], origin: RunOrigin) -> str:
    """The run's description (Markdown, MLflow's run page and runs table): what was calibrated, how,
    the accuracy and the gate's verdict in a sentence each, and where the run came from."""
    config = plan.config
    lines = [
        f"INT8 calibration of `{redact_uri(plan.model_uri)}`: method {config.method}, "
        f"{report['data']['calibration']['examples']} calibration examples, bias correction "
        f"{'on' if config.bias_correction else 'off'}."
    ]
    accuracy = report.get("accuracy")
    if accuracy is None:
        lines.append("Not validated (no validation data).")
    else:
        lines.append(
            f"Top-1 on {accuracy['examples']} validation examples: FP32 {accuracy['fp32_top1']:.2f}%, "
            f"INT8 {accuracy['int8_top1']:.2f}% (drop {accuracy['top1_drop']:.2f} points); gate "
            + _gate_text(report["gate"], config.max_top1_drop)
        )
    lines.append(f"Started by `{origin.source_name}`" + (f": <{origin.page}>" if origin.page else "."))
    return "\n\n".join(lines)


def _gate_text(gate: Mapping[str, Any], max_top1_drop: float | None) -> str:
    if max_top1_drop is None:
        return "not set."
    verdict = "passed" if gate["passed"] else "**failed**"
    return f"{verdict} (max top-1 drop {max_top1_drop:g}, {len(gate['attempts'])} attempt(s))."


def run_name(plan: RunPlan, started: str, gate: str) -> str:
    """``<model>-<method>-<UTC start to the minute>``, ending ``-gate-failed`` when the gate failed:
    nightly runs differ in the run list, and a failed one shows there, not only in a tag."""
    model = default_experiment_name(plan.model_uri).removeprefix(EXPERIMENT_PREFIX)
    when = datetime.fromisoformat(started).astimezone(UTC).strftime("%Y%m%d-%H%M")
    return f"{model}-{plan.config.method}-{when}" + ("-gate-failed" if gate == "failed" else "")


def gate_tag(plan: RunPlan) -> str:
    """``passed``/``failed`` for a gated run, ``none`` when no gate was set or the gate never ran."""
    gate = load_record(plan, GateRecord)
    if gate is None or plan.config.max_top1_drop is None:
        return "none"
    return "passed" if gate.passed else "failed"

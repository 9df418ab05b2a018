"""
# int8_requantize

One DAG run calibrates **one FP32 ONNX model** to INT8 across a Dask cluster, validates it against
FP32, applies the accuracy gate, logs everything to MLflow and registers the INT8 model when the
gate passes. It runs the same stages as `int8flow run`, one task each, so a run from here reports,
tracks and registers exactly like one from the command line.

| Task | What it does |
|---|---|
| `plan` | checks the model, the data and every setting; writes `run.json` |
| `observe` | fans the calibration shards out over Dask: partial activation histograms |
| `thresholds` | merges the histograms, chooses the thresholds (`auto`: measured on Dask), writes the table |
| `correct` | bias correction: a second pass over the calibration shards on Dask; the table gets the shifts |
| `build` | writes `model.int8.onnx` |
| `validate` | fans the validation shards out over Dask: FP32 vs INT8 top-1 / top-5 |
| `gate` | accuracy gate with fallback (the most sensitive nodes back to FP32, within the budget) |
| `report` | `report.json`, `report.md` and plots |
| `track` | one MLflow run: params, metrics, tags, every output file |
| `register` | registers `model.int8.onnx` under *Register*, points *Alias* at it (gate passed) |

The gate rebuilds the INT8 model with its final exclusions. **A failed gate fails the run at
`gate`**, with the figures in the log; that run is still tracked in MLflow (tag
`int8flow.gate=failed`) and nothing is registered.

**Parameters.** The form has one field per run setting, made from the run-configuration schema
(the `int8flow run` options). The form's defaults are the bundled Fashion-MNIST demo; the Dask
scheduler and the MLflow tracking URI default to the deployment's (`INT8FLOW_DASK_SCHEDULER`,
`MLFLOW_TRACKING_URI`). An empty scheduler starts an embedded Dask cluster inside each Dask task.

**Outputs.** Each DAG run writes to `$INT8FLOW_RUNS_DIR/int8_requantize/<run_id>` (default
`$AIRFLOW_HOME/int8flow-runs`), a folder the Dask workers must reach at the same path or URL. Only
that path, the MLflow run id and the registered version travel between tasks (XCom).

**Failures.** Bad input (missing file, model that does not load, data that does not fit, bad setting)
fails its task at once with the message. Anything else (Dask scheduler or MLflow server unreachable,
killed worker, lost connection) is retried three times with exponential backoff (30 s, 1 min, 2 min).
Retries and cleared tasks are idempotent: the MLflow run is keyed by `int8_requantize/<run_id>` and a
model version by its MLflow run, so a rerun of `track` or `register` finds what the first try made.

Nightly runs of the production models come from `int8_requantize_nightly`, which triggers one run of
this DAG per model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import dag, get_current_context, task
from int8flow_airflow.failures import RETRY_ARGS, FailedAtOnce, bad_input_fails_at_once
from int8flow_airflow.mlflow_link import MLFLOW_RUN_URL_KEY, MlflowRunLink
from int8flow_airflow.params import (
    airflow_home,
    form_words,
    mlflow_ui_url,
    run_config_values,
    run_output_dir,
    run_params,
)

if TYPE_CHECKING:
    from int8flow.tasks.tracking.run_logging import RunOrigin

DAG_ID = "int8_requantize"
MAX_ACTIVE_RUNS = 4

log = logging.getLogger("int8flow.int8_requantize")


class ProgressLog:
    """A ``ProgressSink`` (``int8flow.tasks.distributed.fanout``): each step's progress in the task log,
    its start and end and every 10 s between, e.g. ``gate: sensitivity 12/40 nodes, ...``."""

    def __init__(self, every_seconds: float = 10.0) -> None:
        self.every_seconds = every_seconds
        self.last = -every_seconds

    def __call__(self, stage: str, done: int, total: int, examples: int, seconds: float) -> None:
        from int8flow.tasks.distributed.fanout import job_unit

        now = time.monotonic()
        if done in (0, total) or now - self.last >= self.every_seconds:
            self.last = now
            rate = f", {examples / seconds:.1f} examples/s" if seconds else ""
            log.info("%s %d/%d %s, %d examples, %.1f s%s", stage, done, total, job_unit(stage), examples, seconds, rate)


@contextlib.contextmanager
def run_cluster(out: str) -> Iterator[Any]:
    """A Dask client for the run in ``out``: its scheduler, or an embedded cluster for this task."""
    from int8flow.tasks.distributed.cluster import dask_client
    from int8flow.tasks.run.plan import load_plan

    config = load_plan(out).config
    with dask_client(config.scheduler, config.workers, config.device) as (client, info):
        log.info("Dask: %s at %s, %d workers, dashboard %s", info.kind, info.scheduler, info.workers, info.dashboard)
        yield client, info


def run_config(out: str) -> Any:
    """This DAG run's ``RunConfig``, rebuilt from its params: run.json holds its URIs without credentials."""
    from int8flow.schemas.run_config import RunConfig

    return RunConfig.from_mapping(run_config_values(get_current_context()["params"], out))


def run_key() -> str:
    """What makes a retried or cleared ``track`` find its own MLflow run: this DAG run."""
    context = get_current_context()
    return f"{context['dag'].dag_id}/{context['run_id']}"


def run_origin() -> RunOrigin:
    """The MLflow run's source (this DAG, a job) and tags that lead back to this DAG run."""
    from airflow.utils.helpers import build_airflow_dagrun_url

    from int8flow.tasks.tracking.run_logging import RunOrigin

    context = get_current_context()
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    logical_date = context["dag_run"].logical_date
    url = build_airflow_dagrun_url(dag_id, run_id)
    links = {
        "airflow.dag_id": dag_id,
        "airflow.run_id": run_id,
        "airflow.logical_date": logical_date.astimezone(UTC).isoformat() if logical_date else "",
        "airflow.url": url,
    }
    # Relative unless [api] base_url names where users reach Airflow: then no page to link to.
    page = url if url.startswith(("http://", "https://")) else None
    return RunOrigin(f"airflow:{dag_id}", "JOB", links, page)


def track_this_run(out: str) -> str:
    """Log the run to MLflow with its links back to this DAG run; log where it went and push its page
    for the task's "MLflow run" button; its run id."""
    from int8flow.tasks.tracking.run_logging import track, tracked_run

    config = run_config(out)
    tracked = tracked_run(out, track(out, run_key(), config, run_origin()), config, mlflow_ui_url())
    log.info("%s", tracked.text())
    push_mlflow_run_url(tracked.url)
    return tracked.run_id


def push_mlflow_run_url(url: str | None) -> None:
    """What the task's "MLflow run" button opens, "" for nothing: pushed either way, since the link,
    evaluated when the task ends, makes Airflow log a missing XCom as an error."""
    get_current_context()["ti"].xcom_push(key=MLFLOW_RUN_URL_KEY, value=url or "")


def started() -> str | None:
    start = get_current_context()["dag_run"].start_date
    return start.astimezone(UTC).isoformat(timespec="seconds") if start else None


@dag(
    dag_id=DAG_ID,
    dag_display_name="INT8 requantize",
    description="Calibrate one ONNX model to INT8 on Dask, validate, gate, track in MLflow, register",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=MAX_ACTIVE_RUNS,
    params=run_params(),
    default_args=RETRY_ARGS,
    doc_md=__doc__,
    tags=["int8flow"],
)
def int8_requantize() -> None:
    @task(task_display_name="Plan: check inputs")
    @bad_input_fails_at_once
    def plan() -> str:
        from int8flow.schemas.uri_redaction import redact_uri
        from int8flow.tasks.run.plan import plan_run

        context = get_current_context()
        planned = plan_run(run_config(run_output_dir(context["dag"].dag_id, context["run_id"])), cwd=airflow_home())
        log.info(
            "planned %s: %d calibration examples in %d shards, %d tensors; outputs in %s; MLflow %s",
            redact_uri(planned.model_uri),
            planned.calibration.sample,
            planned.shards,
            len(planned.tensors),
            planned.out,
            redact_uri(planned.tracking_uri),
        )
        return planned.out

    @task(task_display_name="Observe: histograms on Dask")
    @bad_input_fails_at_once
    def observe(out: str) -> str:
        from int8flow.tasks.run import stages

        with run_cluster(out) as (client, info):
            stages.record_cluster(out, info)
            record = stages.observe(out, client, ProgressLog(), run_config(out))
        log.info(
            "observed %d examples in %d shards, %.1f s (%d images skipped)",
            record.examples,
            record.shards,
            record.seconds,
            record.skipped_images,
        )
        return out

    @task(task_display_name="Thresholds")
    @bad_input_fails_at_once
    def thresholds(out: str) -> str:
        from int8flow.schemas.threshold_settings import AUTO_METHOD
        from int8flow.tasks.run import stages

        config = run_config(out)
        if config.method == AUTO_METHOD:  # the per-tensor choice is measured on the workers
            with run_cluster(out) as (client, _):
                record = stages.thresholds(out, client, ProgressLog(), config)
        else:
            record = stages.thresholds(out)
        log.info(
            "thresholds of %d tensors: merge %.1f s, search %.1f s",
            record.tensors,
            record.reduce_seconds,
            record.thresholds_seconds,
        )
        return out

    @task(task_display_name="Bias correction on Dask")
    @bad_input_fails_at_once
    def correct(out: str) -> str:
        from int8flow.tasks.run import stages

        config = run_config(out)
        if not config.bias_correction:  # no cluster to start for nothing
            log.info("bias correction is off")
            return out
        with run_cluster(out) as (client, _):
            record = stages.correct(out, client, ProgressLog(), config)
        log.info(
            "corrected the biases of %d layers over %d examples, %.1f s (largest shift %.3g, %s)",
            record.layers,
            record.examples,
            record.seconds,
            record.largest_shift,
            record.largest_shift_layer,
        )
        return out

    @task(task_display_name="Build INT8 model")
    @bad_input_fails_at_once
    def build(out: str) -> str:
        from int8flow.tasks.run import stages

        record = stages.build(out, run_config(out))
        log.info("wrote %s in %.1f s", record.path, record.seconds)
        return out

    @task(task_display_name="Validate on Dask")
    @bad_input_fails_at_once
    def validate(out: str) -> str:
        from int8flow.tasks.run import stages

        with run_cluster(out) as (client, _):
            record = stages.validate(out, client, ProgressLog(), run_config(out))
        if record is None:
            log.info("no validation data: validation and gate skipped")
        else:
            accuracy = record.accuracy
            log.info(
                "%d examples: FP32 top-1 %.2f%%, INT8 top-1 %.2f%%, agreement %.2f%%; %s",
                accuracy.examples,
                accuracy.fp32_top1,
                accuracy.int8_top1,
                accuracy.agreement_top1,
                "no deployment check"
                if accuracy.deploy_int8_top1 is None
                else f"deployed in {accuracy.deploy_runtime}: top-1 {accuracy.deploy_int8_top1:.2f}%, "
                f"agreement with int8flow {accuracy.deploy_agreement_top1:.2f}%",
            )
        return out

    @task(task_display_name="Accuracy gate")
    @bad_input_fails_at_once
    def gate(out: str) -> str:
        from int8flow.schemas.uri_redaction import redact_text
        from int8flow.tasks.outputs.run_report import write_run_report
        from int8flow.tasks.run import stages

        push_mlflow_run_url(None)  # a failed gate tracks its run below and pushes its page
        with run_cluster(out) as (client, _):
            record = stages.gate(out, client, ProgressLog(), run_config(out))
        for attempt in record.attempts:
            log.info(
                "gate attempt: FP32 kept %s, INT8 top-1 %.2f%%, drop %.2f points (%s): %s",
                ", ".join(attempt.excluded) or "none",
                attempt.accuracy.int8_top1,
                attempt.accuracy.gate_top1_drop,
                attempt.accuracy.gate_decided_by,
                "passed" if attempt.passed else "failed",
            )
        try:
            stages.check_gate(out)
        except stages.GateFailedError as error:
            try:  # like `int8flow run`, the failed calibration is tracked (tag int8flow.gate=failed)
                write_run_report(out, started())
                track_this_run(out)
            except Exception as tracking_error:  # noqa: BLE001 - the gate's verdict is this task's result
                log.warning("the failed run was not tracked in MLflow: %s", redact_text(str(tracking_error)))
            raise FailedAtOnce(form_words(str(error))) from None
        log.info("gate passed (max top-1 drop %s)", record.max_top1_drop)
        return out

    @task(task_display_name="Report")
    @bad_input_fails_at_once
    def report(out: str) -> str:
        from int8flow.tasks.outputs.run_report import write_run_report

        write_run_report(out, started())
        log.info("wrote %s/report.json and report.md", out)
        return out

    @task(task_display_name="Track in MLflow")
    @bad_input_fails_at_once
    def track(out: str) -> str:
        return track_this_run(out)

    @task(task_display_name="Register INT8 model")
    @bad_input_fails_at_once
    def register(out: str, mlflow_run_id: str) -> str | None:
        from int8flow.tasks.run.plan import load_plan
        from int8flow.tasks.tracking.run_logging import register

        config = load_plan(out).config
        version = register(out, mlflow_run_id, run_config(out))
        if version is None:
            log.info("not registered: no model name in 'register'")
        else:
            log.info("registered %s version %s, alias %s", config.register, version, config.alias or "none")
        return version

    gated = gate(validate(build(correct(thresholds(observe(plan()))))))
    out = report(gated)
    mlflow_run_id = track(out)
    for tracking_task in (gated, mlflow_run_id):  # the tasks that log a run: a failed gate does too
        tracking_task.operator.operator_extra_links = (MlflowRunLink(),)
    register(out, mlflow_run_id)


int8_requantize()

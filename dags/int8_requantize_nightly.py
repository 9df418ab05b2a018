"""
# int8_requantize_nightly

Every night (cron `0 2 * * *` UTC; set `INT8FLOW_NIGHTLY_SCHEDULE` in the Airflow environment to
change it) this DAG recalibrates every production model: it reads the model list, checks every entry
against the `int8_requantize` trigger form, then **triggers one `int8_requantize` run per model** and
waits for them. It does no calibration itself.

**The model list** is the Airflow Variable `int8flow_nightly_models`: a JSON list with one object per
model, each the conf of that model's run (the field names of the `int8_requantize` form; `model` and
`calib_data` required, the rest default as in the form):

```json
[
  {"model": "models:/resnet50-fp32@production", "calib_data": "/data/int8flow-data/imagenet-calib",
   "val_data": "/data/int8flow-data/imagenet-val", "preprocess": "imagenet-torch",
   "max_top1_drop": 1.0, "register": "resnet50-int8"}
]
```

A malformed list or entry fails `model_runs` and triggers nothing; the log names every bad entry.

**Why triggered runs, not dynamic task mapping of the stages.** Each model gets a DAG run of its
own: its own params (validated like a manual trigger), its own output folder and MLflow run key, its
own row in the grid, its own retries and clears; the nightly path is exactly the manual path, and one
model's failed gate does not mark another's tasks. Mapping every stage over the models inside one
run would need a mapped task group with per-model state in XCom, would share one run id (and so one
output folder and run key) between models, and would make "rerun model X" a clear of map index N.
The only mapped task here is the trigger, one per model.

**Runs and concurrency.** The runs are named `nightly__<time of this run>__<model name>`. This DAG has
`catchup=False` and at most one active run, and each trigger task waits for its model's run
(deferred, so it holds no worker slot): a model never has two nightly runs at once. A paused
`int8_requantize` fails the trigger instead of queueing runs forever.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Variable, dag, get_current_context, task
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable
from int8flow_airflow.failures import bad_input_fails_at_once
from int8flow_airflow.nightly import MODELS_VARIABLE, nightly_runs, nightly_schedule

TARGET_DAG_ID = "int8_requantize"

log = logging.getLogger("int8flow.int8_requantize_nightly")


@dag(
    dag_id="int8_requantize_nightly",
    dag_display_name="INT8 requantize: nightly",
    description="One int8_requantize run per production model (Variable int8flow_nightly_models)",
    schedule=CronTriggerTimetable(nightly_schedule(), timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=23),
    doc_md=__doc__,
    tags=["int8flow"],
)
def int8_requantize_nightly() -> None:
    @task(task_display_name="Read the model list")
    @bad_input_fails_at_once
    def model_runs() -> list[dict]:
        runs = nightly_runs(
            Variable.get(MODELS_VARIABLE, default=None, deserialize_json=True), get_current_context()["run_id"]
        )
        for run in runs:
            log.info("%s: %s", run["trigger_run_id"], run["conf"]["model"])
        log.info("%d model(s) to requantize", len(runs))
        return runs

    TriggerDagRunOperator.partial(
        task_id="requantize",
        task_display_name="Requantize model",
        trigger_dag_id=TARGET_DAG_ID,
        logical_date=None,
        wait_for_completion=True,
        poke_interval=60,
        deferrable=True,
        fail_when_dag_is_paused=True,
        openlineage_inject_parent_info=False,  # the conf holds run settings only
        map_index_template="{{ task.conf['model'] }}",
    ).expand_kwargs(model_runs())


int8_requantize_nightly()

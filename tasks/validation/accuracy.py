"""Accuracy of the INT8 model against FP32 on labelled data, fanned out over the validation shards.

Each worker rebuilds the INT8 graph from the FP32 model, the calibration table file and the pass
options (all fingerprinted), so no graph travels over the network and every worker runs exactly the
model that ``model.int8.onnx`` holds.
"""

from __future__ import annotations

import hashlib

import fsspec
from distributed import Client

from int8flow.schemas.run_folder import CALIBRATION_JSON
from int8flow.schemas.stage_records import Accuracy
from int8flow.tasks.distributed.cluster import threads_per_task
from int8flow.tasks.distributed.fanout import ProgressSink, quiet, run_shards
from int8flow.tasks.distributed.shard_jobs import Int8Ref, ValidatedShard, validate_shard
from int8flow.tasks.run.plan import RunPlan


def accuracy_of(shards: list[ValidatedShard], deploy_runtime: str) -> Accuracy:
    """The run's accuracy from the shards' hit counts: sums of integers, so any split gives the same."""
    examples = sum(shard.examples for shard in shards)

    def percent(hits: int) -> float:
        return 100.0 * hits / examples if examples else 0.0

    def deployed(hits: int) -> float | None:
        return None if deploy_runtime == "none" else percent(hits)

    return Accuracy(
        examples,
        sum(shard.skipped for shard in shards),
        percent(sum(shard.fp32_top1 for shard in shards)),
        percent(sum(shard.fp32_top5 for shard in shards)),
        percent(sum(shard.int8_top1 for shard in shards)),
        percent(sum(shard.int8_top5 for shard in shards)),
        percent(sum(shard.agreement_top1 for shard in shards)),
        sum(shard.gemm_fallbacks for shard in shards),
        deploy_runtime,
        deployed(sum(shard.deploy_top1 for shard in shards)),
        deployed(sum(shard.deploy_top5 for shard in shards)),
        deployed(sum(shard.deploy_agreement_top1 for shard in shards)),
    )


def int8_ref(plan: RunPlan, extra_exclude: tuple[str, ...] = ()) -> Int8Ref:
    """How workers rebuild the run's INT8 graph with ``extra_exclude`` kept in FP32."""
    table_path = plan.path(CALIBRATION_JSON)
    with fsspec.open(table_path, "rb") as file:
        table_sha256 = hashlib.sha256(file.read()).hexdigest()
    return Int8Ref(table_path, table_sha256, plan.quantization_options(extra_exclude), plan.config.signed_storage)


def validate_int8(
    plan: RunPlan,
    client: Client,
    extra_exclude: tuple[str, ...] = (),
    progress: ProgressSink = quiet,
    stage: str = "validate",
) -> Accuracy:
    """FP32, INT8 and deployed-INT8 accuracy over the validation shards, with ``extra_exclude`` kept in
    FP32; progress as ``stage`` (a gate attempt names itself)."""
    if plan.validation is None:
        raise ValueError("this run has no validation data; pass --val-data to validate and gate it")
    int8 = int8_ref(plan, extra_exclude)
    deploy = plan.config.deploy_runtime
    threads = threads_per_task(client)
    jobs = [(plan.model, spec, int8, deploy, threads) for spec in plan.shard_specs(plan.validation)]
    return accuracy_of(run_shards(client, stage, validate_shard, jobs, progress), deploy)

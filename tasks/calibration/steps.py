"""Calibrating a planned run: observe the shards on Dask, merge their partial files, write the table.

The steps meet only through the partial-histogram files named by the plan, so thresholds can be
chosen in another process, another Airflow task or another day.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from distributed import Client

from int8flow.kernels.histogram import Histogram
from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.schemas.run_folder import BIAS_SUMS_DIR, HISTOGRAM_DIR
from int8flow.tasks.calibration.bias_correction import bias_shifts
from int8flow.tasks.calibration.partial_files import merge_partial_files
from int8flow.tasks.calibration.sums_files import merge_partial_sums
from int8flow.tasks.calibration.table import build_calibration_table, write_calibration_table
from int8flow.tasks.distributed.cluster import threads_per_task
from int8flow.tasks.distributed.fanout import ProgressSink, quiet, run_shards
from int8flow.tasks.distributed.shard_jobs import (
    ObservedShard,
    calibration_table,
    correct_shard,
    fp32_graph,
    observe_shard,
    uncorrected_int8_graph,
)
from int8flow.tasks.outputs.manifest import owned_outputs, record_outputs, remove_outputs
from int8flow.tasks.run.plan import RunPlan
from int8flow.tasks.validation.accuracy import int8_ref


def observe_shards(plan: RunPlan, client: Client, progress: ProgressSink = quiet) -> list[ObservedShard]:
    """Every calibration shard's partial histograms on disk; stale partials of other plans removed."""
    specs = plan.shard_specs(plan.calibration)
    wanted = [plan.histogram_path(spec.shard) for spec in specs]
    _claim_partial_files(plan, HISTOGRAM_DIR, wanted)
    threads = threads_per_task(client)
    jobs = [
        (plan.model, spec, plan.tensors, plan.config.num_bins, plan.histogram_path(spec.shard), plan.run_key, threads)
        for spec in specs
    ]
    return run_shards(client, "observe", observe_shard, jobs, progress)


def correct_biases(
    plan: RunPlan, client: Client, progress: ProgressSink = quiet
) -> tuple[list[ObservedShard], CalibrationTable]:
    """The bias-correction pass over the calibration shards, and the table rewritten with its shifts.

    Sums and shifts are measured on the INT8 graph without corrections, whatever the table file
    holds already, so a retried stage writes the same table.
    """
    specs = plan.shard_specs(plan.calibration)
    wanted = [plan.bias_sums_path(spec.shard) for spec in specs]
    _claim_partial_files(plan, BIAS_SUMS_DIR, wanted)
    int8 = int8_ref(plan)
    threads = threads_per_task(client)
    jobs = [(plan.model, spec, int8, path, plan.run_key, threads) for spec, path in zip(specs, wanted)]
    shards = run_shards(client, "correct", correct_shard, jobs, progress)
    sums = merge_partial_sums(wanted, plan.run_key, int8.table_sha256)
    shifts = bias_shifts(fp32_graph(plan.model), uncorrected_int8_graph(plan.model, int8), sums)
    table = dataclasses.replace(
        calibration_table(int8), bias_corrections=shifts
    )  # the table the sums were measured with
    record_outputs(plan.out, write_calibration_table(table, plan.out))
    return shards, table


def _claim_partial_files(plan: RunPlan, folder: str, wanted: list[str]) -> None:
    """Record the partial files a pass will write, and remove stale ones of other plans in ``folder``.

    A shard file left by an earlier attempt with another shard count would be merged with this
    attempt's and count some examples twice, so only the files this plan names may remain.
    """
    partials = {name for name in owned_outputs(plan.out) if name.startswith(f"{folder}/")}
    remove_outputs(plan.out, partials - {path.removeprefix(plan.out + "/") for path in wanted})
    record_outputs(plan.out, wanted)  # before the workers write them, so a crash leaves nothing unrecorded


def merge_histograms(plan: RunPlan) -> dict[str, Histogram]:
    """The exact merge of the plan's partial files (any order gives the same histograms)."""
    paths = [plan.histogram_path(spec.shard) for spec in plan.shard_specs(plan.calibration)]
    return merge_partial_files(paths, plan.model.sha256, plan.config.num_bins)


def write_table(plan: RunPlan, histograms: Mapping[str, Histogram]) -> CalibrationTable:
    """The calibration table, written as JSON and TensorRT cache; bit-identical for any sharding."""
    metadata = {
        "model_sha256": plan.model.sha256,
        "calibration_data": plan.calibration.fingerprint,
        "calibration_examples": str(plan.calibration.sample),
        "num_bins": str(plan.config.num_bins),
    }
    table = build_calibration_table(histograms, plan.config.threshold_settings(), metadata)
    record_outputs(plan.out, write_calibration_table(table, plan.out))
    return table

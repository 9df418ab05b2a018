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
from int8flow.schemas.threshold_settings import AUTO_METHOD, ThresholdSettings
from int8flow.tasks.calibration.bias_correction import bias_shifts
from int8flow.tasks.calibration.method_choice import (
    auto_table,
    candidate_choices,
    tensor_candidates,
    threshold_readers,
)
from int8flow.tasks.calibration.partial_files import merge_partial_files
from int8flow.tasks.calibration.sums_files import merge_partial_sums
from int8flow.tasks.calibration.table import build_calibration_table, table_metadata, write_calibration_table
from int8flow.tasks.data.sharding import contiguous_shares
from int8flow.tasks.distributed.cluster import threads_per_task
from int8flow.tasks.distributed.fanout import ProgressSink, quiet, run_shards
from int8flow.tasks.distributed.shard_jobs import (
    ObservedShard,
    calibration_table,
    correct_shard,
    fp32_graph,
    measure_share,
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
    """The bias-correction pass over ``--correction-examples`` of the calibration data, sharded as
    observe shards, and the table rewritten with its shifts.

    Sums and shifts are measured on the INT8 graph without corrections, whatever the table file
    holds already, so a retried stage writes the same table.
    """
    specs = plan.shard_specs(plan.subsample(plan.calibration, plan.config.correction_examples))
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


def write_table(
    plan: RunPlan, histograms: Mapping[str, Histogram], client: Client | None = None, progress: ProgressSink = quiet
) -> CalibrationTable:
    """The calibration table, written as JSON and TensorRT cache; bit-identical for any sharding.

    ``--method auto`` measures its choice on the workers (``client``); the other methods need only
    the histograms."""
    metadata = {
        "model_sha256": plan.model.sha256,
        "calibration_data": plan.calibration.fingerprint,
        "calibration_examples": str(plan.calibration.sample),
        "num_bins": str(plan.config.num_bins),
    }
    settings = plan.config.threshold_settings()
    if settings.method != AUTO_METHOD:
        table = build_calibration_table(histograms, settings, metadata)
    elif client is None:
        raise ValueError(f"method {AUTO_METHOD!r} measures its choice on Dask workers: pass the run's client")
    else:
        table = _auto_table(plan, settings, histograms, client, progress, metadata)
    record_outputs(plan.out, write_calibration_table(table, plan.out))
    return table


def _auto_table(
    plan: RunPlan,
    settings: ThresholdSettings,
    histograms: Mapping[str, Histogram],
    client: Client,
    progress: ProgressSink,
    metadata: dict,
) -> CalibrationTable:
    """Each tensor's threshold from the candidate method of least measured error (``method_choice``).

    The slice is a seeded sample of ``--auto-examples`` examples of the calibration data set (its
    first ones when the run takes the first examples), measured whole by every task; the tensors
    are split into contiguous shares, one task each, so the choice does not depend on the split."""
    choices = candidate_choices(histograms, settings)
    readers = threshold_readers(fp32_graph(plan.model), plan.quantization_options())
    measured = tensor_candidates(choices, histograms, readers, settings.unsigned_activations)
    auto_slice = plan.subsample(plan.calibration, plan.config.auto_examples)
    slice_spec = dataclasses.replace(plan.shard_specs(auto_slice)[0], shard=0, shards=1)
    debiased, threads = plan.config.bias_correction, threads_per_task(client)
    jobs = [
        (plan.model, slice_spec, tensors, debiased, share, threads)
        for share, tensors in enumerate(contiguous_shares(measured, plan.shards))
    ]
    results = run_shards(client, "choose", measure_share, jobs, progress) if jobs else []
    errors = [tensor for result in results for tensor in result.tensors]
    recorded = table_metadata(settings, {**metadata, "auto_examples": str(auto_slice.sample)})
    return auto_table(choices, histograms, errors, recorded)

"""Calibrating a planned run: observe the shards on Dask, merge their partial files, write the table.

The steps meet only through the partial-histogram files named by the plan, so thresholds can be
chosen in another process, another Airflow task or another day.
"""

from __future__ import annotations

from collections.abc import Mapping

from distributed import Client
from fsspec.core import url_to_fs

from int8flow.kernels.histogram import Histogram
from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.schemas.run_folder import HISTOGRAM_DIR
from int8flow.tasks.calibration.partial_files import merge_partial_files
from int8flow.tasks.calibration.table import build_calibration_table, write_calibration_table
from int8flow.tasks.distributed.fanout import ProgressSink, quiet, run_shards
from int8flow.tasks.distributed.shard_jobs import ObservedShard, observe_shard
from int8flow.tasks.run.plan import RunPlan


def observe_shards(plan: RunPlan, client: Client, progress: ProgressSink = quiet) -> list[ObservedShard]:
    """Every calibration shard's partial histograms on disk; stale partials of other plans removed.

    A shard file left by an earlier attempt with another shard count would be merged with this
    attempt's and count some examples twice, so only the files this plan names may remain.
    """
    specs = plan.shard_specs(plan.calibration)
    wanted = {plan.histogram_path(spec.shard) for spec in specs}
    _remove_other_partials(plan.path(HISTOGRAM_DIR), wanted)
    jobs = [
        (plan.model, spec, plan.tensors, plan.config.num_bins, plan.histogram_path(spec.shard), plan.run_key)
        for spec in specs
    ]
    return run_shards(client, "observe", observe_shard, jobs, progress)


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
    write_calibration_table(table, plan.out)
    return table


def _remove_other_partials(directory: str, wanted: set[str]) -> None:
    fs, root = url_to_fs(directory)
    if not fs.isdir(root):
        return
    prefix = directory.rstrip("/")
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rpartition("/")[2]
        if f"{prefix}/{name}" not in wanted:
            fs.rm(entry)

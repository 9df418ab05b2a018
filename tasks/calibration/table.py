"""The threshold step: merged histograms in, calibration table (JSON + TensorRT cache) out.

It needs no model and no data, only the partial-histogram files, so a run can be re-thresholded
with another method in seconds (``int8flow rethreshold``).
"""

from __future__ import annotations

from collections.abc import Mapping

import fsspec

from int8flow.kernels.histogram import Histogram
from int8flow.kernels.thresholds import (
    ThresholdSettings,
    choose_thresholds,
    relative_quantization_error,
    storage_levels,
)
from int8flow.schemas.calibration_table import CalibrationTable, TensorCalibration
from int8flow.schemas.run_folder import CALIBRATION_JSON, TENSORRT_CACHE
from int8flow.tasks.calibration.partial_files import list_partial_files, merge_partial_files
from int8flow.tasks.outputs.atomic_files import atomic_write_text


def build_calibration_table(
    histograms: Mapping[str, Histogram], settings: ThresholdSettings, metadata: Mapping[str, str]
) -> CalibrationTable:
    """One record per tensor, in name order, with the settings recorded beside the thresholds."""
    choices = choose_thresholds(histograms, settings)
    records = tuple(
        TensorCalibration(
            name, settings.method, choices[name].threshold, histograms[name].signed, choices[name].divergence
        )
        for name in sorted(histograms)
    )
    return CalibrationTable(records, table_metadata(settings, metadata))


def quantization_errors(
    histograms: Mapping[str, Histogram], table: CalibrationTable, unsigned_activations: bool
) -> dict[str, float]:
    """Each tensor's relative quantization error at its threshold, with the levels it is stored in
    (255 for an unsigned tensor under ``unsigned_activations``, else 127), in table order."""
    return {
        tensor.name: relative_quantization_error(
            histograms[tensor.name],
            tensor.threshold,
            storage_levels(tensor.signed, unsigned_activations),
        )
        for tensor in table.tensors
        if tensor.name in histograms
    }


def table_metadata(settings: ThresholdSettings, metadata: Mapping[str, str]) -> dict[str, str]:
    """The settings behind a table's thresholds, recorded beside them, and the caller's ``metadata``."""
    return {
        "method": settings.method,
        "num_quantized_bins": str(settings.num_quantized_bins),
        "percentile": repr(settings.percentile),
        "spike_fix": str(settings.spike_fix).lower(),
        "unsigned_activations": str(settings.unsigned_activations).lower(),
        **metadata,
    }


def write_calibration_table(table: CalibrationTable, out_dir: str) -> tuple[str, str]:
    """Write both formats, each atomically; returns their paths."""
    json_path = f"{out_dir.rstrip('/')}/{CALIBRATION_JSON}"
    cache_path = f"{out_dir.rstrip('/')}/{TENSORRT_CACHE}"
    atomic_write_text(json_path, table.to_json())
    atomic_write_text(cache_path, table.to_tensorrt_cache())
    return json_path, cache_path


def read_calibration_table(out_dir: str) -> CalibrationTable:
    """The table a run wrote into ``out_dir``, checked by the strict reader."""
    path = f"{out_dir.rstrip('/')}/{CALIBRATION_JSON}"
    with fsspec.open(path, "r") as file:
        return CalibrationTable.from_json(file.read(), path)


def rethreshold(histogram_dir: str, settings: ThresholdSettings, out_dir: str) -> CalibrationTable:
    """New thresholds from a finished run's partial histograms, without a forward pass."""
    paths = list_partial_files(histogram_dir)
    histograms = merge_partial_files(paths)
    table = build_calibration_table(histograms, settings, {"histogram_files": str(len(paths))})
    write_calibration_table(table, out_dir)
    return table

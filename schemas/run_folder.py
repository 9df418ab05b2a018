"""The names inside a run's output folder, listed once.

Everything int8flow writes into ``--out`` is named here, and ``RESULT_NAMES`` is derived from the
same constants, so a new output cannot be written without ``--overwrite`` (and the MLflow upload)
knowing about it. Stages, reports and tests import these names instead of spelling them.
"""

from __future__ import annotations

PLAN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
"""Every file the run wrote, relative to the folder: the only files ``--overwrite`` removes and MLflow gets."""
HISTOGRAM_DIR = "histograms"
BIAS_SUMS_DIR = "bias_sums"
"""The bias-correction pass's partial sums, one file per calibration shard, beside the histograms."""
STAGE_DIR = "stages"
CALIBRATION_JSON = "calibration.json"
TENSORRT_CACHE = "calibration.cache"
INT8_MODEL = "model.int8.onnx"
FP32_MODEL = "model.fp32.onnx"
"""A registry model's FP32 bytes, downloaded once at plan time so every worker reads the same file."""
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"
TENSORS_PNG = "tensors.png"
SENSITIVITY_PNG = "sensitivity.png"
"""The key plots (the worst-fitting tensors' histograms in one figure, the most sensitive nodes) lie
at the top level: MLflow's compare view offers only a run's top-level artifacts side by side."""
PARTIAL_FILE_SUFFIX = ".parquet"

RESULT_NAMES: tuple[str, ...] = (
    PLAN_FILE,
    MANIFEST_FILE,
    HISTOGRAM_DIR,
    BIAS_SUMS_DIR,
    CALIBRATION_JSON,
    TENSORRT_CACHE,
    INT8_MODEL,
    FP32_MODEL,
    REPORT_JSON,
    REPORT_MD,
    REPORT_HTML,
    PLOTS_DIR,
    TENSORS_PNG,
    SENSITIVITY_PNG,
    STAGE_DIR,
)
"""Every top-level entry a run may write into its output folder (what it did write is in the manifest)."""

RUN_SUBFOLDERS: tuple[str, ...] = (HISTOGRAM_DIR, BIAS_SUMS_DIR, PLOTS_DIR, STAGE_DIR)
"""The folders a run writes into; each must be a real folder, never a link to somewhere else."""


def partial_file_name(shard: int) -> str:
    """The partial-histogram file of calibration shard ``shard`` (``shard=00003.parquet``)."""
    return f"shard={shard:05d}{PARTIAL_FILE_SUFFIX}"


def stage_record_name(stage: str) -> str:
    """Where stage ``stage`` leaves its record, relative to the output folder."""
    return f"{STAGE_DIR}/{stage}.json"

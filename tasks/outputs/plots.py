"""PNG plots of a run: the histograms behind the worst thresholds (one each, and all in one figure
for comparing runs), and per-node sensitivity.

A histogram with its threshold drawn on it shows at a glance whether a large divergence comes from
outliers clipped on purpose or from a bad choice. Figures are built on ``matplotlib.figure.Figure``
with the Agg canvas, never through pyplot, so that plotting changes no process-wide backend or state
of other code in the same worker; each PNG is rendered to bytes and written atomically.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from int8flow.kernels.histogram import Histogram
from int8flow.schemas.calibration_table import CalibrationTable, TensorCalibration
from int8flow.schemas.run_folder import PLOTS_DIR, SENSITIVITY_PNG, TENSORS_PNG
from int8flow.tasks.outputs.atomic_files import atomic_write_bytes
from int8flow.tasks.outputs.report import divergence_rank, ranking_figure

SENSITIVITY_TOP = 20
FIGURE_SIZE = (8.0, 4.5)
DPI = 100
DISPLAY_BINS = 256
OVERVIEW_COLUMNS = 2
# Keeps "<prefix><slug>-<hash>.png" far below the 255-byte file name limit of common filesystems.
MAX_SLUG = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def plot_tensors(
    out_dir: str, histograms: Mapping[str, Histogram], table: CalibrationTable, errors: Mapping[str, float]
) -> list[str]:
    """The worst-fitting tensors' histograms: all in one figure first, then one plot each."""
    overview = plot_tensor_overview(out_dir, histograms, table, errors)
    return [*([overview] if overview else []), *plot_tensor_histograms(out_dir, histograms, table, errors)]


def plot_tensor_histograms(
    out_dir: str,
    histograms: Mapping[str, Histogram],
    table: CalibrationTable,
    errors: Mapping[str, float],
    count: int = 6,
) -> list[str]:
    """One PNG per tensor ranked first as the report ranks them (``ranking_figure``: divergence or
    relative quantization error ``errors``), ``count`` of them; paths relative to ``out_dir``.

    Only tensors with both a threshold and a histogram are candidates.
    """
    paths = []
    for tensor in worst_tensors(histograms, table, errors, count):
        relative = f"{PLOTS_DIR}/{histogram_file_name(tensor.name)}"
        figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
        _draw_histogram(figure.add_subplot(), histograms[tensor.name].to_host(), tensor, errors.get(tensor.name))
        _write_png(out_dir, relative, figure)
        paths.append(relative)
    return paths


def plot_tensor_overview(
    out_dir: str,
    histograms: Mapping[str, Histogram],
    table: CalibrationTable,
    errors: Mapping[str, float],
    count: int = 6,
) -> str | None:
    """The same tensors as :func:`plot_tensor_histograms` in one figure, two a row, under one name in
    every run (``TENSORS_PNG``), so runs compare side by side; None when no tensor qualifies."""
    tensors = worst_tensors(histograms, table, errors, count)
    if not tensors:
        return None
    columns = min(OVERVIEW_COLUMNS, len(tensors))
    rows = math.ceil(len(tensors) / columns)
    figure = Figure(figsize=(FIGURE_SIZE[0] * columns, FIGURE_SIZE[1] * rows), dpi=DPI, layout="constrained")
    for axes, tensor in zip(figure.subplots(rows, columns, squeeze=False).flat, tensors, strict=False):
        _draw_histogram(axes, histograms[tensor.name].to_host(), tensor, errors.get(tensor.name))
    for axes in figure.axes[len(tensors) :]:
        axes.set_axis_off()  # an odd count leaves one cell empty
    _write_png(out_dir, TENSORS_PNG, figure)
    return TENSORS_PNG


def worst_tensors(
    histograms: Mapping[str, Histogram], table: CalibrationTable, errors: Mapping[str, float], count: int
) -> list[TensorCalibration]:
    """The ``count`` tensors the report ranks first (with both a threshold and a histogram)."""
    candidates = [tensor for tensor in table.tensors if tensor.name in histograms]
    by_error = ranking_figure(tensor.method for tensor in candidates) == "error"

    def rank(tensor: TensorCalibration) -> tuple[bool, float, str]:
        return divergence_rank(tensor.name, errors.get(tensor.name) if by_error else tensor.divergence)

    return sorted(candidates, key=rank)[:count]


def plot_sensitivity(out_dir: str, sensitivity: Sequence[Mapping[str, Any]]) -> str | None:
    """Bars of the first ``SENSITIVITY_TOP`` nodes (the list comes most sensitive first); None if empty."""
    if not sensitivity:
        return None
    top = list(sensitivity[:SENSITIVITY_TOP])
    figure = Figure(figsize=(FIGURE_SIZE[0], 1.5 + 0.3 * len(top)), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    labels = [f"{entry['node']} ({entry['op_type']})" for entry in top]
    positions = np.arange(len(top))
    axes.barh(positions, [entry["error"] for entry in top])
    axes.set_yticks(positions, labels, fontsize="small")
    axes.invert_yaxis()
    axes.set_xlabel("normalised output error, sum((y_int8 - y)²) / sum(y²), with only this node in INT8")
    axes.set_title(f"Most sensitive nodes ({len(top)} of {len(sensitivity)})")
    _write_png(out_dir, SENSITIVITY_PNG, figure)
    return SENSITIVITY_PNG


def histogram_file_name(tensor_name: str) -> str:
    """A safe, unique file name: readable slug plus a hash of the exact name.

    The hash keeps names apart that the slug merges ("a/b" and "a:b"), that differ only in case
    (case-insensitive filesystems) or that are cut at ``MAX_SLUG``.
    """
    slug = _UNSAFE.sub("_", tensor_name).strip("._")[:MAX_SLUG] or "tensor"
    digest = hashlib.sha256(tensor_name.encode()).hexdigest()[:10]
    return f"histogram-{slug}-{digest}.png"


def _draw_histogram(axes: Axes, histogram: Histogram, tensor: TensorCalibration, error: float | None) -> None:
    occupied = np.flatnonzero(histogram.counts)
    if occupied.size:
        counts, edges = _display_bins(histogram, int(occupied[0]), int(occupied[-1]))
        axes.stairs(counts, edges, fill=True, baseline=0.5)
    axes.set_yscale("log")
    for line in (tensor.threshold, -tensor.threshold) if tensor.signed else (tensor.threshold,):
        axes.axvline(line, color="tab:red", linestyle="--", linewidth=1.2)
    divergence = "none" if math.isnan(tensor.divergence) else f"{tensor.divergence:.4g}"
    relative = "" if error is None else f", relative error {error:.3g}"
    axes.set_title(
        f"{tensor.name}\n{tensor.method}: threshold {tensor.threshold:.6g}, divergence {divergence}{relative}",
        fontsize="medium",
    )
    axes.set_xlabel("value")
    axes.set_ylabel("count (log scale)")


def _display_bins(histogram: Histogram, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and real-valued edges of the occupied bins ``first..last``, merged for the eye.

    Thousands of bins a pixel wide turn the plot into noise, so aligned runs of a power-of-two
    number of bins are summed until at most ``DISPLAY_BINS`` remain: a coarser grid of the same
    kind, whose edges are still exact edges of the histogram.
    """
    group = 1 << max(0, math.ceil(math.log2((last - first + 1) / DISPLAY_BINS)))
    start = first - first % group
    stop = last + 1 + (-(last + 1)) % group
    counts = histogram.counts[start:stop].reshape(-1, group).sum(axis=1)
    # Left edge of bin i: i widths above the grid's lower end, -2**e (signed) or 0.
    low_end = -(histogram.num_bins // 2) if histogram.signed else 0
    edges = (np.arange(start, stop + 1, group) + low_end) * histogram.bin_width
    return counts, edges


def _write_png(out_dir: str, relative: str, figure: Figure) -> None:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer, metadata={"Software": None})
    atomic_write_bytes(f"{out_dir.rstrip('/')}/{relative}", buffer.getvalue())

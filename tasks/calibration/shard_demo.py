"""The shard demo (``int8flow shard-demo``): the merge-exactness contract shown without a model or data.

The "model" is a generator of activation-like tensors (a stem conv, a zero-heavy ReLU6, a residual
add, a pooled ReLU, a tensor with outliers), each example drawn from its own seed so a shard can
produce its examples alone, as a data shard would be read. The demo calibrates the same examples as
one shard with large batches, as 4 shards and as 7 shards in reverse order with small batches,
streams them through the collector the real observe step uses, writes Parquet partials for each,
merges them and checks that every method's thresholds are bit-identical across the three splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from int8flow.kernels.histogram import Histogram
from int8flow.kernels.thresholds import METHODS, ThresholdSettings
from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.schemas.histogram_bins import DEFAULT_NUM_BINS
from int8flow.schemas.run_folder import HISTOGRAM_DIR, partial_file_name
from int8flow.tasks.calibration.collector import HistogramCollector
from int8flow.tasks.calibration.partial_files import list_partial_files, merge_partial_files, write_partial_histograms
from int8flow.tasks.calibration.table import build_calibration_table, write_calibration_table
from int8flow.tasks.data.sharding import batch_ranges, shard_range

VALUES_PER_EXAMPLE = 512
DEMO_SEED = 2026


def _stem(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.05, 0.8, VALUES_PER_EXAMPLE)


def _relu6(rng: np.random.Generator) -> np.ndarray:
    values = np.clip(rng.normal(0.5, 2.5, VALUES_PER_EXAMPLE), 0.0, 6.0)
    return np.where(rng.random(VALUES_PER_EXAMPLE) < 0.3, 0.0, values)


def _residual(rng: np.random.Generator) -> np.ndarray:
    return rng.laplace(0.0, 0.4, VALUES_PER_EXAMPLE)


def _pooled(rng: np.random.Generator) -> np.ndarray:
    return np.maximum(rng.normal(0.3, 1.2, VALUES_PER_EXAMPLE), 0.0).astype(np.float32)


def _outliers(rng: np.random.Generator) -> np.ndarray:
    values = rng.normal(0.0, 1.0, VALUES_PER_EXAMPLE)
    if rng.random() < 0.02:
        values[0] = rng.choice([-1.0, 1.0]) * rng.uniform(20.0, 60.0)
    return values


DEMO_TENSORS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "stem/conv_out": _stem,
    "block1/relu6_out": _relu6,
    "block2/add_out": _residual,
    "head/pool_out": _pooled,
    "block3/conv_out": _outliers,
}


@dataclass(frozen=True)
class Split:
    """One way of cutting the calibration set: how many shards, batch size, shard order."""

    shards: int
    batch_size: int
    reverse: bool

    @property
    def label(self) -> str:
        order = ", reversed" if self.reverse else ""
        return f"{self.shards} shard(s), batch {self.batch_size}{order}"


DEMO_SPLITS = (Split(1, 64, False), Split(4, 16, False), Split(7, 5, True))


@dataclass(frozen=True)
class DemoResult:
    tables: dict[str, CalibrationTable]  # by method, from the first split
    identical: dict[str, bool]  # by method: all splits gave the same table
    splits: tuple[Split, ...]
    histograms: dict[str, Histogram]


def demo_fingerprint() -> str:
    """Stands in for the model's sha256: what generated the activations."""
    recipe = f"int8flow-demo:{DEMO_SEED}:{VALUES_PER_EXAMPLE}:{','.join(DEMO_TENSORS)}"
    return hashlib.sha256(recipe.encode()).hexdigest()


def example_activations(index: int) -> dict[str, np.ndarray]:
    """The activations example ``index`` produces, independent of which shard asks."""
    rng = np.random.default_rng([DEMO_SEED, index])
    return {name: make(rng) for name, make in DEMO_TENSORS.items()}


def observe_examples(examples: range, batch_size: int, num_bins: int) -> dict[str, Histogram]:
    """Stream one shard batch by batch into histograms: only one batch is held at a time."""
    collector = HistogramCollector(tuple(DEMO_TENSORS), num_bins)
    for batch in batch_ranges(examples, batch_size):
        activations = [example_activations(index) for index in batch]
        for name in DEMO_TENSORS:
            collector(name, np.concatenate([example[name] for example in activations]))
    return collector.histograms


def calibrate_split(split: Split, examples: int, histogram_dir: str, num_bins: int) -> dict[str, Histogram]:
    order = range(split.shards - 1, -1, -1) if split.reverse else range(split.shards)
    for shard in order:
        histograms = observe_examples(shard_range(examples, split.shards, shard), split.batch_size, num_bins)
        write_partial_histograms(
            f"{histogram_dir}/{partial_file_name(shard)}", "demo", demo_fingerprint(), shard, histograms
        )
    return merge_partial_files(list_partial_files(histogram_dir), demo_fingerprint(), num_bins)


def run_demo(out_dir: str, examples: int = 1024, num_bins: int = DEFAULT_NUM_BINS) -> DemoResult:
    """Calibrate every split, threshold with every method, write the first split's outputs."""
    tables_by_split: list[dict[str, CalibrationTable]] = []
    first_histograms: dict[str, Histogram] = {}
    for position, split in enumerate(DEMO_SPLITS):
        histogram_dir = (
            f"{out_dir}/{HISTOGRAM_DIR}" if position == 0 else f"{out_dir}/splits/{position}/{HISTOGRAM_DIR}"
        )
        histograms = calibrate_split(split, examples, histogram_dir, num_bins)
        first_histograms = first_histograms or histograms
        metadata = {"model_sha256": demo_fingerprint(), "num_bins": str(num_bins), "examples": str(examples)}
        tables_by_split.append(
            {
                method: build_calibration_table(histograms, ThresholdSettings(method=method), metadata)
                for method in METHODS
            }
        )
    tables = tables_by_split[0]
    for method, table in tables.items():
        write_calibration_table(table, out_dir if method == "entropy" else f"{out_dir}/methods/{method}")
    identical = {
        method: all(split_tables[method].to_json() == tables[method].to_json() for split_tables in tables_by_split)
        for method in METHODS
    }
    return DemoResult(tables, identical, DEMO_SPLITS, first_histograms)

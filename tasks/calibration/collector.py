"""Streaming activations into histograms: what the observe stage runs on each worker, batch by batch.

Each activation is histogrammed as soon as it is produced and then dropped by the executor, so
memory holds one batch of activations plus one histogram per tensor, however many examples pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from int8flow.kernels.histogram import Histogram, NonFiniteValuesError
from int8flow.schemas.histogram_bins import DEFAULT_NUM_BINS
from int8flow.tasks.graph.executor import GraphExecutor


class NonFiniteActivationError(ValueError):
    """A tensor of the model produced NaN or Inf on calibration data."""


class UntypedTensorError(ValueError):
    """A tensor chosen for calibration holds integers: the model lacked the types to tell beforehand."""


class HistogramCollector:
    """An executor observer that merges each batch of a tensor into that tensor's histogram."""

    def __init__(self, tensors: Sequence[str], num_bins: int = DEFAULT_NUM_BINS) -> None:
        self.num_bins = num_bins
        self.histograms = {name: Histogram.empty(num_bins) for name in tensors}

    def __call__(self, name: str, values: Any) -> None:
        if values.dtype.kind != "f":
            raise UntypedTensorError(
                f"tensor {name!r} holds {values.dtype} values, not floats, and shape inference could not type it "
                "beforehand; run onnx.shape_inference.infer_shapes on the model (or re-export it) and try again"
            )
        try:
            batch = Histogram.of(values, self.num_bins)
        except NonFiniteValuesError as error:
            raise NonFiniteActivationError(
                f"tensor {name!r}: {error.nan_count} NaN and {error.inf_count} infinite values on calibration "
                "data; check the model and the preprocessing of its inputs"
            ) from None
        self.histograms[name] = self.histograms[name].merge(batch)


def collect_histograms(
    executor: GraphExecutor,
    batches: Iterable[Mapping[str, Any]],
    tensors: Sequence[str],
    num_bins: int = DEFAULT_NUM_BINS,
) -> dict[str, Histogram]:
    """Histograms of ``tensors`` over every batch, on the executor's backend: the one observe loop."""
    collector = HistogramCollector(tensors, num_bins)
    watched = frozenset(tensors)
    for batch in batches:
        executor.run(batch, collector, watched)
    return collector.histograms

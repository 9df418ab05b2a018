"""The threshold settings of a run: a data contract recorded in calibration tables and MLflow.

They live in ``schemas`` so that the kernels that obey them and the run configuration that exposes
them (CLI, Airflow Params, MLflow params) share one definition of the methods and their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

METHODS: tuple[str, ...] = ("entropy", "naive", "percentile", "mse")
"""The methods that need nothing but the merged histograms (and so the choices of ``rethreshold``)."""
AUTO_METHOD = "auto"
AUTO_CANDIDATES: tuple[str, ...] = ("percentile", "entropy", "mse")
"""What ``auto`` chooses among per tensor; on equal measured errors the first listed wins."""
METHOD_CHOICES: tuple[str, ...] = (*METHODS, AUTO_METHOD)
DEFAULT_NUM_QUANTIZED_BINS = 255
DEFAULT_PERCENTILE = 99.99


@dataclass(frozen=True)
class ThresholdSettings:
    """What a run chose; one place for the defaults the CLI, Airflow and MLflow all show."""

    # Percentile by default: with bias correction it measured best on EfficientNet-Lite0 and the
    # Fashion-MNIST ResNet (benchmarks/RESULTS.md, "Accuracy against NNCF"); entropy is one option away.
    method: str = "percentile"
    num_quantized_bins: int = DEFAULT_NUM_QUANTIZED_BINS
    percentile: float = DEFAULT_PERCENTILE
    spike_fix: bool = True
    # Non-negative tensors will be stored as uint8 (0..255, QuantizationOptions.unsigned_activations):
    # choose their thresholds for 255 steps over [0, t] instead of 127. On by default: twice the levels,
    # and only then does onnxruntime fuse a ReLU/ReLU6 into its integer Conv and Add (export_qdq).
    unsigned_activations: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHOD_CHOICES:
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(METHOD_CHOICES)}")
        if self.num_quantized_bins < 2:
            raise ValueError(f"num_quantized_bins={self.num_quantized_bins} must be at least 2")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile={self.percentile} must be in (0, 100]")

    @classmethod
    def of(cls, values: Any) -> ThresholdSettings:
        """The settings held under the same names by ``values`` (a ``RunConfig``, parsed CLI options)."""
        return cls(**{field.name: getattr(values, field.name) for field in fields(cls)})


THRESHOLD_SETTING_NAMES: tuple[str, ...] = tuple(field.name for field in fields(ThresholdSettings))
"""The run settings that choose thresholds (and so the options of ``int8flow rethreshold``)."""

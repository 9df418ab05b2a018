"""OpenVINO NNCF as a peer: ``nncf.quantize`` on the ONNX model, run by onnxruntime (STACK.md, "Peers").

NNCF's two presets with its defaults otherwise (per-channel weights, its range estimators,
FastBiasCorrection on), at its default subset size and on the whole calibration set, so the
benchmarks compare int8flow with the strongest ONNX post-training quantizer on the same crops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import nncf
import numpy as np
import onnx

DEFAULT_SUBSET_SIZE = 300
"""``nncf.quantize``'s own default ``subset_size``."""
PRESETS = {"PERFORMANCE": nncf.QuantizationPreset.PERFORMANCE, "MIXED": nncf.QuantizationPreset.MIXED}

nncf.set_log_level(logging.ERROR)


def nncf_variants(examples: int) -> Iterator[tuple[str, str, int]]:
    """(label, preset, subset size) of every NNCF run a benchmark makes with ``examples`` crops."""
    for preset in PRESETS:
        for subset in sorted({min(DEFAULT_SUBSET_SIZE, examples), examples}):
            yield f"NNCF {preset} {subset}", preset, subset


def nncf_quantize(model_path: str, input_name: str, examples: np.ndarray, preset: str, subset: int) -> bytes:
    """The QDQ model NNCF makes from ``examples`` (one example per item, as NNCF counts them)."""
    dataset = nncf.Dataset([examples[i : i + 1] for i in range(len(examples))], lambda item: {input_name: item})
    quantized = nncf.quantize(onnx.load(model_path), dataset, preset=PRESETS[preset], subset_size=subset)
    return quantized.SerializeToString()

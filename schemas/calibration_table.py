"""The calibration table: one symmetric INT8 threshold per tensor, and its two file formats.

The JSON form is ours and loses nothing (method, divergence, signedness, metadata, and the bias
corrections of the layers), so a run can be audited and compared later. The TensorRT calibration
cache (REFERENCE.md section 3) is what an engine builder reads: only a float32 scale per tensor, so
it cannot carry bias corrections: those live in the JSON table and in ``model.int8.onnx``. Both are
parsed strictly, because a table that loads with a silently wrong threshold costs accuracy nobody
can trace back.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import struct
from dataclasses import dataclass, field
from typing import Any

# Symmetric int8 quantization maps a threshold to 127 steps (zero point 0; activations beyond it
# saturate at -128..127, as ONNX QuantizeLinear does).
INT8_MAX = 127

FORMAT_NAME = "int8flow.calibration-table"
FORMAT_VERSION = 1
DEFAULT_TENSORRT_VERSION_TAG = "TRT-8601-EntropyCalibration2"

_TENSOR_KEYS = ("name", "method", "threshold", "signed", "divergence")
_TABLE_KEYS = ("format", "format_version", "metadata", "tensors")
_CORRECTIONS_KEY = "bias_corrections"
_TENSORRT_HEADER = re.compile(r"TRT-(\d+)-([A-Za-z][A-Za-z0-9]*)")
_TENSORRT_SCALE = re.compile(r"[0-9a-fA-F]{8}")


class CalibrationTableError(ValueError):
    """A calibration table, or one of its files, is malformed."""


@dataclass(frozen=True)
class TensorCalibration:
    """The threshold chosen for one tensor, with what is needed to judge the choice later.

    ``divergence`` is the KL divergence or quantization error of the chosen threshold; NaN only for
    methods that compute none (naive max, or a table read from a TensorRT cache).
    """

    name: str
    method: str
    threshold: float
    signed: bool
    divergence: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "\n" in self.name or "\r" in self.name:
            raise CalibrationTableError(f"tensor name {self.name!r} must be a non-empty string without line breaks")
        if not isinstance(self.method, str) or not self.method:
            raise CalibrationTableError(f"tensor {self.name!r}: method {self.method!r} must be a non-empty string")
        if not isinstance(self.signed, bool):
            raise CalibrationTableError(f"tensor {self.name!r}: signed {self.signed!r} must be a bool")
        threshold = _as_float(self.threshold)
        if threshold is None or not math.isfinite(threshold) or threshold <= 0.0:
            raise CalibrationTableError(
                f"tensor {self.name!r}: threshold {self.threshold!r} must be a finite number > 0 "
                "(the symmetric int8 range is [-threshold, threshold])"
            )
        divergence = _as_float(self.divergence)
        if divergence is None or math.isinf(divergence):
            raise CalibrationTableError(
                f"tensor {self.name!r}: divergence {self.divergence!r} must be a finite number, or "
                "NaN for a method that computes none"
            )
        # Stored as float so that scale, JSON and equality do not depend on the caller's int/float.
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "divergence", divergence)

    @property
    def scale(self) -> float:
        """Real value of one int8 step."""
        return self.threshold / INT8_MAX


@dataclass(frozen=True)
class CalibrationTable:
    """Thresholds of every calibrated tensor, in a fixed order, and the settings behind them.

    ``bias_corrections``: per layer node, what to add to each output channel's float bias (empty
    when bias correction is off; such a table's JSON has no ``bias_corrections`` key at all).
    """

    tensors: tuple[TensorCalibration, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    bias_corrections: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", tuple(self.tensors))
        for tensor in self.tensors:
            if not isinstance(tensor, TensorCalibration):
                raise CalibrationTableError(
                    f"calibration table entries must be TensorCalibration, not {type(tensor).__name__}"
                )
        seen: set[str] = set()
        for tensor in self.tensors:
            if tensor.name in seen:
                raise CalibrationTableError(
                    f"tensor {tensor.name!r} appears twice; a table holds one threshold per tensor"
                )
            seen.add(tensor.name)
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise CalibrationTableError(f"metadata {key!r}: {value!r}: keys and values must be strings")
        object.__setattr__(self, "metadata", dict(self.metadata))
        object.__setattr__(self, "bias_corrections", _checked_corrections(self.bias_corrections))

    def by_name(self) -> dict[str, TensorCalibration]:
        return {tensor.name: tensor for tensor in self.tensors}

    def to_json(self) -> str:
        """Everything, with a fixed key order, so equal tables give equal text."""
        document = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "metadata": dict(sorted(self.metadata.items())),
            "tensors": [
                {
                    "name": tensor.name,
                    "method": tensor.method,
                    "threshold": tensor.threshold,
                    "signed": tensor.signed,
                    "divergence": None if math.isnan(tensor.divergence) else tensor.divergence,
                }
                for tensor in self.tensors
            ],
        }
        if self.bias_corrections:
            document[_CORRECTIONS_KEY] = {node: list(shift) for node, shift in sorted(self.bias_corrections.items())}
        return json.dumps(document, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> CalibrationTable:
        """Parse ``to_json`` output; ``source`` (a path or URL) names the text in errors."""
        try:
            document = json.loads(text, parse_constant=_reject_constant)
        except ValueError as error:
            raise CalibrationTableError(f"{source}: not valid JSON ({error})") from None
        if not isinstance(document, dict):
            raise CalibrationTableError(f"{source}: expected a JSON object at the top level")
        corrections = document.pop(_CORRECTIONS_KEY, {})
        _check_keys(document, _TABLE_KEYS, source)
        if document["format"] != FORMAT_NAME:
            raise CalibrationTableError(
                f"{source}: format {document['format']!r} is not {FORMAT_NAME!r}; pass an int8flow "
                "calibration table (a TensorRT cache is read with from_tensorrt_cache)"
            )
        if document["format_version"] != FORMAT_VERSION:
            raise CalibrationTableError(
                f"{source}: calibration table format version {document['format_version']!r} but "
                f"this int8flow reads version {FORMAT_VERSION}; recalibrate with this version"
            )
        if not isinstance(document["metadata"], dict) or not isinstance(document["tensors"], list):
            raise CalibrationTableError(f"{source}: 'metadata' must be an object and 'tensors' a list")
        tensors = []
        for index, entry in enumerate(document["tensors"]):
            where = f"{source}: tensor #{index}"
            if not isinstance(entry, dict):
                raise CalibrationTableError(f"{where}: expected an object, found {entry!r}")
            _check_keys(entry, _TENSOR_KEYS, where)
            divergence = math.nan if entry["divergence"] is None else entry["divergence"]
            try:
                tensors.append(
                    TensorCalibration(
                        entry["name"],
                        entry["method"],
                        entry["threshold"],
                        entry["signed"],
                        divergence,
                    )
                )
            except CalibrationTableError as error:
                raise CalibrationTableError(f"{where}: {error}") from None
        if not isinstance(corrections, dict):
            raise CalibrationTableError(f"{source}: {_CORRECTIONS_KEY!r} must be an object of node: [shifts]")
        return _table(tensors, document["metadata"], source, corrections)

    def to_tensorrt_cache(self, version_tag: str = DEFAULT_TENSORRT_VERSION_TAG) -> str:
        """The TensorRT calibration cache: a header, then ``name: <big-endian float32 scale>``."""
        if not _TENSORRT_HEADER.fullmatch(version_tag):
            raise CalibrationTableError(
                f"TensorRT version tag {version_tag!r} must look like {DEFAULT_TENSORRT_VERSION_TAG!r}"
            )
        lines = [version_tag]
        for tensor in self.tensors:
            try:
                packed = struct.pack(">f", tensor.scale)
                representable = struct.unpack(">f", packed)[0] > 0.0
            except OverflowError:
                representable = False
            if not representable:
                raise CalibrationTableError(
                    f"tensor {tensor.name!r}: scale {tensor.scale!r} (threshold "
                    f"{tensor.threshold!r}) is outside the positive float32 range of a TensorRT "
                    "cache; check the calibration of this tensor"
                )
            lines.append(f"{tensor.name}: {packed.hex()}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_tensorrt_cache(cls, text: str, source: str) -> CalibrationTable:
        """Parse a TensorRT calibration cache; thresholds are the float32 scales times 127.

        The cache keeps neither signedness nor divergence: tensors read back are signed, with a
        NaN divergence, and their method is the header's calibrator name. Blank lines are skipped.
        """
        lines = text.splitlines()
        if not lines or not (header := _TENSORRT_HEADER.fullmatch(lines[0])):
            first = lines[0] if lines else ""
            raise CalibrationTableError(
                f"{source}, line 1: header {first!r} is not a TensorRT calibration cache header "
                f"like {DEFAULT_TENSORRT_VERSION_TAG!r}"
            )
        method = header.group(2)
        tensors = []
        first_line: dict[str, int] = {}
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            name, separator, scale_hex = line.rpartition(": ")
            if not separator or not _TENSORRT_SCALE.fullmatch(scale_hex):
                raise CalibrationTableError(
                    f"{source}, line {number}: {line!r} is not 'name: <8 hex digits>'; the "
                    "cache is corrupt: regenerate it"
                )
            if name in first_line:
                raise CalibrationTableError(
                    f"{source}, line {number}: tensor {name!r} appears again (first on line "
                    f"{first_line[name]}); a cache holds one scale per tensor"
                )
            first_line[name] = number
            (scale,) = struct.unpack(">f", bytes.fromhex(scale_hex))
            try:
                tensors.append(TensorCalibration(name, method, scale * INT8_MAX, True, math.nan))
            except CalibrationTableError as error:
                raise CalibrationTableError(f"{source}, line {number}: {error}") from None
        return _table(tensors, {}, source)


def _table(tensors: list[TensorCalibration], metadata: Any, source: str, corrections: Any = None) -> CalibrationTable:
    try:
        return CalibrationTable(tuple(tensors), metadata, corrections or {})
    except CalibrationTableError as error:
        raise CalibrationTableError(f"{source}: {error}") from None


def _checked_corrections(corrections: Any) -> dict[str, tuple[float, ...]]:
    """Node name -> finite float shifts, as plain floats so that equal tables give equal JSON."""
    checked = {}
    for node, shift in dict(corrections).items():
        values = [_as_float(value) for value in shift] if isinstance(shift, list | tuple) else [None]
        if (
            not isinstance(node, str)
            or not node
            or not values
            or any(value is None or not math.isfinite(value) for value in values)
        ):
            raise CalibrationTableError(
                f"bias correction of node {node!r}: {shift!r} must be a non-empty list of finite numbers"
            )
        checked[node] = tuple(float(value) for value in values if value is not None)
    return checked


def _as_float(value: Any) -> float | None:
    """The value as a float, or None for anything but a real number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _check_keys(entry: dict[str, Any], expected: tuple[str, ...], where: str) -> None:
    missing = [key for key in expected if key not in entry]
    unknown = sorted(key for key in entry if key not in expected)
    if missing or unknown:
        raise CalibrationTableError(
            f"{where}: missing keys {missing!r}, unknown keys {unknown!r}; expected exactly {list(expected)!r}"
        )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON; thresholds must be finite numbers")

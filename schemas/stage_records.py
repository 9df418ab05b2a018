"""The records each stage of a run leaves under ``stages/`` in the output folder, typed.

Stages run in different processes (CLI, Airflow tasks, another day), so what one stage tells the
next (timings, counts, accuracies, the gate's exclusions) travels through these files. A record is a
frozen dataclass of plain values, tuples and nested records; ``to_json``/``from_json`` round-trip
it, and a file whose fields do not match is refused naming the file, so a key renamed in one stage
cannot silently read as missing in another.
"""

from __future__ import annotations

import json
import math
import types
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

RecordT = TypeVar("RecordT", bound="StageRecord")


class StageRecordError(ValueError):
    """A stage record file does not hold the record its stage writes (another version, or edited)."""


class StageRecord:
    """A stage's record; ``STAGE`` names its file, ``stages/<STAGE>.json``."""

    STAGE: ClassVar[str]

    def to_json(self) -> str:
        assert is_dataclass(self)
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[RecordT], text: str, source: str) -> RecordT:
        try:
            record: RecordT = _decode(cls, json.loads(text))
        except (TypeError, KeyError, ValueError) as error:
            raise StageRecordError(
                f"{source}: not a {cls.STAGE} stage record ({error}); rerun the run's stages (int8flow run)"
            ) from None
        return record


@dataclass(frozen=True)
class Accuracy:
    """Top-k accuracies in percent over ``examples`` labelled examples (``skipped`` failed to decode).

    ``int8_*`` is int8flow's exact-integer executor; ``deploy_*`` the exported ``model.int8.onnx``
    in ``deploy_runtime`` on the same examples (None when that is "none"), and
    ``deploy_agreement_top1`` how often the two pick the same class. The two can differ: onnxruntime's
    x86 int8 kernels are not exact on every CPU (u8*s8 pair sums saturate without VNNI).
    ``gemm_fallbacks``: int8 GEMMs that cuBLAS refused while these figures were computed, done by an
    exact float64 matmul instead: the figures hold, the speed does not (always 0 on a CPU)."""

    examples: int
    skipped: int
    fp32_top1: float
    fp32_top5: float
    int8_top1: float
    int8_top5: float
    agreement_top1: float
    gemm_fallbacks: int
    deploy_runtime: str
    deploy_int8_top1: float | None
    deploy_int8_top5: float | None
    deploy_agreement_top1: float | None

    @property
    def top1_drop(self) -> float:
        return self.fp32_top1 - self.int8_top1

    @property
    def top5_drop(self) -> float:
        return self.fp32_top5 - self.int8_top5

    @property
    def deploy_top1_drop(self) -> float | None:
        return None if self.deploy_int8_top1 is None else self.fp32_top1 - self.deploy_int8_top1

    @property
    def gate_top1_drop(self) -> float:
        """What the gate compares with its limit: the worse of int8flow's and the deployment's drops."""
        return max(self.top1_drop, self.deploy_top1_drop if self.deploy_top1_drop is not None else -math.inf)

    @property
    def gate_decided_by(self) -> str:
        """Whose drop ``gate_top1_drop`` is: "int8flow", or the deployment runtime when its drop is larger."""
        deploy = self.deploy_top1_drop
        return self.deploy_runtime if deploy is not None and deploy > self.top1_drop else "int8flow"

    def summary(self) -> dict[str, float | int]:
        """The report's accuracy section; ``int8flow run`` logs the same figures as MLflow metrics."""
        figures: dict[str, float | int] = {
            "examples": self.examples,
            "fp32_top1": self.fp32_top1,
            "int8_top1": self.int8_top1,
            "top1_drop": self.top1_drop,
            "fp32_top5": self.fp32_top5,
            "int8_top5": self.int8_top5,
            "top5_drop": self.top5_drop,
            "agreement_top1": self.agreement_top1,
        }
        top1, top5, agreement = self.deploy_int8_top1, self.deploy_int8_top5, self.deploy_agreement_top1
        if top1 is not None and top5 is not None and agreement is not None:
            figures["deploy_int8_top1"] = top1
            figures["deploy_int8_top5"] = top5
            figures["deploy_top1_drop"] = self.fp32_top1 - top1
            figures["deploy_agreement_top1"] = agreement
        return figures


@dataclass(frozen=True)
class NodeSensitivity:
    """``error``: normalised squared error of the model outputs, sum((y_int8 - y)^2) / sum(y^2),
    when this node alone runs in INT8; continuous, so nodes that never flip a prediction on a small
    slice are still ordered."""

    node: str
    op_type: str
    error: float


@dataclass(frozen=True)
class GateAttempt:
    """One validation of the INT8 model with ``excluded`` kept in FP32."""

    excluded: tuple[str, ...]
    accuracy: Accuracy
    passed: bool


@dataclass(frozen=True)
class ClusterRecord(StageRecord):
    """The Dask cluster the run used, as the report and the progress line show it."""

    STAGE: ClassVar[str] = "cluster"
    scheduler: str
    dashboard: str | None
    workers: int
    kind: str


@dataclass(frozen=True)
class ObserveRecord(StageRecord):
    STAGE: ClassVar[str] = "observe"
    seconds: float
    examples: int
    examples_per_second: float
    shards: int
    skipped_images: int
    skipped_sources: tuple[str, ...]
    """The first sources that failed to decode (at most ``MAX_SKIPPED_SOURCES``)."""

    MAX_SKIPPED_SOURCES: ClassVar[int] = 20


@dataclass(frozen=True)
class ThresholdsRecord(StageRecord):
    """``errors``: each tensor's relative quantization error at its threshold, from its histogram
    (``relative_quantization_error``), in table order: what the report ranks every method by."""

    STAGE: ClassVar[str] = "thresholds"
    reduce_seconds: float
    thresholds_seconds: float
    tensors: int
    plots: tuple[str, ...]
    errors: tuple[TensorError, ...]


@dataclass(frozen=True)
class TensorError:
    name: str
    error: float


@dataclass(frozen=True)
class CorrectRecord(StageRecord):
    """The bias-correction pass: how long, over how many examples, and its largest shift (in the
    units of the layer's output) to say at a glance how much quantization moved the means."""

    STAGE: ClassVar[str] = "correct"
    seconds: float
    examples: int
    layers: int
    largest_shift: float
    largest_shift_layer: str


@dataclass(frozen=True)
class BuildRecord(StageRecord):
    STAGE: ClassVar[str] = "build"
    seconds: float
    path: str
    excluded: tuple[str, ...]


@dataclass(frozen=True)
class ValidateRecord(StageRecord):
    STAGE: ClassVar[str] = "validate"
    seconds: float
    examples_per_second: float
    accuracy: Accuracy


@dataclass(frozen=True)
class GateRecord(StageRecord):
    """The gate's verdict; ``final_*`` is the attempt the run keeps (None: no validation, no gate)."""

    STAGE: ClassVar[str] = "gate"
    seconds: float
    max_top1_drop: float | None
    passed: bool
    attempts: tuple[GateAttempt, ...]
    final_excluded: tuple[str, ...]
    final_accuracy: Accuracy | None
    sensitivity: tuple[NodeSensitivity, ...]
    plots: tuple[str, ...]


def _decode(kind: Any, value: Any) -> Any:
    """``value`` (parsed JSON) as an instance of the annotated type ``kind``."""
    if isinstance(kind, type) and is_dataclass(kind):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {kind.__name__}, got {type(value).__name__}")
        hints = get_type_hints(kind)
        names = [field.name for field in fields(kind)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise KeyError(f"unknown field(s) {', '.join(unknown)} in {kind.__name__}")
        return kind(**{name: _decode(hints[name], value[name]) for name in names})
    origin = get_origin(kind)
    if origin is tuple:
        item = get_args(kind)[0]
        return tuple(_decode(item, entry) for entry in value)
    if origin in (Union, types.UnionType):
        options = [option for option in get_args(kind) if option is not type(None)]
        return None if value is None else _decode(options[0], value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(kind, type) and not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value

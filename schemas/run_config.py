"""The run configuration: every setting of a calibration run, declared once.

The same declarations make the ``int8flow run`` options, the Airflow Params of the trigger form and
the MLflow params of the run, so a setting cannot exist in one place and be missing (or defaulted
differently) in another. Validation here follows the JSON-schema rules the Airflow form enforces
(type, enum, bounds), so a bad value is refused with the same words wherever it comes from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from int8flow.schemas.alias_policy import LATEST
from int8flow.schemas.alias_policy import METRICS as ALIAS_METRICS
from int8flow.schemas.alias_policy import PATTERN as ALIAS_PATTERN
from int8flow.schemas.histogram_bins import DEFAULT_NUM_BINS, NUM_BINS_CHOICES
from int8flow.schemas.threshold_settings import METHOD_CHOICES, ThresholdSettings
from int8flow.schemas.uri_redaction import has_secrets, redact_uri

_THRESHOLD_DEFAULTS = ThresholdSettings()


class RunConfigError(ValueError):
    """A setting has the wrong type or is out of its allowed range."""


@dataclass(frozen=True)
class Setting:
    """One run setting: its type, default, bounds and the words the CLI and the form show for it.

    ``kind`` is one of ``str``, ``int``, ``float``, ``bool``, ``list`` (a list of strings).
    ``nullable`` settings accept None (the form shows an empty field); ``section`` groups the
    trigger form. ``positional`` settings are CLI arguments rather than ``--options``. ``uri``
    settings may carry credentials (``redacted`` wherever they are shown or stored, see
    ``uri_redaction``) or must not (``no-credentials``: the output folder and the scheduler address
    travel through XCom and every log, so their credentials belong in the filesystem's own settings).
    ``pattern``: a regular expression a ``str`` value must match whole (also the form's JSON-schema
    ``pattern``). ``operational`` settings choose where a run executes and where its results go, not what it
    computes (split invariance makes workers, shards and batch size such settings): MLflow keeps them
    as tags, so comparing runs' params shows only what can change a result.
    """

    name: str
    kind: type
    default: Any
    help: str
    section: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    nullable: bool = False
    positional: bool = False
    metavar: str | None = None
    uri: Literal["redacted", "no-credentials"] | None = None
    operational: bool = False
    pattern: str | None = None

    @property
    def flag(self) -> str:
        return self.name if self.positional else "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` converted to this setting's type, or a RunConfigError naming the setting."""
        if value is None:
            if self.nullable:
                return None
            raise RunConfigError(f"{self.flag}: a value is required ({self.help})")
        value = self._typed(value)
        if self.choices is not None and value not in self.choices:
            raise RunConfigError(f"{self.flag}={value!r}: choose one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            relation = "greater than" if self.exclusive_minimum else "at least"
            raise RunConfigError(f"{self.flag}={value!r}: must be {relation} {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise RunConfigError(f"{self.flag}={value!r}: must be at most {self.maximum:g}")
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            raise RunConfigError(f"{self.flag}={value!r}: expected {self.metavar}: {self.help}")
        if self.uri == "no-credentials" and has_secrets(value):
            raise RunConfigError(
                f"{self.flag}={redact_uri(value)}: carries credentials (user-info or a signed query), which int8flow "
                "would show in logs, task results and MLflow; give them in the filesystem's own settings (fsspec "
                "configuration, environment variables) instead"
            )
        return value

    def _typed(self, value: Any) -> Any:
        if self.kind is list:
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise RunConfigError(f"{self.flag}={value!r}: expected a list of names")
            return tuple(value)
        if self.kind is bool and not isinstance(value, bool):
            raise RunConfigError(f"{self.flag}={value!r}: expected true or false")
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise RunConfigError(f"{self.flag}={value!r}: expected an integer")
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RunConfigError(f"{self.flag}={value!r}: expected a number")
            number = float(value)
            bounded = self.minimum is not None or self.maximum is not None
            if math.isnan(number) or (bounded and math.isinf(number)):
                raise RunConfigError(f"{self.flag}={value!r}: expected a finite number")
            return number
        if self.kind is str and not isinstance(value, str):
            raise RunConfigError(f"{self.flag}={value!r}: expected text")
        return value


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "model",
        str,
        None,
        "FP32 ONNX model: a path, an fsspec URL, or models:/NAME@ALIAS | models:/NAME/VERSION",
        "model",
        positional=True,
        metavar="MODEL",
        uri="redacted",
    ),
    Setting(
        "calib_data",
        str,
        None,
        "calibration data: a Parquet file or folder, an ImageFolder tree, or an MNIST idx folder with #train / #t10k",
        "data",
        metavar="URI",
        uri="redacted",
    ),
    Setting(
        "val_data",
        str,
        None,
        "labelled validation data (same forms); none skips validation and the gate",
        "data",
        nullable=True,
        metavar="URI",
        uri="redacted",
    ),
    Setting(
        "preprocess",
        str,
        "imagenet-tf",
        "preset (imagenet-tf, imagenet-torch, mnist) or spec "
        "'resize=256,crop=224,scale=1,mean=127,std=128,channels=rgb'",
        "data",
        metavar="PRESET_OR_SPEC",
    ),
    Setting(
        "on_bad_image",
        str,
        "fail",
        "an image that fails to decode: fail the run, or skip it and count it",
        "data",
        choices=("fail", "skip"),
    ),
    Setting(
        "calib_examples",
        int,
        1024,
        "calibration examples, a seeded sample of the data (all if fewer)",
        "calibration",
        minimum=1,
        metavar="N",
    ),
    Setting("val_examples", int, 0, "validation examples, the first N (0: all)", "data", minimum=0, metavar="N"),
    Setting("seed", int, 0, "seed of the calibration sample", "calibration", minimum=0),
    Setting(
        "batch_size",
        int,
        32,
        "examples per forward pass (results do not depend on it; peak memory does)",
        "calibration",
        minimum=1,
        metavar="B",
        operational=True,
    ),
    Setting(
        "method",
        str,
        _THRESHOLD_DEFAULTS.method,
        "threshold method (auto: per tensor, whichever of percentile, entropy and mse gives the least error in "
        "the layers reading the tensor, measured on a calibration slice)",
        "calibration",
        choices=METHOD_CHOICES,
    ),
    Setting(
        "auto_examples",
        int,
        64,
        "auto method only: calibration examples the per-tensor choice is measured on",
        "calibration",
        minimum=1,
        metavar="N",
    ),
    Setting(
        "num_bins",
        int,
        DEFAULT_NUM_BINS,
        "histogram bins, a power of two",
        "calibration",
        choices=NUM_BINS_CHOICES,
        metavar="N",
    ),
    Setting(
        "num_quantized_bins",
        int,
        _THRESHOLD_DEFAULTS.num_quantized_bins,
        "entropy and auto only: quantization groups of a signed tensor",
        "calibration",
        minimum=2,
        maximum=65535,
        metavar="N",
    ),
    Setting(
        "percentile",
        float,
        _THRESHOLD_DEFAULTS.percentile,
        "percentile and auto only: percentile of |x|",
        "calibration",
        minimum=0.0,
        maximum=100.0,
        exclusive_minimum=True,
        metavar="P",
    ),
    Setting(
        "spike_fix",
        bool,
        _THRESHOLD_DEFAULTS.spike_fix,
        "entropy and auto only: flatten spikes of repeated values (exact zeros, constants) before the search",
        "calibration",
    ),
    Setting(
        "unsigned_activations",
        bool,
        _THRESHOLD_DEFAULTS.unsigned_activations,
        "store non-negative activations (ReLU/ReLU6 outputs) as uint8: twice the levels, and onnxruntime runs their "
        "Conv and Add as integer ops (off: symmetric int8 everywhere, the published algorithms' contract)",
        "quantization",
    ),
    Setting(
        "bias_correction",
        bool,
        True,
        "shift each layer's bias so that the mean of its INT8 output per channel matches FP32's over the "
        "calibration data (a second pass over it; off: the published algorithms' tables and biases unchanged)",
        "quantization",
    ),
    Setting(
        "correction_examples",
        int,
        256,
        "bias correction only: calibration examples its pass runs over, a seeded sample of the calibration data "
        "(all the calibration examples when they are fewer)",
        "quantization",
        minimum=1,
        metavar="N",
    ),
    Setting(
        "exclude",
        list,
        (),
        "node names, op types, :first-conv or :last-layer to keep in FP32",
        "quantization",
        metavar="NAME_OR_OPTYPE",
    ),
    Setting(
        "per_tensor_weights", bool, False, "one weight scale per tensor instead of per output channel", "quantization"
    ),
    Setting(
        "signed_storage",
        str,
        "uint8",
        "how model.int8.onnx stores signed activations: uint8 at zero point 128, which onnxruntime's x86 integer "
        "kernels run with int8flow's arithmetic bit for bit when non-negative tensors are unsigned too; or int8 at "
        "zero point 0, the symmetric QDQ that TensorRT reads",
        "quantization",
        choices=("uint8", "int8"),
    ),
    Setting(
        "max_top1_drop",
        float,
        None,
        "accuracy gate: largest allowed INT8 top-1 drop, in points (none: no gate)",
        "gate",
        nullable=True,
        metavar="POINTS",
    ),
    Setting(
        "fallback_budget",
        int,
        8,
        "gate fallback: most nodes moved to FP32 before giving up",
        "gate",
        minimum=0,
        metavar="N",
    ),
    Setting(
        "deploy_runtime",
        str,
        "onnxruntime",
        "runtime that also runs the exported model.int8.onnx on the validation data, as users deploy it; "
        "the gate takes the worse of its and int8flow's top-1 drops (none: int8flow's executor alone)",
        "gate",
        choices=("onnxruntime", "none"),
    ),
    Setting(
        "rank_sensitivity",
        bool,
        False,
        "rank every node's sensitivity even when the gate passes, for the report's chart (a failing gate always ranks)",
        "gate",
    ),
    Setting(
        "sensitivity_examples",
        int,
        256,
        "gate fallback: validation examples used to rank node sensitivity",
        "gate",
        minimum=1,
        metavar="N",
    ),
    Setting(
        "scheduler",
        str,
        "",
        "address of an existing Dask scheduler (empty: start an embedded cluster)",
        "cluster",
        metavar="ADDRESS",
        uri="no-credentials",
        operational=True,
    ),
    Setting(
        "workers",
        int,
        0,
        "embedded cluster: worker processes (0: one per core, or one per GPU)",
        "cluster",
        minimum=0,
        metavar="N",
        operational=True,
    ),
    Setting(
        "shards",
        int,
        0,
        "shards per data set (0: four per worker; results do not depend on it)",
        "cluster",
        minimum=0,
        metavar="N",
        operational=True,
    ),
    Setting("device", str, "auto", "where the kernels run", "cluster", choices=("auto", "cpu", "gpu")),
    Setting(
        "engine",
        str,
        "onnxruntime",
        "CPU workers: what runs the FP32 model in observe and validate (onnxruntime, or int8flow, the NumPy "
        "reference executor); GPU workers run int8flow's CuPy executor",
        "cluster",
        choices=("onnxruntime", "int8flow"),
    ),
    Setting(
        "out",
        str,
        "int8flow-out",
        "output directory (path or fsspec URL, shared with the workers)",
        "output",
        metavar="DIR",
        uri="no-credentials",
        operational=True,
    ),
    Setting(
        "overwrite", bool, False, "replace the results of another run in the output folder", "output", operational=True
    ),
    Setting(
        "tracking_uri",
        str,
        "",
        "MLflow tracking URI (empty: sqlite:///mlflow.db in the run's working directory)",
        "tracking",
        metavar="URI",
        uri="redacted",
        operational=True,
    ),
    Setting(
        "experiment",
        str,
        "",
        "MLflow experiment (empty: int8flow/<model name>)",
        "tracking",
        metavar="NAME",
        operational=True,
    ),
    Setting(
        "register",
        str,
        "",
        "register the INT8 model under this name when the gate passes (empty: do not)",
        "tracking",
        metavar="NAME",
        operational=True,
    ),
    Setting(
        "alias",
        str,
        "int8-candidate",
        "registry alias given to the new INT8 version",
        "tracking",
        metavar="ALIAS",
        operational=True,
    ),
    Setting(
        "alias_policy",
        str,
        LATEST,
        "which version the alias points at: latest (the newest version that passed the gate), or "
        f"best:<metric> (the one whose run measured best: {', '.join(ALIAS_METRICS)}; drops lowest, "
        "the others highest, a tie to the newer)",
        "tracking",
        metavar="latest|best:METRIC",
        operational=True,
        pattern=ALIAS_PATTERN,
    ),
)

SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run, checked; build it with ``RunConfig.from_mapping``."""

    model: str
    calib_data: str
    val_data: str | None
    preprocess: str
    on_bad_image: str
    calib_examples: int
    val_examples: int
    seed: int
    batch_size: int
    method: str
    auto_examples: int
    num_bins: int
    num_quantized_bins: int
    percentile: float
    spike_fix: bool
    unsigned_activations: bool
    bias_correction: bool
    correction_examples: int
    exclude: tuple[str, ...]
    per_tensor_weights: bool
    signed_storage: str
    max_top1_drop: float | None
    fallback_budget: int
    deploy_runtime: str
    rank_sensitivity: bool
    sensitivity_examples: int
    scheduler: str
    workers: int
    shards: int
    device: str
    engine: str
    out: str
    overwrite: bool
    tracking_uri: str
    experiment: str
    register: str
    alias: str
    alias_policy: str

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Defaults filled in, every value checked; unknown names are refused (likely a typo)."""
        unknown = sorted(set(values) - set(SETTINGS_BY_NAME))
        if unknown:
            raise RunConfigError(
                f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(SETTINGS_BY_NAME)}"
            )
        checked = {setting.name: setting.check(values.get(setting.name, setting.default)) for setting in SETTINGS}
        if checked["val_data"] == "":
            checked["val_data"] = None
        return cls(**checked)

    def threshold_settings(self) -> ThresholdSettings:
        return ThresholdSettings.of(self)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able values (lists for tuples), in declaration order."""
        return {
            field.name: list(value) if isinstance(value := getattr(self, field.name), tuple) else value
            for field in fields(self)
        }

    def redacted(self) -> RunConfig:
        """This configuration as it may be shown or stored: credentials in its URIs replaced."""
        redacted: dict[str, Any] = {name: redact_uri(value) for name, value in self._uris().items()}
        return replace(self, **redacted)

    def secrets(self) -> dict[str, str]:
        """Each URI that carries credentials, keyed by its redacted form: what restores them from run.json."""
        return {redact_uri(value): value for value in self._uris().values() if has_secrets(value)}

    def mlflow_params(self) -> dict[str, str]:
        """The settings that can change results, as MLflow params: redacted, lists comma-joined, None
        as an empty string."""
        return self._texts(operational=False)

    def operational_texts(self) -> dict[str, str]:
        """The operational settings as the same text, for MLflow tags."""
        return self._texts(operational=True)

    def _texts(self, operational: bool) -> dict[str, str]:
        return {
            name: _param_text(value)
            for name, value in self.redacted().as_dict().items()
            if SETTINGS_BY_NAME[name].operational == operational
        }

    def _uris(self) -> dict[str, str]:
        return {
            setting.name: value
            for setting in SETTINGS
            if setting.uri == "redacted" and (value := getattr(self, setting.name)) is not None
        }


def _param_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value)
    return str(value)

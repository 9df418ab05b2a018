"""The build and validate stages: the INT8 model file, and its accuracy against FP32 on labelled data.

Validation fans out like calibration; each worker rebuilds the INT8 graph from the FP32 model, the
calibration table file and the pass options (all fingerprinted), so no graph travels over the
network and every worker runs exactly the model that ``model.int8.onnx`` holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import fsspec
from distributed import Client

from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.tasks.outputs.atomic_files import atomic_write_bytes
from int8flow.tasks.distributed.fanout import ProgressSink, quiet, run_shards
from int8flow.tasks.graph.export_qdq import export_qdq
from int8flow.tasks.graph.quantize_pass import quantize_graph
from int8flow.tasks.run.plan import RunPlan
from int8flow.tasks.distributed.shard_jobs import Int8Ref, ValidatedShard, fp32_graph, validate_shard
from int8flow.tasks.calibration.table import CALIBRATION_JSON

INT8_MODEL = "model.int8.onnx"


@dataclass(frozen=True)
class Accuracy:
    """Top-k accuracies in percent over ``examples`` labelled examples (``skipped`` failed to decode)."""

    examples: int
    skipped: int
    fp32_top1: float
    fp32_top5: float
    int8_top1: float
    int8_top5: float
    agreement_top1: float

    @property
    def top1_drop(self) -> float:
        return self.fp32_top1 - self.int8_top1

    @property
    def top5_drop(self) -> float:
        return self.fp32_top5 - self.int8_top5

    def summary(self) -> dict[str, float | int]:
        """The report's accuracy section; ``int8flow run`` logs the same figures as MLflow metrics."""
        return {
            "examples": self.examples,
            "fp32_top1": self.fp32_top1,
            "int8_top1": self.int8_top1,
            "top1_drop": self.top1_drop,
            "fp32_top5": self.fp32_top5,
            "int8_top5": self.int8_top5,
            "top5_drop": self.top5_drop,
            "agreement_top1": self.agreement_top1,
        }

    @classmethod
    def of(cls, shards: list[ValidatedShard]) -> Accuracy:
        examples = sum(shard.examples for shard in shards)

        def percent(hits: int) -> float:
            return 100.0 * hits / examples if examples else 0.0

        return cls(
            examples,
            sum(shard.skipped for shard in shards),
            percent(sum(shard.fp32_top1 for shard in shards)),
            percent(sum(shard.fp32_top5 for shard in shards)),
            percent(sum(shard.int8_top1 for shard in shards)),
            percent(sum(shard.int8_top5 for shard in shards)),
            percent(sum(shard.agreement_top1 for shard in shards)),
        )


def build_stage(plan: RunPlan, table: CalibrationTable, extra_exclude: tuple[str, ...] = ()) -> str:
    """``model.int8.onnx`` (QDQ) for the table and exclusions; returns its path."""
    quantized = quantize_graph(fp32_graph(plan.model), table, plan.quantization_options(extra_exclude))
    path = plan.path(INT8_MODEL)
    atomic_write_bytes(path, export_qdq(quantized).SerializeToString())
    return path


def validate_stage(
    plan: RunPlan, client: Client, extra_exclude: tuple[str, ...] = (), progress: ProgressSink = quiet
) -> Accuracy:
    """FP32 and INT8 accuracy over the validation shards, with ``extra_exclude`` kept in FP32."""
    if plan.validation is None:
        raise ValueError("this run has no validation data; pass --val-data to validate and gate it")
    table_path = plan.path(CALIBRATION_JSON)
    with fsspec.open(table_path, "rb") as file:
        table_sha256 = hashlib.sha256(file.read()).hexdigest()
    int8 = Int8Ref(table_path, table_sha256, plan.quantization_options(extra_exclude))
    jobs = [(plan.model, spec, int8) for spec in plan.shard_specs(plan.validation)]
    return Accuracy.of(run_shards(client, "validate", validate_shard, jobs, progress))


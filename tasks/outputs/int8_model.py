"""The INT8 model file of a run: the FP32 graph quantized with the run's table, exported as QDQ ONNX."""

from __future__ import annotations

from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.schemas.run_folder import INT8_MODEL
from int8flow.tasks.distributed.shard_jobs import fp32_graph
from int8flow.tasks.graph.export_qdq import export_qdq
from int8flow.tasks.graph.quantize_pass import quantize_graph
from int8flow.tasks.outputs.atomic_files import atomic_write_bytes
from int8flow.tasks.run.plan import RunPlan


def write_int8_model(plan: RunPlan, table: CalibrationTable, extra_exclude: tuple[str, ...] = ()) -> str:
    """``model.int8.onnx`` (QDQ) for the table and exclusions, written atomically; returns its path."""
    quantized = quantize_graph(fp32_graph(plan.model), table, plan.quantization_options(extra_exclude))
    path = plan.path(INT8_MODEL)
    atomic_write_bytes(path, export_qdq(quantized, plan.config.signed_storage).SerializeToString())
    return path

"""The INT8 model as an MLflow ONNX model of its run: a signature, the ONNX flavour, a lineage link.

A bare ``model.int8.onnx`` artifact tells a registry user nothing about what the model takes and
returns, and MLflow's "Logged models" list stays empty. Logged as an MLflow model (``MLmodel`` with
the ``onnx`` flavour and the signature read off the graph), the registry version shows its inputs
and outputs, ``mlflow.onnx.load_model``/``pyfunc`` load it, and the run lists it among its outputs
beside the FP32 model it came from (a run input, when that model is an MLflow model too).

Written with an explicit client, never MLflow's fluent API: that reads the process-wide tracking URI
(see ``mlflow_store``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import mlflow.onnx
import numpy as np
import onnx
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelInput, LoggedModelOutput, LoggedModelStatus
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec
from onnx.helper import tensor_dtype_to_np_dtype

EXECUTION_PROVIDERS = ["CPUExecutionProvider"]
"""What ``mlflow.onnx.load_model``/``pyfunc`` run it with: present in every onnxruntime build."""
MODEL_TYPE = "onnx-int8"


@dataclass(frozen=True)
class ModelToLog:
    """An ONNX file among a run's outputs, to log as an MLflow model of that run."""

    file: str
    """Relative to the run's output folder."""
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    source_model_ids: tuple[str, ...] = ()
    """MLflow models this one was made from: logged as the run's inputs, the lineage MLflow shows."""


def onnx_signature(model: onnx.ModelProto) -> ModelSignature:
    """Inputs and outputs as MLflow tensor specs: names, dtypes, shapes (-1 for a symbolic dimension).

    Graph inputs that are initializers (weights an old exporter listed as inputs) are not inputs a
    caller feeds.
    """
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    return ModelSignature(
        inputs=Schema([_tensor_spec(value) for value in inputs]),
        outputs=Schema([_tensor_spec(value) for value in model.graph.output]),
    )


def log_onnx_model(client: MlflowClient, experiment_id: str, run_id: str, onnx_bytes: bytes, spec: ModelToLog) -> str:
    """Log ``onnx_bytes`` as logged model ``spec.name`` of run ``run_id``; returns its model id.

    The model is created first (its id goes into ``MLmodel``), marked an output of the run, filled,
    then finalized READY; a failure on the way leaves it PENDING, which MLflow does not list as a
    usable model, and the caller fails the run.
    """
    model = onnx.load_model_from_string(onnx_bytes)
    logged = client.create_logged_model(
        experiment_id,
        name=spec.name,
        source_run_id=run_id,
        tags=dict(spec.tags),
        params=dict(spec.params),
        model_type=MODEL_TYPE,
    )
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    if spec.source_model_ids:
        client.log_inputs(run_id, models=[LoggedModelInput(model_id) for model_id in spec.source_model_ids])
    with tempfile.TemporaryDirectory(prefix="int8flow-model-") as staging:
        folder = os.path.join(staging, "model")
        mlflow.onnx.save_model(
            model,
            folder,
            mlflow_model=Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            ),
            signature=onnx_signature(model),
            onnx_execution_providers=EXECUTION_PROVIDERS,
            # What running it needs (onnx, onnxruntime, pinned): left out, MLflow infers the list by
            # loading the model in a subprocess, seconds per run for the same answer.
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            save_as_external_data=False,  # one model.onnx: the bytes int8flow wrote and validated
        )
        client.log_model_artifacts(logged.model_id, folder)
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id


def run_logged_model(client: MlflowClient, run_id: str, name: str) -> LoggedModel | None:
    """The READY logged model ``name`` among run ``run_id``'s outputs (the newest if several)."""
    outputs = client.get_run(run_id).outputs
    candidates = [] if outputs is None else [output.model_id for output in outputs.model_outputs]
    ready = [
        model
        for model in (client.get_logged_model(model_id) for model_id in candidates)
        if model.name == name and model.status == LoggedModelStatus.READY
    ]
    return max(ready, key=lambda model: model.creation_timestamp) if ready else None


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    shape = tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim)
    return TensorSpec(np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type)), shape, value.name)

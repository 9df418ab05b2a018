"""onnxruntime as the CPU engine: the simplified FP32 graph, and the exported INT8 model as users deploy it.

int8flow's NumPy executor is the exact reference, but its float32 convolutions run at a fifth of
onnxruntime's speed, and observe and validate are nothing but forward passes. On CPU workers the
FP32 graph therefore runs in onnxruntime, with the calibration tensors exposed as extra outputs:
one batch of activations is in memory at a time, as with the NumPy executor's observer.

The split-invariance contract needs each example's outputs to be a function of that example alone.
Measured (onnxruntime 1.32.0, Intel Xeon with AVX-512 VNNI; ``tests/test_onnxruntime_engine.py``
keeps checking it): every activation of the Fashion-MNIST ResNet and EfficientNet-Lite0 is the same
bits for an example run alone, at any position of a batch of 3, 7, 32 or 64, with 1 or 2
intra-op threads. So batches are run as they come, with no padding to a fixed shape, and the thread
count is a share of the cores, not a constant.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import helper

from int8flow.tasks.graph.executor import GraphExecutor, Observer, check_input
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.onnx_build import graph_to_model

PROVIDERS = ["CPUExecutionProvider"]


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """One intra-op pool of ``threads``, no inter-op pool: a task uses its share of the cores and no more."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    return options


class OnnxRuntimeExecutor:
    """Runs an FP32 graph in onnxruntime with ``GraphExecutor.run``'s interface (observer included)."""

    def __init__(self, graph: Graph, threads: int) -> None:
        self.graph = graph
        self.threads = threads
        self.model = graph_to_model(graph, name="int8flow-fp32")
        self._sessions: dict[tuple[str, ...], onnxruntime.InferenceSession] = {}

    def run(
        self, inputs: Mapping[str, Any], observer: Observer | None = None, observed: Collection[str] = ()
    ) -> dict[str, np.ndarray]:
        feeds = {info.name: check_input(info, inputs, self.graph.source) for info in self.graph.inputs}
        outputs = [info.name for info in self.graph.outputs]
        extra = tuple(sorted(name for name in observed if name not in feeds and name not in outputs))
        values = dict(zip(outputs + list(extra), self._session(extra).run(outputs + list(extra), feeds)))
        if observer is not None:
            for name in observed:
                observer(name, feeds[name] if name in feeds else values[name])
        return {name: values[name] for name in outputs}

    def _session(self, extra: tuple[str, ...]) -> onnxruntime.InferenceSession:
        """A session whose outputs include ``extra``: one per set of observed tensors, built once."""
        if extra not in self._sessions:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            model.graph.output.extend(
                helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(self._dtype(name)), None)
                for name in extra
            )
            self._sessions[extra] = onnxruntime.InferenceSession(
                model.SerializeToString(), session_options(self.threads), providers=PROVIDERS
            )
        return self._sessions[extra]

    def _dtype(self, name: str) -> np.dtype:
        return self.graph.dtypes.get(name, np.dtype(np.float32))


FP32Executor = GraphExecutor | OnnxRuntimeExecutor
"""What runs the FP32 graph on a worker: int8flow's reference executor, or onnxruntime on CPU workers."""


def deployment_session(model: onnx.ModelProto, threads: int) -> onnxruntime.InferenceSession:
    """The exported INT8 model in onnxruntime with its default optimizations: QDQ groups become its
    int8 kernels, as in a user's deployment, which is what the deployment check must measure."""
    return onnxruntime.InferenceSession(model.SerializeToString(), session_options(threads), providers=PROVIDERS)

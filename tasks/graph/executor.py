"""Running an IR graph batch by batch, freeing every tensor after its last reader.

The same loop runs the FP32 graph and the INT8 graph: only the op table differs. An observer sees
each watched tensor once, as it is produced, so calibration keeps one batch of activations plus the
histograms, whatever the number of examples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from int8flow.tasks.graph.blas_threads import fixed_blas_threads
from int8flow.tasks.graph.fp32_ops import FP32_OPS, HOST_INPUTS, OpFunction, check_supported
from int8flow.tasks.graph.ir import Graph, TensorInfo

Observer = Callable[[str, Any], None]
HOST_ARRAYS = (np.ndarray, np.generic)


class InputMismatchError(ValueError):
    """A batch does not fit the model's declared inputs."""


class GraphExecutor:
    """Runs a graph whose every op is in ``ops``; constants are moved to the backend once, except
    those only read on the host (``HOST_INPUTS``: shapes, pads, axes), which stay NumPy arrays."""

    def __init__(self, graph: Graph, xp: ModuleType = np, ops: Mapping[str, OpFunction] = FP32_OPS) -> None:
        if ops is FP32_OPS:
            check_supported(graph)
        self.graph = graph
        self.xp = xp
        self.ops = ops
        on_host = host_read_constants(graph)
        self.constants = {
            name: value if name in on_host else xp.asarray(value) for name, value in graph.initializers.items()
        }
        self.use_counts = graph.use_counts()

    def run(
        self,
        inputs: Mapping[str, Any],
        observer: Observer | None = None,
        observed: Collection[str] = (),
    ) -> dict[str, Any]:
        """Outputs of the graph for one batch; ``observer(name, array)`` sees the ``observed`` tensors.

        One BLAS thread (``blas_threads``): the outputs are the same bits whatever the caller's setting.
        """
        with fixed_blas_threads():
            return self._run(inputs, observer, observed)

    def _run(self, inputs: Mapping[str, Any], observer: Observer | None, observed: Collection[str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for info in self.graph.inputs:
            values[info.name] = self.xp.asarray(check_input(info, inputs, self.graph.source))
            if observer is not None and info.name in observed:
                observer(info.name, values[info.name])
        remaining = Counter(self.use_counts)
        opset = self.graph.opset
        for node in self.graph.nodes:
            arguments = [values[name] if name in values else self.constants.get(name) for name in node.inputs]
            if self.xp is not np:
                arguments = device_arguments(self.xp, node.op_type, arguments)
            results = self.ops[node.op_type](node, arguments, opset)
            for name, value in zip(node.outputs, results):
                values[name] = value
                if observer is not None and name in observed:
                    observer(name, value)
            for name in node.inputs:
                remaining[name] -= 1
                if remaining[name] <= 0:
                    values.pop(name, None)
        return {info.name: values[info.name] for info in self.graph.outputs}


def device_arguments(xp: ModuleType, op_type: str, arguments: list[Any]) -> list[Any]:
    """Shape arithmetic (Shape, Gather on shapes, Range...) runs on the host in int64, so its results
    are NumPy arrays; a node that reads them beside a device array gets them moved to the device,
    except at the positions it reads on the host (``HOST_INPUTS``)."""
    on_device = any(value is not None and not isinstance(value, HOST_ARRAYS) for value in arguments)
    if not on_device:
        return arguments
    host = HOST_INPUTS.get(op_type, frozenset())
    return [
        xp.asarray(value) if isinstance(value, HOST_ARRAYS) and position not in host else value
        for position, value in enumerate(arguments)
    ]


def host_read_constants(graph: Graph) -> set[str]:
    """Initializers that every reader takes at a host input position (``HOST_INPUTS``), and every
    int64 one: shape arithmetic (Gather, Concat, Mul of dimensions) then stays on the host with the
    int64 results of Shape; an op that reads one beside a device array gets it moved there."""
    on_host: dict[str, bool] = {}
    for node in graph.nodes:
        slots = HOST_INPUTS.get(node.op_type, frozenset())
        for position, name in enumerate(node.inputs):
            on_host[name] = on_host.get(name, True) and position in slots
    host_read = {name for name, host in on_host.items() if host and name in graph.initializers}
    return host_read | {name for name, value in graph.initializers.items() if value.dtype == np.int64}


def check_input(info: TensorInfo, inputs: Mapping[str, Any], source: str) -> Any:
    if info.name not in inputs:
        raise InputMismatchError(
            f"{source}: the model's input {info.name!r} (shape {_shape_text(info.shape)}) was not given; "
            f"got {sorted(inputs)}"
        )
    array = inputs[info.name]
    fits = len(array.shape) == len(info.shape) and all(
        want is None or want == got for want, got in zip(info.shape, array.shape)
    )
    if not fits or array.dtype != info.dtype:
        raise InputMismatchError(
            f"{source}: input {info.name!r} expects shape {_shape_text(info.shape)} {np.dtype(info.dtype).name}, "
            f"got {tuple(array.shape)} {array.dtype}; check the preprocessing (size, channels, layout NCHW, dtype)"
        )
    return array


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if dim is None else str(dim) for dim in shape) + ")"

"""FP32 tensor and shape ops (filled in by the op-coverage work)."""

from __future__ import annotations

from int8flow.tasks.graph.op_types import NodeCheck, OpFunction

TENSOR_OPS: dict[str, OpFunction] = {}
TENSOR_HOST_INPUTS: dict[str, frozenset[int]] = {}
TENSOR_CHECKS: dict[str, NodeCheck] = {}

"""FP32 elementwise math, comparisons and normalizations (filled in by the op-coverage work)."""

from __future__ import annotations

from int8flow.tasks.graph.op_types import NodeCheck, OpFunction

ELEMENTWISE_OPS: dict[str, OpFunction] = {}
ELEMENTWISE_HOST_INPUTS: dict[str, frozenset[int]] = {}
ELEMENTWISE_CHECKS: dict[str, NodeCheck] = {}

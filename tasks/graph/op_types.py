"""What every op table shares: the op function signature and the refusal error.

The op tables live in several modules (core layers, elementwise math, tensor and shape ops); they
import this, and ``fp32_ops`` merges them, so no table imports another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from int8flow.tasks.graph.ir import Node

OpFunction = Callable[[Node, list[Any], int], list[Any]]
NodeCheck = Callable[[Node, int], str | None]
"""``check(node, opset)``: None when the executors run this node, else what they cannot run
(an attribute mode, a rank), phrased to follow the node's name in the error."""


class UnsupportedModelError(ValueError):
    """The graph holds an op, or an op setting, that int8flow cannot run."""

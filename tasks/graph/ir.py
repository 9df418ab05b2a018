"""A small, mutable intermediate representation of an inference graph.

ONNX protobufs are awkward to rewrite (repeated fields, attributes as protos); the passes and
executors work on plain dataclasses holding NumPy arrays, and exports turn them back into ONNX.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Node:
    """One operator application; ``inputs`` may hold '' for an omitted optional input."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, Any] = field(default_factory=dict)

    def attribute(self, key: str, default: Any = None) -> Any:
        return self.attributes.get(key, default)


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: its name, shape (None for a dynamic dimension) and NumPy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


@dataclass
class Graph:
    """Nodes in topological order, constant tensors, and the graph's interface."""

    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int
    source: str = "<memory>"
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    """Element types shape inference found; shape arithmetic (int64) must never get an int8 scale."""

    def is_float(self, name: str) -> bool:
        """False only for a tensor known to hold integers or booleans."""
        return name not in self.dtypes or self.dtypes[name].kind == "f"

    def producers(self) -> dict[str, Node]:
        return {output: node for node in self.nodes for output in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def use_counts(self) -> Counter[str]:
        """How many times each tensor is read (graph outputs count once): for freeing early."""
        counts: Counter[str] = Counter(name for node in self.nodes for name in node.inputs if name)
        counts.update(output.name for output in self.outputs)
        return counts

    def op_counts(self) -> Counter[str]:
        return Counter(node.op_type for node in self.nodes)

    def rename_uses(self, old: str, new: str) -> None:
        """Every reader of ``old`` (nodes and graph outputs) reads ``new`` instead."""
        for node in self.nodes:
            node.inputs = [new if name == old else name for name in node.inputs]
        self.outputs = [
            TensorInfo(new, output.shape, output.dtype) if output.name == old else output for output in self.outputs
        ]

    def remove_unused(self) -> None:
        """Drop nodes whose outputs nobody reads, and initializers nobody uses."""
        needed = {output.name for output in self.outputs}
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(output in needed for output in node.outputs):
                kept.append(node)
                needed.update(name for name in node.inputs if name)
        self.nodes = kept[::-1]
        self.initializers = {name: value for name, value in self.initializers.items() if name in needed}

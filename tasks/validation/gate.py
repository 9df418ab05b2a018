"""The accuracy gate and its fallback: keep the most sensitive nodes in FP32 until the drop is allowed.

One quantized node can cost most of a model's accuracy (MXNet's ResNet50 v2: 69.3 -> 76.9 top-1 by
keeping one conv in FP32), and which one is a property of the model, not of the algorithm. Nodes
are ranked once, by the output error each adds alone on a small validation slice; then they move to
FP32 in that order, one per attempt, each attempt validated on the whole validation set, until the
gate passes or the budget is spent. Every attempt is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from distributed import Client

from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.schemas.stage_records import Accuracy, GateAttempt, NodeSensitivity
from int8flow.tasks.data.preprocess import parse_preprocess
from int8flow.tasks.data.sources import load_batch, open_dataset
from int8flow.tasks.distributed.fanout import ProgressSink, quiet
from int8flow.tasks.distributed.shard_jobs import fp32_graph
from int8flow.tasks.run.plan import RunPlan
from int8flow.tasks.validation.accuracy import validate_int8
from int8flow.tasks.validation.sensitivity import rank_sensitivity


@dataclass(frozen=True)
class GateResult:
    """``max_top1_drop`` None means no gate: the single attempt passes."""

    max_top1_drop: float | None
    attempts: tuple[GateAttempt, ...]
    sensitivity: tuple[NodeSensitivity, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return self.attempts[-1].passed

    @property
    def final(self) -> GateAttempt:
        """The attempt the run keeps: the passing one, or the best drop when none passed."""
        if self.passed:
            return self.attempts[-1]
        return min(self.attempts, key=lambda attempt: (attempt.accuracy.top1_drop, len(attempt.excluded)))


def apply_gate(
    plan: RunPlan, client: Client, table: CalibrationTable, first: Accuracy, progress: ProgressSink = quiet
) -> GateResult:
    """Rank the nodes, check ``first`` against the gate; on failure, fall back node by node within the budget.

    The ranking is computed even when the gate passes (or none is set): the report's sensitivity
    chart shows users which layers cost accuracy, the first thing they ask about an INT8 model.
    """
    limit = plan.config.max_top1_drop
    ranking = tuple(rank_sensitivity(fp32_graph(plan.model), table, plan.quantization_options(), _slice(plan)))
    attempts = [GateAttempt((), first, limit is None or first.top1_drop <= limit)]
    if attempts[0].passed or limit is None:
        return GateResult(limit, tuple(attempts), ranking)
    excluded: tuple[str, ...] = ()
    for node in ranking[: plan.config.fallback_budget]:
        excluded += (node.node,)
        accuracy = validate_int8(plan, client, excluded, progress)
        attempts.append(GateAttempt(excluded, accuracy, accuracy.top1_drop <= limit))
        if attempts[-1].passed:
            break
    return GateResult(limit, tuple(attempts), ranking)


def _slice(plan: RunPlan) -> dict[str, np.ndarray]:
    """The first validation examples, preprocessed: enough to rank nodes, cheap enough for one process."""
    assert plan.validation is not None
    graph = fp32_graph(plan.model)
    count = min(plan.config.sensitivity_examples, plan.validation.sample)
    batch = load_batch(
        open_dataset(plan.validation.uri),
        np.arange(count),
        parse_preprocess(plan.config.preprocess),
        graph.inputs[0].shape,
        "skip",
    )
    return {graph.inputs[0].name: batch.inputs}

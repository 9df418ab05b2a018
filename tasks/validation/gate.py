"""The accuracy gate and its fallback: keep the most sensitive nodes in FP32 until the drop is allowed.

One quantized node can cost most of a model's accuracy (MXNet's ResNet50 v2: 69.3 -> 76.9 top-1 by
keeping one conv in FP32), and which one is a property of the model, not of the algorithm. Nodes
are ranked once, by the output error each adds alone on a small validation slice; then they move to
FP32 in that order, one per attempt, each attempt validated on the whole validation set, until the
gate passes or the budget is spent. Every attempt is reported.

The drop the gate compares is the worse of int8flow's executor and the deployment runtime's
(``Accuracy.gate_top1_drop``): a model that is exact in int8flow but loses accuracy in the runtime
users deploy it with must not pass.

Ranking costs one INT8 pass over the slice per candidate node, more than the whole validation of a
model with a hundred convs, so it runs only when the fallback needs it (the first attempt failed and
the budget allows a fallback) or when asked (``--rank-sensitivity``, for the report's chart), and
then on the workers, one task per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from distributed import Client

from int8flow.schemas.stage_records import Accuracy, GateAttempt, NodeSensitivity
from int8flow.tasks.distributed.fanout import ProgressSink, quiet, run_shards
from int8flow.tasks.distributed.shard_jobs import fp32_graph, rank_shard
from int8flow.tasks.run.plan import RunPlan
from int8flow.tasks.validation.accuracy import int8_ref, validate_int8
from int8flow.tasks.validation.sensitivity import quantizable_nodes


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
        return min(self.attempts, key=lambda attempt: (attempt.accuracy.gate_top1_drop, len(attempt.excluded)))


SENSITIVITY_STAGE = "gate: sensitivity"
"""The progress stage of the ranking, one job per candidate node (``fanout.job_unit``)."""


def attempt_stage(attempt: int, attempts: int) -> str:
    """The progress stage of fallback attempt ``attempt`` (the first is the validate stage's result)."""
    return f"gate: attempt {attempt}/{attempts} validate"


def apply_gate(plan: RunPlan, client: Client, first: Accuracy, progress: ProgressSink = quiet) -> GateResult:
    """Check ``first`` against the gate; on failure, fall back node by node within the budget.

    Progress: the ranking as ``SENSITIVITY_STAGE``, nodes ranked of all candidates, then each
    fallback attempt's validation as ``attempt_stage``, shards of the validation set; the attempts'
    total is the most the budget allows, an attempt that passes ends them early."""
    limit = plan.config.max_top1_drop
    attempts = [GateAttempt((), first, limit is None or first.gate_top1_drop <= limit)]
    fallback = limit is not None and not attempts[0].passed and plan.config.fallback_budget > 0
    ranking = rank_nodes(plan, client, progress) if fallback or plan.config.rank_sensitivity else ()
    if not fallback:
        return GateResult(limit, tuple(attempts), ranking)
    assert limit is not None
    fallbacks = ranking[: plan.config.fallback_budget]
    excluded: tuple[str, ...] = ()
    for node in fallbacks:
        excluded += (node.node,)
        stage = attempt_stage(len(attempts) + 1, len(fallbacks) + 1)
        accuracy = validate_int8(plan, client, excluded, progress, stage)
        attempts.append(GateAttempt(excluded, accuracy, accuracy.gate_top1_drop <= limit))
        if attempts[-1].passed:
            break
    return GateResult(limit, tuple(attempts), ranking)


def rank_nodes(plan: RunPlan, client: Client, progress: ProgressSink = quiet) -> tuple[NodeSensitivity, ...]:
    """Every fallback candidate, most sensitive first (ties in graph order), ranked on the workers.

    The slice is the first ``--sensitivity-examples`` validation examples (undecodable ones skipped);
    each candidate is one Dask task, so progress counts nodes, and each worker runs the slice in
    FP32 once for all its tasks (``shard_jobs.rank_shard``). A candidate's error is the same number
    whichever worker measures it, so the ranking does not depend on the split.
    """
    assert plan.validation is not None
    candidates = quantizable_nodes(fp32_graph(plan.model), plan.quantization_options())
    if not candidates:
        return ()
    whole = plan.shard_specs(plan.validation)[0]
    count = min(plan.config.sensitivity_examples, plan.validation.sample)
    slice_spec = replace(whole, total=count, sample=count, seed=None, shard=0, shards=1, on_bad_image="skip")
    int8 = int8_ref(plan)
    jobs = [(plan.model, int8, slice_spec, (node,), index) for index, node in enumerate(candidates)]
    ranked = [
        node for result in run_shards(client, SENSITIVITY_STAGE, rank_shard, jobs, progress) for node in result.nodes
    ]
    return tuple(sorted(ranked, key=lambda node: node.error, reverse=True))

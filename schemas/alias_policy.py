"""Which registered INT8 version the registry alias points at: the newest that passed, or the best.

Nightly runs register a version each; a consumer resolving ``models:/name@alias`` wants the best
one, not whichever ran last. ``best:<metric>`` moves the alias only to a version whose run measured
at least as well as the alias's current version (higher accuracy or agreement, lower drop; a tie
goes to the newer version).
"""

from __future__ import annotations

LATEST = "latest"
BEST_PREFIX = "best:"
METRICS: tuple[str, ...] = (
    "int8_top1",
    "int8_top5",
    "agreement_top1",
    "deploy_int8_top1",
    "deploy_agreement_top1",
    "top1_drop",
    "top5_drop",
    "deploy_top1_drop",
)
"""The run metrics a policy may rank by: the accuracy figures of ``Accuracy.summary``."""
PATTERN = f"{LATEST}|{BEST_PREFIX}({'|'.join(METRICS)})"
"""The policies a setting accepts (a JSON-schema pattern, so the trigger form refuses others too)."""


def ranking_metric(policy: str) -> str | None:
    """The metric of a ``best:<metric>`` policy; None for ``latest``."""
    return policy.removeprefix(BEST_PREFIX) if policy.startswith(BEST_PREFIX) else None


def at_least_as_good(metric: str, new: float, current: float) -> bool:
    """Whether a run measuring ``new`` should take the alias from one measuring ``current``."""
    return new <= current if metric.endswith("_drop") else new >= current

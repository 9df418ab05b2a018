"""MLflow metric names: ``<group>/<name>``, grouped by what a figure measures.

MLflow's run page and compare view sort and chart metrics by name and group them by the part before
the first ``/``: accuracy figures then stand together, apart from timings, throughputs and counts,
and a reader looking for ``int8_top1`` does not scroll past ``build_seconds``.
"""

from __future__ import annotations

SEPARATOR = "/"
ACCURACY = "accuracy"
TIME = "time"
THROUGHPUT = "throughput"
COUNT = "count"
COUNT_SUFFIXES = ("_examples", "_images", "_attempts", "gemm_fallbacks")
GROUP_ORDER = (ACCURACY, TIME, THROUGHPUT, COUNT)
"""The order MLflow's run page lists metrics in (the order they were logged): accuracy first."""


def metric_group(name: str) -> str:
    """The group of metric ``name`` (a report figure's plain name), read off its name's ending."""
    if name.endswith("_per_second"):
        return THROUGHPUT
    if name.endswith("_seconds"):
        return TIME
    if name.endswith(COUNT_SUFFIXES):
        return COUNT
    return ACCURACY


def metric_key(name: str) -> str:
    """The MLflow key of metric ``name``: ``accuracy/int8_top1``, ``time/calib_seconds``."""
    return f"{metric_group(name)}{SEPARATOR}{name}"


def metric_name(key: str) -> str:
    """The plain name of MLflow key ``key`` (the inverse of :func:`metric_key`)."""
    return key.split(SEPARATOR, 1)[-1]


def listing_order(key: str) -> tuple[int, str]:
    """Sort key of MLflow key ``key``: by group (``GROUP_ORDER``), then by name."""
    return GROUP_ORDER.index(metric_group(metric_name(key))), key

"""Which task failures are worth a retry.

Bad input (a missing file, a model that does not load, data that does not fit the model, a wrong
setting) raises a ``ValueError`` subclass in int8flow; the same input fails the same way on every
try, so the task fails at once with the message (``AirflowFailException``: no retries). A failed
accuracy gate is a result, not an accident, and fails the same way. Everything else (an unreachable
Dask scheduler or MLflow server, a killed worker, a lost connection, a full disk) is retried with
exponential backoff: 30 s, 1 min, 2 min.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

from airflow.sdk.exceptions import AirflowFailException

RETRY_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}
"""``default_args`` of the int8flow DAGs: retries for transient failures, doubling the delay."""

P = ParamSpec("P")
R = TypeVar("R")


def bad_input_fails_at_once(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function``; turn bad input (``ValueError``) into ``AirflowFailException`` with its message."""

    @functools.wraps(function)
    def task_body(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except ValueError as error:
            raise AirflowFailException(f"bad input, not retried: {error}") from error

    return task_body

"""Which task failures are worth a retry, and how each shows in the task log.

Bad input (a missing file, a model that does not load, data that does not fit the model, a wrong
setting) raises a ``ValueError`` subclass in int8flow; the same input fails the same way on every
try, so the task fails at once with the message (``FailedAtOnce``: no retries), its CLI flags
named as the trigger form's fields (``params.form_words``). A failed accuracy gate is a result, not
an accident, and fails the same way. Everything else (an unreachable Dask scheduler or MLflow
server, a killed worker, a lost connection, a full disk) is retried with exponential backoff:
30 s, 1 min, 2 min, its traceback logged.

Either way the task log shows the error with every URI redacted (``int8flow.schemas.uri_redaction``):
a model or data URI may carry credentials, and the log is read by everyone with access to the DAG.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule
from airflow.sdk.exceptions import AirflowException

from int8flow.schemas.uri_redaction import redact_text
from int8flow_airflow.params import form_words


class FailedAtOnce(SystemExit):
    """A failure no retry can fix (bad input, a failed gate), for the task log as one line.

    Airflow's task runner logs ``AirflowFailException``, like every other exception, with its
    traceback: sixteen frames of Airflow's own around one wrong path. ``SystemExit`` is the one
    failure it logs without one, as ``Task exited exit_code=<the message>``; it then asks the task's
    retry policy, and ``RETRY_ARGS``'s fails the task at once on this class, as
    ``AirflowFailException`` would. A ``SystemExit`` also passes every ``except Exception`` between
    the raise and the runner, so nothing on the way turns it into a retried error.
    """


NOT_RETRIED = ExceptionRetryPolicy(
    [RetryRule(FailedAtOnce, RetryAction.FAIL, reason="the same input fails the same way: not retried")]
)
"""The retry policy that makes ``FailedAtOnce`` final; every other failure takes the task's retries."""

RETRY_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "retry_policy": NOT_RETRIED,
}
"""``default_args`` of the int8flow DAGs: retries for transient failures, doubling the delay."""

log = logging.getLogger("int8flow.failures")

P = ParamSpec("P")
R = TypeVar("R")


class TransientTaskError(RuntimeError):
    """A failure worth a retry: the task's retries apply to it (``NOT_RETRIED`` matches only ``FailedAtOnce``)."""


def bad_input_fails_at_once(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function``; turn bad input (``ValueError``) into ``FailedAtOnce`` with its message,
    anything else into a retried ``TransientTaskError``; both redacted, the traceback logged redacted."""

    @functools.wraps(function)
    def task_body(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except AirflowException:
            raise
        except ValueError as error:
            raise FailedAtOnce(redact_text(form_words(f"bad input, not retried: {error}"))) from None
        except Exception as error:
            log.error("%s", redact_text(traceback.format_exc()))
            raise TransientTaskError(redact_text(f"{type(error).__name__}: {error}")) from None

    return task_body

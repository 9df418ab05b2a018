"""Which task failures are worth a retry.

Bad input (a missing file, a model that does not load, data that does not fit the model, a wrong
setting) raises a ``ValueError`` subclass in int8flow; the same input fails the same way on every
try, so the task fails at once with the message (``AirflowFailException``: no retries), its CLI flags
named as the trigger form's fields (``params.form_words``). A failed
accuracy gate is a result, not an accident, and fails the same way. Everything else (an unreachable
Dask scheduler or MLflow server, a killed worker, a lost connection, a full disk) is retried with
exponential backoff: 30 s, 1 min, 2 min.

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

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from int8flow.schemas.uri_redaction import redact_text
from int8flow_airflow.params import form_words

RETRY_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}
"""``default_args`` of the int8flow DAGs: retries for transient failures, doubling the delay."""

log = logging.getLogger("int8flow.failures")

P = ParamSpec("P")
R = TypeVar("R")


class TransientTaskError(RuntimeError):
    """A failure worth a retry (Airflow retries any exception but ``AirflowFailException``)."""


def bad_input_fails_at_once(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function``; turn bad input (``ValueError``) into ``AirflowFailException`` with its message,
    anything else into a retried ``TransientTaskError``; both redacted, the traceback logged redacted."""

    @functools.wraps(function)
    def task_body(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except AirflowException:
            raise
        except ValueError as error:
            raise AirflowFailException(redact_text(form_words(f"bad input, not retried: {error}"))) from None
        except Exception as error:
            log.error("%s", redact_text(traceback.format_exc()))
            raise TransientTaskError(redact_text(f"{type(error).__name__}: {error}")) from None

    return task_body

"""The "MLflow run" button of the ``track`` and ``gate`` tasks: from a DAG run to its MLflow run.

Airflow 3 evaluates an operator's extra links on the worker when the task ends and stores each as
an XCom, which the UI reads; the link therefore only has to find what the task itself pushed
(``MLFLOW_RUN_URL_KEY``). A store without a UI of its own (a SQLite file) has no page to link to:
the button then stays disabled and the task log names the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink, BaseXCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

MLFLOW_RUN_URL_KEY = "mlflow_run_url"
"""The XCom a tracking task pushes its MLflow run's page under."""


class MlflowRunLink(BaseOperatorLink):
    """The tracked run's page in the MLflow UI, or none ("") when the task pushed none."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return BaseXCom.get_value(ti_key=ti_key, key=MLFLOW_RUN_URL_KEY) or ""

"""Where runs are tracked when nobody says: a SQLite store in the working folder.

Kept apart from the MLflow client code so that the Airflow trigger form (parsed on every DAG-file
scan) can show the default without importing MLflow.
"""

from __future__ import annotations

from pathlib import Path

TRACKING_DATABASE = "mlflow.db"


def default_tracking_uri(directory: str) -> str:
    """A SQLite store in ``directory``: MLflow 3 refuses plain folder stores without an opt-in."""
    return f"sqlite:///{Path(directory).resolve() / TRACKING_DATABASE}"


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for servers and in-memory stores."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if database in ("", ":memory:") else Path(database).resolve()

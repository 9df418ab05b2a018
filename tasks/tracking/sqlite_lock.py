"""An exclusive lock beside a SQLite tracking database, so only one process creates its tables.

MLflow builds the schema of a new ``sqlite:///`` store (``create_all`` and an alembic upgrade)
without any lock: two processes that open the same new file at once both run the migrations, both
fail, and alembic's half-done batch tables (``_alembic_tmp_experiments``) break the file for good.
Kept free of MLflow so it can be tested and reused on its own; the lock is ``file_lock``'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from int8flow.tasks.outputs.file_lock import exclusive_lock

LOCK_SUFFIX = ".lock"


def lock_file(database: Path) -> Path:
    """``mlflow.db.lock`` beside ``mlflow.db``: never removed, as removing a lock file races its users."""
    return database.with_name(database.name + LOCK_SUFFIX)


@contextmanager
def database_lock(database: Path, timeout_s: float) -> Iterator[None]:
    """Hold the exclusive lock of ``database`` (whose folder must exist), waiting at most ``timeout_s``.

    Raises ``TimeoutError`` if another process holds it longer: a migration takes seconds, so a
    holder after minutes is stuck and waiting on it for ever would hang the run silently.
    """
    with exclusive_lock(lock_file(database), timeout_s):
        yield

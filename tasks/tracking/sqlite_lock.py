"""An exclusive lock beside a SQLite tracking database, so only one process creates its tables.

MLflow builds the schema of a new ``sqlite:///`` store (``create_all`` and an alembic upgrade)
without any lock: two processes that open the same new file at once both run the migrations, both
fail, and alembic's half-done batch tables (``_alembic_tmp_experiments``) break the file for good.
Kept free of MLflow so it can be tested and reused on its own. POSIX ``flock`` locks are released
by the kernel when their holder dies, so a crashed run never leaves the store locked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; MLflow does not lock there either
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lock"
_POLL_S = 0.05


def lock_file(database: Path) -> Path:
    """``mlflow.db.lock`` beside ``mlflow.db``: never removed, as removing a lock file races its users."""
    return database.with_name(database.name + LOCK_SUFFIX)


@contextmanager
def database_lock(database: Path, timeout_s: float) -> Iterator[None]:
    """Hold the exclusive lock of ``database`` (whose folder must exist), waiting at most ``timeout_s``.

    Raises ``TimeoutError`` if another process holds it longer: a migration takes seconds, so a
    holder after minutes is stuck and waiting on it for ever would hang the run silently.
    """
    if fcntl is None:
        yield
        return
    path = lock_file(database)
    with path.open("a") as handle:  # "a": create if missing, never truncate another process's file
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{path} held by another process for over {timeout_s:g} s") from None
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

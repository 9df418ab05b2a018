"""An exclusive POSIX lock on a file, released by the kernel when its holder dies.

Shared by the tracking store (one process creates a new SQLite store's tables) and the run folder
(one run at a time writes a folder), so a crashed run never leaves anything locked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the callers then run unlocked, as MLflow does there
    fcntl = None  # type: ignore[assignment]

_POLL_S = 0.05


@contextmanager
def exclusive_lock(path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the lock of ``path`` (created if missing, never removed: removing a lock file races its users).

    ``timeout_s``: raise ``TimeoutError`` after waiting that long; None waits as long as the holder runs.
    """
    if fcntl is None:
        yield
        return
    with path.open("a") as handle:  # "a": create if missing, never truncate another process's file
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"{path} held by another process for over {timeout_s:g} s") from None
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

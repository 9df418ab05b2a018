"""One run at a time writes a run folder, so two runs given the same ``--out`` cannot interleave.

Both would claim the folder, rewrite the same files and read-modify-write the same manifest, which
loses entries (and with them, what ``--overwrite`` may delete). The second run waits for the first
and then finds the folder as a retry finds it: its outputs already there for the same run key,
or another run's to refuse. The lock file is outside the folder (the folder holds only the run's own
files), keyed by the folder's real path, in a per-user folder of the system's temporary directory:
one user's runs on one host share it. A remote ``--out`` (an fsspec URL) has no such lock: give
each concurrent run its own.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fsspec.core import url_to_fs

from int8flow.tasks.outputs.file_lock import exclusive_lock

LOCK_FOLDER = "int8flow-run-folder-locks"


def lock_path(out: str) -> Path | None:
    """The lock file of a local ``out`` (the same for every spelling of its path), None for a remote one."""
    fs, root = url_to_fs(out)
    if "file" not in fs.protocol:
        return None
    key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / f"{LOCK_FOLDER}-{getpass.getuser()}" / f"{key}.lock"


@contextmanager
def run_folder_lock(out: str) -> Iterator[None]:
    """Hold ``out`` for this run, waiting while another run on this host holds it."""
    path = lock_path(out)
    if path is None:
        yield
        return
    path.parent.mkdir(exist_ok=True)
    with exclusive_lock(path):
        yield

"""Writing outputs so that no reader ever sees half a file.

Workers die mid-write (pre-empted nodes, timeouts, Ctrl-C), and a truncated partial histogram or
calibration table that still parses would quietly change thresholds. Every output is therefore
written to a temporary name in the same directory and renamed into place only once it is complete.
Temporary names start with '.' and end with '.tmp-<random>', so directory listings can skip them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

TEMP_MARKER = ".tmp-"


@contextmanager
def atomic_output(url_or_path: str) -> Iterator[str]:
    """Yield a temporary path (local) or URL (fsspec) beside ``url_or_path``; write it in the block.

    On success the temporary replaces ``url_or_path`` (``os.replace`` locally, which is atomic;
    ``fs.mv`` elsewhere, whose final object appears whole on object stores). On any exception it is
    removed and the exception propagates, leaving any previous file untouched.
    """
    if url_or_path.endswith(("/", os.sep)):
        raise IsADirectoryError(f"{url_or_path}: an output needs a file name, not a directory")
    fs, path = url_to_fs(url_or_path)
    parent, slash, name = path.rpartition("/")
    temp_name = f".{name}{TEMP_MARKER}{secrets.token_hex(8)}"
    if isinstance(fs, LocalFileSystem):
        os.makedirs(parent or "/", exist_ok=True)
        temp = parent + slash + temp_name
        try:
            yield temp
            _flush_to_disk(temp)
            os.replace(temp, path)
        except BaseException:
            _remove_quietly(temp)
            raise
        return
    temp_path = parent + slash + temp_name
    temp_url = url_or_path.rpartition("/")[0] + "/" + temp_name
    try:
        yield temp_url
        fs.mv(temp_path, path)
    except BaseException:
        if fs.exists(temp_path):
            fs.rm(temp_path)
        raise


def atomic_write_bytes(url_or_path: str, data: bytes) -> None:
    """Write ``data`` to ``url_or_path`` whole or not at all."""
    with atomic_output(url_or_path) as temp, fsspec.open(temp, "wb") as file:
        file.write(data)


def atomic_write_text(url_or_path: str, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``url_or_path`` whole or not at all."""
    atomic_write_bytes(url_or_path, text.encode(encoding))


def _flush_to_disk(path: str) -> None:
    """Make the bytes durable before the rename publishes them, so a crash cannot leave it empty."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_quietly(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)

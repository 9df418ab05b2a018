"""The manifest of a run folder: the files this run wrote, and the only ones it ever deletes or uploads.

An output folder is shared with whatever else the user keeps there, and a name a run would use
(``plots/``, ``histograms/``) may already hold the user's files or be a link to another folder. So
a run records every file it writes (``manifest.json``, relative names), cleaning up removes exactly
those, never through a symbolic link and never outside the folder, and the MLflow upload reads the
same list. A file written but not yet recorded (a crash in between) is left alone: it is replaced
when the run writes it again.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from int8flow.schemas.run_folder import MANIFEST_FILE
from int8flow.tasks.outputs.atomic_files import atomic_write_text


class ManifestError(ValueError):
    """The manifest names a file outside its folder: it was edited, and nothing it lists is trusted."""


def owned_outputs(out: str) -> set[str]:
    """The relative names of the files the run in ``out`` recorded (none when it recorded nothing)."""
    fs, root = url_to_fs(out)
    path = f"{root.rstrip('/')}/{MANIFEST_FILE}"
    if _is_link(fs, path) or not fs.isfile(path):
        return set()
    with fs.open(path, "r") as file:
        names = set(json.load(file))
    for name in names:
        _check_inside(name, out)
    return names


def record_outputs(out: str, paths: Iterable[str]) -> None:
    """Add ``paths`` (full paths or URLs inside ``out``) to the manifest; call it as each file is written."""
    base = out.rstrip("/")
    added = {_relative(path, base) for path in paths}
    current = owned_outputs(out)
    if not added - current:
        return
    _write_manifest(out, current | added)


def remove_outputs(out: str, names: Iterable[str] | None = None) -> None:
    """Delete the recorded files (all of them, or those of ``names`` that are recorded), then their
    emptied folders; a link is never followed and nothing unrecorded is touched."""
    fs, root = url_to_fs(out)
    owned = owned_outputs(out)
    chosen = owned if names is None else owned & set(names)
    for name in sorted(chosen):
        path = f"{root.rstrip('/')}/{name}"
        if not through_link(fs, root, name) and fs.isfile(path):
            fs.rm(path)
    for folder in sorted({posixpath.dirname(name) for name in chosen if "/" in name}, reverse=True):
        path = f"{root.rstrip('/')}/{folder}"
        if not through_link(fs, root, folder) and fs.isdir(path) and not fs.ls(path, detail=False):
            fs.rmdir(path)
    remaining = owned - chosen
    manifest = f"{root.rstrip('/')}/{MANIFEST_FILE}"
    if remaining:
        _write_manifest(out, remaining)
    elif fs.isfile(manifest) and not _is_link(fs, manifest):
        fs.rm(manifest)


def linked_names(out: str, names: Iterable[str]) -> list[str]:
    """Which of the top-level ``names`` in ``out`` are symbolic links (local folders only)."""
    fs, root = url_to_fs(out)
    return [name for name in names if _is_link(fs, f"{root.rstrip('/')}/{name}")]


def _write_manifest(out: str, names: set[str]) -> None:
    atomic_write_text(f"{out.rstrip('/')}/{MANIFEST_FILE}", json.dumps(sorted(names), indent=1) + "\n")


def _relative(path: str, base: str) -> str:
    if not path.startswith(base + "/"):
        raise ManifestError(f"{path}: not inside the run folder {base}; int8flow records only its own outputs")
    name = path[len(base) + 1 :]
    _check_inside(name, base)
    return name


def _check_inside(name: str, out: str) -> None:
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise ManifestError(
            f"{out}/{MANIFEST_FILE} names {name!r}, outside the run folder; it was edited: remove the folder's "
            "outputs by hand or choose another --out"
        )


def _is_link(fs: AbstractFileSystem, path: str) -> bool:
    return isinstance(fs, LocalFileSystem) and os.path.islink(path)


def through_link(fs: AbstractFileSystem, root: str, name: str) -> bool:
    """Whether ``name`` or any folder on its way from ``root`` is a link (only local folders have them)."""
    parts = name.split("/")
    return any(_is_link(fs, "/".join([root.rstrip("/"), *parts[: depth + 1]])) for depth in range(len(parts)))

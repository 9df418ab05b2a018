"""Atomic outputs: a file appears whole or not at all, locally and on any fsspec filesystem."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from int8flow.tasks.outputs.atomic_files import atomic_output, atomic_write_bytes, atomic_write_text


class WriterCrashed(RuntimeError):
    pass


def test_write_bytes_creates_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "table.bin"
    atomic_write_bytes(str(target), b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.bin"]


def test_write_text_encodes_utf8(tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    atomic_write_text(str(target), "µ=1\n")
    assert target.read_bytes() == "µ=1\n".encode()


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    target.write_text("old")
    atomic_write_text(str(target), "new")
    assert target.read_text() == "new"


def test_temporary_is_a_hidden_sibling(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    with atomic_output(str(target)) as temp:
        temp_path = Path(temp)
        assert temp_path.parent == tmp_path
        assert temp_path.name.startswith(".out.parquet.tmp-")
        assert not target.exists()
        temp_path.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert not temp_path.exists()


def test_failed_block_leaves_no_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    with pytest.raises(WriterCrashed), atomic_output(str(target)) as temp:
        Path(temp).write_bytes(b"half")
        raise WriterCrashed
    assert list(tmp_path.iterdir()) == []


def test_failed_block_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("previous")
    with pytest.raises(WriterCrashed), atomic_output(str(target)) as temp:
        Path(temp).write_text("half")
        raise WriterCrashed
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_block_that_fails_before_writing_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(WriterCrashed), atomic_output(str(tmp_path / "out.txt")):
        raise WriterCrashed
    assert list(tmp_path.iterdir()) == []


def test_directory_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="needs a file name"):
        atomic_write_bytes(f"{tmp_path}/", b"x")
    assert list(tmp_path.iterdir()) == []


def test_memory_url_round_trip(memory_dir: str) -> None:
    url = f"{memory_dir}/tables/model.json"
    atomic_write_text(url, '{"a": 1}')
    with fsspec.open(url, "rt") as file:
        assert file.read() == '{"a": 1}'
    fs = fsspec.filesystem("memory")
    assert [entry.rpartition("/")[2] for entry in fs.ls(f"{memory_dir}/tables", detail=False)] == ["model.json"]


def test_memory_url_temporary_is_a_hidden_sibling_url(memory_dir: str) -> None:
    with atomic_output(f"{memory_dir}/out.bin") as temp:
        assert temp.startswith(f"{memory_dir}/.out.bin.tmp-")
        with fsspec.open(temp, "wb") as file:
            file.write(b"x")
    with fsspec.open(f"{memory_dir}/out.bin", "rb") as file:
        assert file.read() == b"x"
    assert fsspec.filesystem("memory").ls(memory_dir, detail=False) == [
        f"{memory_dir.removeprefix('memory:/')}/out.bin"
    ]


def test_memory_url_failed_block_leaves_nothing(memory_dir: str) -> None:
    with pytest.raises(WriterCrashed), atomic_output(f"{memory_dir}/out.bin") as temp:
        with fsspec.open(temp, "wb") as file:
            file.write(b"half")
        raise WriterCrashed
    assert fsspec.filesystem("memory").ls(memory_dir, detail=False) == []

"""Partial-histogram Parquet files: exact round-trips, reproducible bytes, order-free merges."""

from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from int8flow.kernels.histogram import ZERO_EXPONENT, Histogram
from int8flow.schemas.partial_histograms import PartialHistogramFileError
from int8flow.tasks.calibration.partial_files import (
    list_partial_files,
    merge_partial_files,
    read_partial_file,
    read_partial_histograms,
    write_partial_histograms,
)

BINS = 64
MODEL = hashlib.sha256(b"resnet50.onnx bytes").hexdigest()
OTHER_MODEL = hashlib.sha256(b"mobilenet.onnx bytes").hexdigest()


def _shard_data(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv1:0": rng.normal(scale=seed + 1.0, size=500),
        "relu1:0": np.abs(rng.normal(scale=0.01 * (seed + 1), size=300)),
        "zeros": np.zeros(7),
        "empty": np.zeros(0),
    }


def _histograms(data: dict[str, np.ndarray], num_bins: int = BINS) -> dict[str, Histogram]:
    return {name: Histogram.of(values, num_bins) for name, values in data.items()}


def _write(path: Path, shard: int, histograms: dict[str, Histogram], model: str = MODEL) -> str:
    return write_partial_histograms(str(path), "run-1", model, shard, histograms)


def _rejection(call, *args: object, **kwargs: object) -> str:
    with pytest.raises(PartialHistogramFileError) as raised:
        call(*args, **kwargs)
    return str(raised.value)


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    written = _histograms(_shard_data(0))
    path = _write(tmp_path / "shard-00000.parquet", 0, written)
    read = read_partial_histograms(path)
    assert sorted(read) == sorted(written)
    assert all(read[name].same_as(written[name]) for name in written)


def test_empty_and_all_zero_histograms_round_trip(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.parquet", 0, _histograms(_shard_data(0)))
    read = read_partial_histograms(path)
    empty, zeros = read["empty"], read["zeros"]
    assert (empty.exponent, empty.signed, empty.count) == (ZERO_EXPONENT, False, 0)
    assert (empty.min, empty.max) == (math.inf, -math.inf)
    assert (zeros.exponent, zeros.min, zeros.max, zeros.count) == (ZERO_EXPONENT, 0.0, 0.0, 7)
    assert zeros.counts.tolist() == [7] + [0] * (BINS - 1)


def test_read_histograms_have_writable_int64_counts(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.parquet", 0, _histograms(_shard_data(0)))
    counts = read_partial_histograms(path)["conv1:0"].counts
    assert counts.dtype == np.int64
    assert counts.flags.writeable


def test_read_partial_file_reports_run_model_and_shard(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.parquet", 5, _histograms(_shard_data(0)))
    partial = read_partial_file(path)
    assert (partial.path, partial.run_id, partial.model_sha256, partial.shard) == (
        path,
        "run-1",
        MODEL,
        5,
    )


def test_rows_are_sorted_by_tensor(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.parquet", 0, _histograms(_shard_data(0)))
    tensors = pq.read_table(path).column("tensor").to_pylist()
    assert tensors == ["conv1:0", "empty", "relu1:0", "zeros"]


def test_columns_are_zstd_compressed(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.parquet", 0, _histograms(_shard_data(0)))
    metadata = pq.ParquetFile(path).metadata
    codecs = {metadata.row_group(0).column(i).compression for i in range(metadata.num_columns)}
    assert codecs == {"ZSTD"}


def test_rewrite_gives_identical_bytes(tmp_path: Path) -> None:
    path = Path(_write(tmp_path / "p.parquet", 0, _histograms(_shard_data(0))))
    before = path.read_bytes()
    _write(path, 0, _histograms(_shard_data(0)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]


def test_bytes_do_not_depend_on_the_mapping_order(tmp_path: Path) -> None:
    histograms = _histograms(_shard_data(0))
    forward = Path(_write(tmp_path / "a.parquet", 0, histograms))
    backward = Path(_write(tmp_path / "b.parquet", 0, dict(reversed(list(histograms.items())))))
    assert forward.read_bytes() == backward.read_bytes()


def test_write_of_no_histograms_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    assert _rejection(_write, path, 0, {}).startswith(f"{path}: holds no histograms")
    assert list(tmp_path.iterdir()) == []


def test_memory_url_round_trip_and_listing(memory_dir: str) -> None:
    written = _histograms(_shard_data(1))
    url = write_partial_histograms(f"{memory_dir}/shard-00001.parquet", "run-1", MODEL, 1, written)
    assert list_partial_files(memory_dir) == [f"{memory_dir}/shard-00001.parquet"]
    read = read_partial_histograms(url)
    assert all(read[name].same_as(written[name]) for name in written)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.parquet")
    assert _rejection(read_partial_histograms, path).startswith(f"{path}: partial-histogram file not found")


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    message = _rejection(read_partial_histograms, str(path))
    assert message.startswith(f"{path}: not a readable Parquet file")
    assert message.endswith("delete it and recalibrate its shard")


def test_truncated_file_is_named(tmp_path: Path) -> None:
    path = Path(_write(tmp_path / "p.parquet", 0, _histograms(_shard_data(0))))
    path.write_bytes(path.read_bytes()[:-100])
    assert _rejection(read_partial_histograms, str(path)).startswith(f"{path}: not a readable Parquet file")


def test_parquet_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    assert "not an int8flow partial-histogram file" in _rejection(read_partial_histograms, str(path))


def test_read_checks_expected_model(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.parquet", 0, _histograms(_shard_data(0)))
    message = _rejection(read_partial_histograms, path, expected_model_sha256=OTHER_MODEL)
    assert message.startswith(f"{path}: partial histograms of model {MODEL} but model {OTHER_MODEL}")


def test_read_checks_expected_num_bins(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.parquet", 0, _histograms(_shard_data(0)))
    message = _rejection(read_partial_histograms, path, expected_num_bins=2 * BINS)
    assert message.startswith(f"{path}: tensor 'conv1:0' has {BINS} bins but {2 * BINS} were expected")


def test_write_refuses_a_fingerprint_that_is_not_a_sha256(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    message = _rejection(_write, path, 0, _histograms(_shard_data(0)), model="resnet50")
    assert message.startswith(f"{path}: model fingerprint 'resnet50' is not a sha256")
    assert list(tmp_path.iterdir()) == []


def test_merge_equals_the_histogram_of_all_data_in_any_file_order(tmp_path: Path) -> None:
    shards = [_shard_data(seed) for seed in range(3)]
    paths = [_write(tmp_path / f"shard-{i:05d}.parquet", i, _histograms(data)) for i, data in enumerate(shards)]
    whole = _histograms({name: np.concatenate([data[name] for data in shards]) for name in shards[0]})
    for order in itertools.permutations(paths):
        merged = merge_partial_files(list(order), MODEL, BINS)
        assert list(merged) == ["conv1:0", "empty", "relu1:0", "zeros"]
        assert all(merged[name].same_as(whole[name]) for name in whole)


def test_merge_of_nothing_is_refused() -> None:
    assert "no partial-histogram files to merge" in _rejection(merge_partial_files, [])


def test_merge_refuses_a_file_of_another_model(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.parquet", 0, _histograms(_shard_data(0)))
    other = _write(tmp_path / "b.parquet", 1, _histograms(_shard_data(1)), model=OTHER_MODEL)
    message = _rejection(merge_partial_files, [other, first])
    assert message.startswith(f"{other}: partial histograms of model {OTHER_MODEL} but model {MODEL}")
    assert "fresh histogram directory" in message


def test_merge_refuses_a_file_of_another_bin_count(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.parquet", 0, _histograms(_shard_data(0)))
    other = _write(tmp_path / "b.parquet", 1, _histograms(_shard_data(1), num_bins=2 * BINS))
    message = _rejection(merge_partial_files, [first, other])
    assert message.startswith(f"{other}: tensor 'conv1:0' has {2 * BINS} bins but {BINS} were expected")


def test_merge_refuses_a_shard_seen_twice(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.parquet", 4, _histograms(_shard_data(0)))
    again = _write(tmp_path / "b.parquet", 4, _histograms(_shard_data(1)))
    message = _rejection(merge_partial_files, [first, again])
    assert message.startswith(f"{again}: shard 4 is also in {first}; merging both would count")


def test_merge_refuses_shards_with_different_tensors(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.parquet", 0, _histograms(_shard_data(0)))
    data = _shard_data(1)
    data["pool:0"] = data.pop("relu1:0")
    other = _write(tmp_path / "b.parquet", 1, _histograms(data))
    message = _rejection(merge_partial_files, [first, other])
    assert message.startswith(
        f"{other}: its tensors differ from those of {first} (missing ['relu1:0'], extra ['pool:0'])"
    )


def test_list_returns_sorted_parquet_files_and_skips_temporaries(tmp_path: Path) -> None:
    for name in [
        "shard-00002.parquet",
        "shard-00000.parquet",
        "notes.txt",
        ".shard-00001.parquet.tmp-ab12",
    ]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.parquet").mkdir()
    assert list_partial_files(str(tmp_path)) == [
        f"{tmp_path}/shard-00000.parquet",
        f"{tmp_path}/shard-00002.parquet",
    ]


def test_list_of_a_directory_without_partials_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".p.parquet.tmp-0011").write_bytes(b"")
    message = _rejection(list_partial_files, str(tmp_path))
    assert message.startswith(f"{tmp_path}: no partial-histogram files (*.parquet)")


def test_list_of_a_missing_directory_is_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    assert _rejection(list_partial_files, missing).startswith(f"{missing}: histogram directory not found")

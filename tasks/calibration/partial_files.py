"""Partial histograms on disk: one Parquet file per calibration shard, merged by a later step.

Shards run on different workers and possibly at different times; the files are the only thing the
merge step sees. Writes are atomic and byte-reproducible (rows sorted by tensor, fixed encoding), so
a re-run shard replaces its file with an identical one. Reads check the contract of
``int8flow.schemas.partial_histograms`` before any count is trusted, and the merge refuses files that would
count data twice or mix runs of another model or bin count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from int8flow.kernels.histogram import Histogram, merge_all
from int8flow.schemas.partial_histograms import (
    PARTIAL_HISTOGRAM_SCHEMA,
    PartialHistogramFileError,
    validate_partial_table,
)
from int8flow.schemas.run_folder import PARTIAL_FILE_SUFFIX
from int8flow.tasks.outputs.atomic_files import atomic_write_bytes


@dataclass(frozen=True)
class PartialFile:
    """One shard's histograms and the identity the merge checks them against."""

    path: str
    run_id: str
    model_sha256: str
    shard: int
    histograms: dict[str, Histogram]


def write_partial_histograms(
    path: str,
    run_id: str,
    model_sha256: str,
    shard: int,
    histograms: Mapping[str, Histogram],
) -> str:
    """Write one shard's histograms to ``path`` (local or fsspec URL) atomically; return it."""
    names = sorted(histograms)
    hosts = [histograms[name].to_host() for name in names]
    counts = [np.asarray(host.counts, dtype=np.int64) for host in hosts]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in counts])]).astype(np.int32)
    values = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    columns = {
        "run_id": pa.array([run_id] * len(names), pa.string()),
        "model_sha256": pa.array([model_sha256] * len(names), pa.string()),
        "shard": pa.array([shard] * len(names), pa.int32()),
        "tensor": pa.array(names, pa.string()),
        "signed": pa.array([host.signed for host in hosts], pa.bool_()),
        "num_bins": pa.array([host.num_bins for host in hosts], pa.int32()),
        "exponent": pa.array([host.exponent for host in hosts], pa.int32()),
        "counts": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64())),
        "min": pa.array([host.min for host in hosts], pa.float64()),
        "max": pa.array([host.max for host in hosts], pa.float64()),
        "count": pa.array([host.count for host in hosts], pa.int64()),
    }
    table = pa.Table.from_arrays(list(columns.values()), schema=PARTIAL_HISTOGRAM_SCHEMA)
    # Refuse to write what read_partial_histograms would refuse to read.
    validate_partial_table(table, path)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def read_partial_histograms(
    path: str,
    expected_model_sha256: str | None = None,
    expected_num_bins: int | None = None,
) -> dict[str, Histogram]:
    """The histograms of one partial file, by tensor name, after checking the file's contract."""
    return read_partial_file(path, expected_model_sha256, expected_num_bins).histograms


def read_partial_file(
    path: str,
    expected_model_sha256: str | None = None,
    expected_num_bins: int | None = None,
) -> PartialFile:
    """One partial file with its run, model and shard, for callers that check provenance."""
    try:
        fs, fs_path = url_to_fs(path)
        with fs.open(fs_path, "rb") as file:
            table = pq.read_table(file)
    except FileNotFoundError:
        raise PartialHistogramFileError(
            f"{path}: partial-histogram file not found; check the histogram directory, or rerun "
            "the shard that writes it"
        ) from None
    except (OSError, pa.ArrowException) as error:
        raise PartialHistogramFileError(
            f"{path}: not a readable Parquet file ({error}); delete it and recalibrate its shard"
        ) from None
    validate_partial_table(table, path, expected_model_sha256, expected_num_bins)
    counts = table.column("counts").combine_chunks()
    values = np.array(counts.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    bounds = np.cumsum(table.column("num_bins").to_numpy())[:-1]
    histograms = {
        tensor: Histogram(row_counts, exponent, signed, low, high, count)
        for tensor, row_counts, exponent, signed, low, high, count in zip(
            table.column("tensor").to_pylist(),
            np.split(values, bounds),
            table.column("exponent").to_pylist(),
            table.column("signed").to_pylist(),
            table.column("min").to_pylist(),
            table.column("max").to_pylist(),
            table.column("count").to_pylist(),
            strict=True,
        )
    }
    return PartialFile(
        path,
        table.column("run_id")[0].as_py(),
        table.column("model_sha256")[0].as_py(),
        table.column("shard")[0].as_py(),
        histograms,
    )


def merge_partial_files(
    paths: Sequence[str],
    expected_model_sha256: str | None = None,
    expected_num_bins: int | None = None,
) -> dict[str, Histogram]:
    """Every tensor's histogram over all shards, by name; the order of ``paths`` does not matter.

    Without expectations the first file (in sorted order) sets the model and bin count the others
    must match. Files must hold distinct shards with the same tensors: a shard seen twice would
    count its data twice, and a missing tensor would get a threshold from part of the data.
    """
    if not paths:
        raise PartialHistogramFileError(
            "no partial-histogram files to merge; find them with list_partial_files(directory)"
        )
    parts: dict[str, list[Histogram]] = {}
    shards: dict[int, str] = {}
    first: PartialFile | None = None
    for path in sorted(paths):
        partial = read_partial_file(path, expected_model_sha256, expected_num_bins)
        if first is None:
            first = partial
            expected_model_sha256 = partial.model_sha256
            expected_num_bins = next(iter(partial.histograms.values())).num_bins
        elif partial.histograms.keys() != first.histograms.keys():
            missing = sorted(first.histograms.keys() - partial.histograms.keys())
            extra = sorted(partial.histograms.keys() - first.histograms.keys())
            raise PartialHistogramFileError(
                f"{path}: its tensors differ from those of {first.path} (missing {missing[:5]!r}, "
                f"extra {extra[:5]!r}); every shard of a run calibrates the same tensors: "
                "recalibrate this shard, or use a fresh histogram directory per model"
            )
        if partial.shard in shards:
            raise PartialHistogramFileError(
                f"{path}: shard {partial.shard} is also in {shards[partial.shard]}; merging both "
                "would count its data twice: delete one of them"
            )
        shards[partial.shard] = path
        for tensor, histogram in partial.histograms.items():
            parts.setdefault(tensor, []).append(histogram)
    return {tensor: merge_all(parts[tensor]) for tensor in sorted(parts)}


def list_partial_files(directory: str) -> list[str]:
    """The ``*.parquet`` files directly in ``directory`` (local or fsspec URL), sorted.

    Dot-files are skipped: ``int8flow.tasks.outputs.atomic_files`` writes its temporaries under such names.
    """
    fs, fs_path = url_to_fs(directory)
    if not fs.isdir(fs_path):
        raise PartialHistogramFileError(
            f"{directory}: histogram directory not found; check the path, or run the calibration "
            "shards that write into it"
        )
    names = sorted(
        entry["name"].rstrip("/").rpartition("/")[2] for entry in fs.ls(fs_path, detail=True) if entry["type"] == "file"
    )
    found = [
        f"{directory.rstrip('/')}/{name}"
        for name in names
        if name.endswith(PARTIAL_FILE_SUFFIX) and not name.startswith(".")
    ]
    if not found:
        raise PartialHistogramFileError(
            f"{directory}: no partial-histogram files (*{PARTIAL_FILE_SUFFIX}); run the "
            "calibration shards first, or point to the directory they wrote"
        )
    return found

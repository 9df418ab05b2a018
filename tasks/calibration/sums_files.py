"""Partial bias-correction sums on disk: one Parquet file per calibration shard, merged exactly.

Written atomically and byte-reproducibly (rows sorted by node), like the partial histograms; the
merge checks that every file belongs to this run and this table of thresholds, and holds another
shard, before it adds the integers up (any order gives the same sums).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from int8flow.schemas.partial_sums import FORMAT_VERSION, PARTIAL_SUMS_SCHEMA, PartialSumsFileError
from int8flow.tasks.calibration.bias_correction import LayerSums
from int8flow.tasks.outputs.atomic_files import atomic_write_bytes


def write_partial_sums(path: str, run_id: str, table_sha256: str, shard: int, sums: Iterable[LayerSums]) -> str:
    """Write one shard's layer sums to ``path`` (local or fsspec URL) atomically; return it."""
    rows = sorted(sums, key=lambda layer: layer.node)

    def int64_lists(arrays: list[np.ndarray]) -> pa.Array:
        flat = [np.asarray(array, dtype=np.int64).reshape(-1) for array in arrays]
        offsets = np.concatenate([[0], np.cumsum([len(array) for array in flat])]).astype(np.int32)
        values = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))

    columns = [
        pa.array([run_id] * len(rows), pa.string()),
        pa.array([table_sha256] * len(rows), pa.string()),
        pa.array([shard] * len(rows), pa.int32()),
        pa.array([layer.node for layer in rows], pa.string()),
        pa.array([layer.exponent for layer in rows], pa.int32()),
        int64_lists([layer.fp32 for layer in rows]),
        int64_lists([layer.int8 for layer in rows]),
        pa.array([layer.positions for layer in rows], pa.int64()),
    ]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_arrays(columns, schema=PARTIAL_SUMS_SCHEMA), sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def merge_partial_sums(paths: Sequence[str], run_id: str, table_sha256: str) -> dict[str, LayerSums]:
    """Every layer's sums over all shards, by node name."""
    merged: dict[str, LayerSums] = {}
    shards: dict[int, str] = {}
    for path in sorted(paths):
        table = _read(path)
        for column, expected in (("run_id", run_id), ("table_sha256", table_sha256)):
            found = set(table.column(column).to_pylist())
            if found != {expected}:
                raise PartialSumsFileError(
                    f"{path}: bias-correction sums of {column} {sorted(found)!r}, not {expected!r}; they "
                    "belong to another run or another table of thresholds: run the bias-correction stage again"
                )
        shard = table.column("shard")[0].as_py()
        if shard in shards:
            raise PartialSumsFileError(f"{path}: shard {shard} is also in {shards[shard]}; delete one of them")
        shards[shard] = path
        for row in table.to_pylist():
            layer = LayerSums(
                row["node"],
                row["exponent"],
                np.asarray(row["fp32_sums"], dtype=np.int64),
                np.asarray(row["int8_sums"], dtype=np.int64),
                row["positions"],
            )
            merged[layer.node] = merged[layer.node].merge(layer) if layer.node in merged else layer
    return merged


def _read(path: str) -> pa.Table:
    try:
        fs, fs_path = url_to_fs(path)
        with fs.open(fs_path, "rb") as file:
            table = pq.read_table(file)
    except FileNotFoundError:
        raise PartialSumsFileError(f"{path}: bias-correction sums not found; run the bias-correction stage") from None
    except (OSError, pa.ArrowException) as error:
        raise PartialSumsFileError(
            f"{path}: not a readable Parquet file ({error}); delete it and run the bias-correction stage again"
        ) from None
    try:
        if table.schema.metadata != PARTIAL_SUMS_SCHEMA.metadata or table.schema.names != PARTIAL_SUMS_SCHEMA.names:
            raise ValueError("another format")
        return table.cast(PARTIAL_SUMS_SCHEMA)
    except (ValueError, pa.ArrowException):
        raise PartialSumsFileError(
            f"{path}: not an int8flow bias-correction sums file of format version {FORMAT_VERSION.decode()}; "
            "run the bias-correction stage again with this int8flow"
        ) from None

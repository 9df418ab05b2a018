"""The data contract of a partial-histogram Parquet file: one row per tensor of one shard.

Shards are calibrated by separate workers, possibly on separate days, and merged later by a step
that only sees the files. Everything the merge needs to trust a file is therefore in the file: the
format version, the model fingerprint and the bin count. Checking them here, once, turns a silent
mix of incompatible partials (another model, another ``--num-bins``) into an error that names the
file and says what to do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NoReturn

import pyarrow as pa
import pyarrow.compute as pc

FORMAT_KEY = b"int8flow.format"
FORMAT_NAME = b"partial-histograms"
FORMAT_VERSION_KEY = b"int8flow.format_version"
FORMAT_VERSION = b"1"

PARTIAL_HISTOGRAM_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("tensor", pa.string(), nullable=False),
        pa.field("signed", pa.bool_(), nullable=False),
        pa.field("num_bins", pa.int32(), nullable=False),
        pa.field("exponent", pa.int32(), nullable=False),
        pa.field("counts", pa.list_(pa.int64()), nullable=False),
        pa.field("min", pa.float64(), nullable=False),
        pa.field("max", pa.float64(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ],
    metadata={FORMAT_KEY: FORMAT_NAME, FORMAT_VERSION_KEY: FORMAT_VERSION},
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class PartialHistogramFileError(ValueError):
    """A partial-histogram file is missing, unreadable, or breaks the contract of this module."""


def validate_partial_table(
    table: pa.Table,
    source: str,
    expected_model_sha256: str | None = None,
    expected_num_bins: int | None = None,
) -> None:
    """Raise ``PartialHistogramFileError`` naming ``source`` if ``table`` breaks the contract.

    A file holds one shard of one run of one model at one bin count, so ``run_id``,
    ``model_sha256``, ``shard`` and ``num_bins`` are the same on every row.
    """

    def fail(problem: str) -> NoReturn:
        raise PartialHistogramFileError(f"{source}: {problem}")

    _check_format(table.schema, fail)
    _check_columns(table.schema, fail)
    for name in PARTIAL_HISTOGRAM_SCHEMA.names:
        if table.column(name).null_count:
            fail(f"column {name!r} holds nulls; every field of a partial histogram is required")
    if pc.list_flatten(table.column("counts")).null_count:
        fail("column 'counts' holds null bin counts; every bin count is required")
    if table.num_rows == 0:
        fail("holds no histograms; a shard writes one row per calibrated tensor: recalibrate it")
    for name in ("run_id", "model_sha256", "shard", "num_bins"):
        values = pc.unique(table.column(name)).to_pylist()
        if len(values) > 1:
            fail(
                f"column {name!r} holds {len(values)} different values {sorted(values)!r}; every "
                "row of a partial-histogram file comes from one run, model, shard and --num-bins: "
                "write one file per shard"
            )
    fingerprint = table.column("model_sha256")[0].as_py()
    if not _SHA256_HEX.fullmatch(fingerprint):
        fail(
            f"model fingerprint {fingerprint!r} is not a sha256 (64 lowercase hex digits); "
            "rewrite the file with hashlib.sha256(model_bytes).hexdigest()"
        )
    if expected_model_sha256 is not None and fingerprint != expected_model_sha256:
        fail(
            f"partial histograms of model {fingerprint} but model {expected_model_sha256} was "
            "expected; partials of another model must not be mixed: use a fresh histogram "
            "directory for each model"
        )

    tensors = table.column("tensor").to_pylist()
    num_bins = table.column("num_bins").to_pylist()
    lengths = pc.list_value_length(table.column("counts")).to_pylist()
    seen: set[str] = set()
    for tensor, bins, length in zip(tensors, num_bins, lengths, strict=True):
        if tensor in seen:
            fail(f"tensor {tensor!r} appears twice; a shard holds one histogram per tensor")
        seen.add(tensor)
        if expected_num_bins is not None and bins != expected_num_bins:
            fail(
                f"tensor {tensor!r} has {bins} bins but {expected_num_bins} were expected; "
                "recalibrate every shard with the same --num-bins"
            )
        if length != bins:
            fail(
                f"tensor {tensor!r} has {length} counts but num_bins={bins}; the file is corrupt: "
                "delete it and recalibrate its shard"
            )


def _check_format(schema: pa.Schema, fail: Callable[[str], NoReturn]) -> None:
    """Reject files that are not partial histograms, or of a version this code cannot read."""
    metadata = schema.metadata or {}
    if metadata.get(FORMAT_KEY) != FORMAT_NAME:
        fail(
            f"not an int8flow partial-histogram file (schema metadata {FORMAT_KEY.decode()!r} is "
            f"{_decoded(metadata.get(FORMAT_KEY))}, expected {FORMAT_NAME.decode()!r}); keep only "
            "partial-histogram files in the histogram directory"
        )
    version = metadata.get(FORMAT_VERSION_KEY)
    if version != FORMAT_VERSION:
        fail(
            f"partial-histogram format version {_decoded(version)} but this int8flow reads version "
            f"{FORMAT_VERSION.decode()!r}; recalibrate the shards with this int8flow version"
        )


def _check_columns(schema: pa.Schema, fail: Callable[[str], NoReturn]) -> None:
    """Name the first column that is missing, unexpected or of the wrong type."""
    remedy = f"recalibrate the shard to rewrite it in partial-histogram format {FORMAT_VERSION.decode()}"
    for expected in PARTIAL_HISTOGRAM_SCHEMA:
        index = schema.get_field_index(expected.name)
        if index < 0:
            fail(f"missing column {expected.name!r} ({expected.type}); {remedy}")
        found = schema.field(index).type
        if not found.equals(expected.type):
            fail(f"column {expected.name!r} has type {found}, expected {expected.type}; {remedy}")
    extra = [name for name in schema.names if name not in PARTIAL_HISTOGRAM_SCHEMA.names]
    if extra:
        fail(f"unexpected columns {extra!r}; {remedy}")


def _decoded(value: bytes | None) -> str:
    return "missing" if value is None else repr(value.decode(errors="replace"))

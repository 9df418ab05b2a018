"""The partial-histogram file contract: what a valid table is, and each way a table is refused."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from int8flow.schemas.partial_histograms import (
    PARTIAL_HISTOGRAM_SCHEMA,
    PartialHistogramFileError,
    validate_partial_table,
)

SOURCE = "hist/shard-00003.parquet"
MODEL = hashlib.sha256(b"model one").hexdigest()
OTHER_MODEL = hashlib.sha256(b"model two").hexdigest()


def _columns(**overrides: list) -> dict[str, list]:
    """Two valid rows (16 bins each), with some columns replaced."""
    columns = {
        "run_id": ["run-1", "run-1"],
        "model_sha256": [MODEL, MODEL],
        "shard": [3, 3],
        "tensor": ["conv1:0", "relu1:0"],
        "signed": [True, False],
        "num_bins": [16, 16],
        "exponent": [2, -1100],
        "counts": [[1] * 16, [0] * 16],
        "min": [-3.5, float("inf")],
        "max": [2.25, float("-inf")],
        "count": [16, 0],
    }
    columns.update(overrides)
    return columns


def _table(**overrides: list) -> pa.Table:
    return pa.Table.from_pydict(_columns(**overrides), schema=PARTIAL_HISTOGRAM_SCHEMA)


def _rejection(table: pa.Table, **expectations: object) -> str:
    with pytest.raises(PartialHistogramFileError) as raised:
        validate_partial_table(table, SOURCE, **expectations)
    message = str(raised.value)
    assert message.startswith(f"{SOURCE}: ")
    assert "\n" not in message
    return message


def test_schema_fields_in_contract_order() -> None:
    assert PARTIAL_HISTOGRAM_SCHEMA.names == [
        "run_id",
        "model_sha256",
        "shard",
        "tensor",
        "signed",
        "num_bins",
        "exponent",
        "counts",
        "min",
        "max",
        "count",
    ]
    assert not any(field.nullable for field in PARTIAL_HISTOGRAM_SCHEMA)
    assert PARTIAL_HISTOGRAM_SCHEMA.field("counts").type == pa.list_(pa.int64())


def test_schema_metadata_names_format_and_version() -> None:
    assert PARTIAL_HISTOGRAM_SCHEMA.metadata == {
        b"int8flow.format": b"partial-histograms",
        b"int8flow.format_version": b"1",
    }


def test_valid_table_passes_with_matching_expectations() -> None:
    assert validate_partial_table(_table(), SOURCE, MODEL, 16) is None


def test_missing_column_is_named() -> None:
    table = _table().drop_columns(["exponent"])
    assert "missing column 'exponent' (int32)" in _rejection(table)


def test_mismatched_column_type_is_named() -> None:
    table = _table()
    table = table.set_column(2, pa.field("shard", pa.int64(), nullable=False), pa.array([3, 3], pa.int64()))
    assert "column 'shard' has type int64, expected int32" in _rejection(table)


def test_unexpected_column_is_named() -> None:
    table = _table().append_column("note", pa.array(["a", "b"]))
    assert "unexpected columns ['note']" in _rejection(table)


def test_missing_format_metadata_is_refused() -> None:
    table = _table().replace_schema_metadata(None)
    message = _rejection(table)
    assert "not an int8flow partial-histogram file" in message
    assert "'int8flow.format' is missing" in message


def test_other_format_version_is_refused() -> None:
    metadata = {b"int8flow.format": b"partial-histograms", b"int8flow.format_version": b"2"}
    message = _rejection(_table().replace_schema_metadata(metadata))
    assert "format version '2' but this int8flow reads version '1'" in message


def test_other_model_fingerprint_names_both_and_the_remedy() -> None:
    message = _rejection(_table(), expected_model_sha256=OTHER_MODEL)
    assert f"partial histograms of model {MODEL} but model {OTHER_MODEL} was expected" in message
    assert "must not be mixed" in message
    assert "fresh histogram directory" in message


def test_fingerprint_that_is_not_a_sha256_is_refused() -> None:
    message = _rejection(_table(model_sha256=["ABC", "ABC"]))
    assert "model fingerprint 'ABC' is not a sha256" in message


def test_other_bin_count_names_tensor_and_remedy() -> None:
    message = _rejection(_table(), expected_num_bins=8192)
    assert "tensor 'conv1:0' has 16 bins but 8192 were expected" in message
    assert "same --num-bins" in message


def test_counts_length_must_equal_num_bins() -> None:
    message = _rejection(_table(counts=[[1] * 16, [0] * 15]))
    assert "tensor 'relu1:0' has 15 counts but num_bins=16" in message


def test_tensor_twice_in_one_file_is_refused() -> None:
    message = _rejection(_table(tensor=["conv1:0", "conv1:0"]))
    assert "tensor 'conv1:0' appears twice" in message


def test_rows_of_two_shards_in_one_file_are_refused() -> None:
    message = _rejection(_table(shard=[3, 4]))
    assert "column 'shard' holds 2 different values [3, 4]" in message


def test_rows_of_two_bin_counts_in_one_file_are_refused() -> None:
    message = _rejection(_table(num_bins=[16, 32], counts=[[1] * 16, [0] * 32]))
    assert "column 'num_bins' holds 2 different values [16, 32]" in message


def test_null_values_are_refused() -> None:
    nullable = pa.schema(
        [field.with_nullable(True) for field in PARTIAL_HISTOGRAM_SCHEMA],
        metadata=PARTIAL_HISTOGRAM_SCHEMA.metadata,
    )
    table = pa.Table.from_pydict(_columns(min=[None, 1.0]), schema=nullable)
    assert "column 'min' holds nulls" in _rejection(table)


def test_null_bin_counts_are_refused() -> None:
    table = _table(counts=[[1] * 15 + [None], [0] * 16])
    assert "column 'counts' holds null bin counts" in _rejection(table)


def test_empty_table_is_refused() -> None:
    table = PARTIAL_HISTOGRAM_SCHEMA.empty_table()
    assert "holds no histograms" in _rejection(table)

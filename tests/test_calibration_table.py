"""The calibration table: exact JSON round-trips, the TensorRT cache encoding, strict parsing."""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import pytest

from int8flow.schemas.calibration_table import (
    INT8_MAX,
    CalibrationTable,
    CalibrationTableError,
    TensorCalibration,
)

CACHE = "calib/model.cache"
JSON_SOURCE = "calib/model.json"


def _float32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


def _table() -> CalibrationTable:
    return CalibrationTable(
        (
            TensorCalibration("input", "entropy", 2.640000104904175, True, 0.0123456789),
            TensorCalibration("conv1/relu:0", "percentile", 0.1 + 0.2, False, 1e-300),
            TensorCalibration("fc/out", "mse", 1.7976931348623157e308, True, 0.0),
        ),
        {"model_sha256": "ab" * 32, "num_bins": "8192"},
    )


def _cache_rejection(text: str) -> str:
    with pytest.raises(CalibrationTableError) as raised:
        CalibrationTable.from_tensorrt_cache(text, CACHE)
    return str(raised.value)


def _json_rejection(text: str) -> str:
    with pytest.raises(CalibrationTableError) as raised:
        CalibrationTable.from_json(text, JSON_SOURCE)
    return str(raised.value)


def test_scale_is_threshold_over_127() -> None:
    assert INT8_MAX == 127
    assert TensorCalibration("x", "naive", 254.0, True, math.nan).scale == 2.0


def test_integer_threshold_is_stored_as_float() -> None:
    tensor = TensorCalibration("x", "naive", 3, True, math.nan)
    assert type(tensor.threshold) is float
    assert tensor.threshold == 3.0


def test_by_name_maps_names_to_tensors() -> None:
    table = _table()
    assert table.by_name()["fc/out"] is table.tensors[2]
    assert list(table.by_name()) == ["input", "conv1/relu:0", "fc/out"]


def test_json_round_trip_is_exact() -> None:
    table = _table()
    assert CalibrationTable.from_json(table.to_json(), JSON_SOURCE) == table


def test_json_keeps_a_fixed_key_order_and_format_fields() -> None:
    document = json.loads(_table().to_json())
    assert list(document) == ["format", "format_version", "metadata", "tensors"]
    assert document["format"] == "int8flow.calibration-table"
    assert document["format_version"] == 1
    assert list(document["tensors"][0]) == ["name", "method", "threshold", "signed", "divergence"]


def test_bias_corrections_round_trip_exactly_and_sorted_by_node() -> None:
    corrections = {"conv2": (0.1 + 0.2, -3.5e-7), "conv1": (1.0,)}
    table = dataclasses.replace(_table(), bias_corrections=corrections)
    document = json.loads(table.to_json())
    assert list(document["bias_corrections"]) == ["conv1", "conv2"]
    assert CalibrationTable.from_json(table.to_json(), JSON_SOURCE) == table
    assert "bias_corrections" not in json.loads(_table().to_json())  # a table without them is as before


@pytest.mark.parametrize("shifts", [[], [float("nan")], ["1.0"], 3.0])
def test_malformed_bias_corrections_name_the_file_and_node(shifts: object) -> None:
    document = json.loads(_table().to_json())
    document["bias_corrections"] = {"conv7": shifts}
    text = json.dumps(document).replace("NaN", "null")
    message = _json_rejection(text)
    assert message.startswith(f"{JSON_SOURCE}: bias correction of node 'conv7'")


def test_json_sorts_metadata_so_equal_tables_give_equal_text() -> None:
    tensors = _table().tensors
    one = CalibrationTable(tensors, {"b": "2", "a": "1"})
    two = CalibrationTable(tensors, {"a": "1", "b": "2"})
    assert one.to_json() == two.to_json()


def test_nan_divergence_is_null_in_json_and_nan_when_read() -> None:
    table = CalibrationTable((TensorCalibration("x", "naive", 6.0, False, math.nan),))
    assert json.loads(table.to_json())["tensors"][0]["divergence"] is None
    read = CalibrationTable.from_json(table.to_json(), JSON_SOURCE).tensors[0]
    assert math.isnan(read.divergence)
    assert (read.name, read.method, read.threshold, read.signed) == ("x", "naive", 6.0, False)


def test_cache_encodes_scale_as_big_endian_float32_hex() -> None:
    table = CalibrationTable(
        (
            TensorCalibration("conv1", "entropy", 127.0, True, 0.5),
            TensorCalibration("relu", "entropy", 254.0, False, 0.5),
        )
    )
    assert table.to_tensorrt_cache() == ("TRT-8601-EntropyCalibration2\nconv1: 3f800000\nrelu: 40000000\n")


def test_cache_uses_the_given_version_tag() -> None:
    table = CalibrationTable((TensorCalibration("x", "naive", 127.0, True, math.nan),))
    assert table.to_tensorrt_cache("TRT-100300-EntropyCalibration2").splitlines()[0] == (
        "TRT-100300-EntropyCalibration2"
    )


def test_cache_refuses_a_malformed_version_tag() -> None:
    table = CalibrationTable((TensorCalibration("x", "naive", 127.0, True, math.nan),))
    with pytest.raises(CalibrationTableError, match=r"version tag 'TensorRT 8\.6'"):
        table.to_tensorrt_cache("TensorRT 8.6")


def test_cache_refuses_a_scale_outside_float32() -> None:
    table = CalibrationTable((TensorCalibration("huge", "naive", 1e300, True, math.nan),))
    with pytest.raises(CalibrationTableError, match="tensor 'huge': scale"):
        table.to_tensorrt_cache()


def test_cache_read_gives_float32_scale_times_127() -> None:
    text = "TRT-8601-EntropyCalibration2\nconv1: 3f800000\ninput: 3c010a14\n"
    table = CalibrationTable.from_tensorrt_cache(text, CACHE)
    conv1, image = table.tensors
    assert (conv1.name, conv1.method, conv1.threshold, conv1.signed) == (
        "conv1",
        "EntropyCalibration2",
        127.0,
        True,
    )
    assert math.isnan(conv1.divergence)
    assert image.threshold == struct.unpack(">f", bytes.fromhex("3c010a14"))[0] * 127


def test_cache_round_trip_keeps_scales_exact_in_float32() -> None:
    thresholds = [0.1 + 0.2, 2.640000104904175, 1e-30, 3.0e38]
    table = CalibrationTable(
        tuple(TensorCalibration(f"t{i}", "entropy", t, True, 0.0) for i, t in enumerate(thresholds))
    )
    read = CalibrationTable.from_tensorrt_cache(table.to_tensorrt_cache(), CACHE)
    assert [tensor.name for tensor in read.tensors] == ["t0", "t1", "t2", "t3"]
    assert [_float32(tensor.scale) for tensor in read.tensors] == [_float32(t / 127) for t in thresholds]


def test_cache_text_round_trips_byte_for_byte() -> None:
    text = "TRT-8601-EntropyCalibration2\ninput: 3c010a14\nconv1: 3d2f1a0b\n"
    assert CalibrationTable.from_tensorrt_cache(text, CACHE).to_tensorrt_cache() == text


def test_cache_names_may_contain_colon_space() -> None:
    text = "TRT-8601-EntropyCalibration2\nblock: 1: out:0: 3f800000\n"
    assert CalibrationTable.from_tensorrt_cache(text, CACHE).tensors[0].name == "block: 1: out:0"


def test_cache_method_comes_from_the_header() -> None:
    text = "TRT-7000-MinMaxCalibration\nx: 3f800000\n"
    assert CalibrationTable.from_tensorrt_cache(text, CACHE).tensors[0].method == "MinMaxCalibration"


def test_cache_with_bad_header_names_file_and_line() -> None:
    message = _cache_rejection("TensorRT cache\nx: 3f800000\n")
    assert message.startswith(f"{CACHE}, line 1: header 'TensorRT cache'")


def test_empty_cache_is_refused() -> None:
    assert _cache_rejection("").startswith(f"{CACHE}, line 1: header ''")


def test_cache_with_bad_hex_names_file_and_line() -> None:
    message = _cache_rejection("TRT-8601-EntropyCalibration2\nx: 3f800000\ny: 3f80zz00\n")
    assert message.startswith(f"{CACHE}, line 3: 'y: 3f80zz00' is not 'name: <8 hex digits>'")


def test_cache_line_without_separator_is_refused() -> None:
    message = _cache_rejection("TRT-8601-EntropyCalibration2\nx 3f800000\n")
    assert message.startswith(f"{CACHE}, line 2: 'x 3f800000'")


@pytest.mark.parametrize(
    "scale_hex",
    ["bf800000", "00000000", "7f800000", "7fc00000"],
    ids=["negative", "zero", "inf", "nan"],
)
def test_cache_with_non_positive_or_non_finite_scale_names_line_and_tensor(scale_hex: str) -> None:
    message = _cache_rejection(f"TRT-8601-EntropyCalibration2\nconv1: {scale_hex}\n")
    assert message.startswith(f"{CACHE}, line 2: tensor 'conv1': threshold ")
    assert "must be a finite number > 0" in message


def test_cache_with_tensor_twice_names_both_lines() -> None:
    message = _cache_rejection("TRT-8601-EntropyCalibration2\nx: 3f800000\ny: 3f800000\nx: 40000000\n")
    assert message.startswith(f"{CACHE}, line 4: tensor 'x' appears again (first on line 2)")


def test_bad_json_names_the_file() -> None:
    assert _json_rejection("{not json").startswith(f"{JSON_SOURCE}: not valid JSON")


def test_json_nan_literal_is_refused() -> None:
    text = _table().to_json().replace("0.0123456789", "NaN")
    assert _json_rejection(text).startswith(f"{JSON_SOURCE}: not valid JSON (NaN is not valid JSON")


def test_json_of_another_format_is_refused() -> None:
    document = json.loads(_table().to_json())
    document["format"] = "something-else"
    assert "format 'something-else' is not 'int8flow.calibration-table'" in _json_rejection(json.dumps(document))


def test_json_of_another_version_is_refused() -> None:
    document = json.loads(_table().to_json())
    document["format_version"] = 2
    assert "format version 2 but this int8flow reads version 1" in _json_rejection(json.dumps(document))


def test_json_missing_key_names_tensor_and_key() -> None:
    document = json.loads(_table().to_json())
    del document["tensors"][1]["threshold"]
    message = _json_rejection(json.dumps(document))
    assert message.startswith(f"{JSON_SOURCE}: tensor #1: missing keys ['threshold']")


def test_json_negative_threshold_names_tensor() -> None:
    document = json.loads(_table().to_json())
    document["tensors"][0]["threshold"] = -1.0
    message = _json_rejection(json.dumps(document))
    assert message.startswith(f"{JSON_SOURCE}: tensor #0: tensor 'input': threshold -1.0 must be")


def test_json_duplicate_names_are_refused() -> None:
    document = json.loads(_table().to_json())
    document["tensors"][2]["name"] = "input"
    assert _json_rejection(json.dumps(document)) == (
        f"{JSON_SOURCE}: tensor 'input' appears twice; a table holds one threshold per tensor"
    )


@pytest.mark.parametrize("threshold", [0.0, -2.0, math.inf, math.nan, True, "1.0"])
def test_construction_refuses_thresholds_that_are_not_finite_positive_numbers(
    threshold: object,
) -> None:
    with pytest.raises(CalibrationTableError, match=r"tensor 'x': threshold .* must be a finite number > 0"):
        TensorCalibration("x", "entropy", threshold, True, 0.1)  # type: ignore[arg-type]


def test_construction_refuses_infinite_divergence() -> None:
    with pytest.raises(CalibrationTableError, match="tensor 'x': divergence inf"):
        TensorCalibration("x", "kl", 1.0, True, math.inf)


def test_construction_refuses_duplicate_names() -> None:
    tensor = TensorCalibration("x", "naive", 1.0, True, math.nan)
    with pytest.raises(CalibrationTableError, match="tensor 'x' appears twice"):
        CalibrationTable((tensor, tensor))


def test_construction_refuses_names_with_line_breaks() -> None:
    with pytest.raises(CalibrationTableError, match="without line breaks"):
        TensorCalibration("a\nb", "naive", 1.0, True, math.nan)

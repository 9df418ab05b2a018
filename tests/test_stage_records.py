"""Stage records: typed, round-tripped exactly, and a file that does not match its record is refused."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from int8flow.schemas.run_folder import RESULT_NAMES, STAGE_DIR, partial_file_name, stage_record_name
from int8flow.schemas.stage_records import (
    Accuracy,
    BuildRecord,
    ClusterRecord,
    GateAttempt,
    GateRecord,
    NodeSensitivity,
    ObserveRecord,
    StageRecordError,
    TensorError,
    ThresholdsRecord,
    ValidateRecord,
)

ACCURACY = Accuracy(
    examples=2000,
    skipped=1,
    fp32_top1=92.05,
    fp32_top5=99.8,
    int8_top1=91.9,
    int8_top5=99.75,
    agreement_top1=99.1,
    gemm_fallbacks=0,
    deploy_runtime="onnxruntime",
    deploy_int8_top1=91.5,
    deploy_int8_top5=99.7,
    deploy_agreement_top1=99.6,
)
RECORDS = [
    ClusterRecord("tcp://127.0.0.1:8786", None, 2, "LocalCluster"),
    ObserveRecord(3.5, 512, 146.3, 4, 2, ("a.png", "b.png")),
    ThresholdsRecord(0.25, 1.5, 17, ("plots/histogram-x.png",), (TensorError("x", 0.0125),)),
    BuildRecord(0.5, "out/model.int8.onnx", ("conv1",)),
    ValidateRecord(7.0, 285.7, ACCURACY),
    GateRecord(
        seconds=4.0,
        max_top1_drop=0.5,
        passed=True,
        attempts=(GateAttempt((), ACCURACY, False), GateAttempt(("conv1",), ACCURACY, True)),
        final_excluded=("conv1",),
        final_accuracy=ACCURACY,
        sensitivity=(NodeSensitivity("conv1", "Conv", 0.01), NodeSensitivity("fc", "Gemm", 1e-5)),
        plots=("plots/sensitivity.png",),
    ),
    GateRecord(0.0, None, True, (), (), None, (), ()),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: type(record).__name__)
def test_records_round_trip_exactly(record: object) -> None:
    kind = type(record)
    assert kind.from_json(record.to_json(), "x.json") == record  # type: ignore[attr-defined]


def test_integral_seconds_read_back_as_floats() -> None:
    record = BuildRecord.from_json(json.dumps({"seconds": 2, "path": "m.onnx", "excluded": []}), "build.json")
    assert isinstance(record.seconds, float) and record.excluded == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"seconds": 1.0, "path": "m.onnx"}', "'excluded'"),
        ('{"seconds": 1.0, "path": "m.onnx", "excluded": [], "reduce_seconds": 2.0}', "unknown field"),
        ('{"seconds": "fast", "path": "m.onnx", "excluded": []}', "expected float"),
        ("[1, 2]", "expected an object"),
    ],
)
def test_a_file_that_is_not_the_record_is_refused_naming_it(text: str, problem: str) -> None:
    with pytest.raises(StageRecordError, match=rf"stages/build\.json: not a build stage record .*{problem}"):
        BuildRecord.from_json(text, "stages/build.json")


def test_accuracy_drops_are_derived_not_stored() -> None:
    assert math.isclose(ACCURACY.top1_drop, 0.15) and math.isclose(ACCURACY.top5_drop, 0.05)
    assert "top1_drop" not in json.loads(ValidateRecord(1.0, 1.0, ACCURACY).to_json())["accuracy"]


def test_every_stage_record_lives_in_a_folder_the_run_owns() -> None:
    stages = {
        kind.STAGE for kind in (ClusterRecord, ObserveRecord, ThresholdsRecord, BuildRecord, ValidateRecord, GateRecord)
    }
    assert len(stages) == 6
    assert {stage_record_name(stage).split("/")[0] for stage in stages} == {STAGE_DIR} and STAGE_DIR in RESULT_NAMES
    assert partial_file_name(3) == "shard=00003.parquet"


def test_the_gate_takes_the_worse_drop_and_says_whose_it_is() -> None:
    assert ACCURACY.gate_top1_drop == pytest.approx(92.05 - 91.5) and ACCURACY.gate_decided_by == "onnxruntime"
    better_deployed = replace(ACCURACY, deploy_int8_top1=92.0)
    assert better_deployed.gate_top1_drop == pytest.approx(92.05 - 91.9)
    assert better_deployed.gate_decided_by == "int8flow"
    unchecked = replace(
        ACCURACY, deploy_runtime="none", deploy_int8_top1=None, deploy_int8_top5=None, deploy_agreement_top1=None
    )
    assert unchecked.gate_top1_drop == unchecked.top1_drop and unchecked.gate_decided_by == "int8flow"
    assert "deploy_int8_top1" not in unchecked.summary()
    assert ACCURACY.summary()["deploy_top1_drop"] == pytest.approx(92.05 - 91.5)

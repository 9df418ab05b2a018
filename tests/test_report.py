"""The run report: report.json, report.md, the CLI summary and the PNG plots of a finished run."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from int8flow.kernels.histogram import Histogram
from int8flow.schemas.calibration_table import CalibrationTable, TensorCalibration
from int8flow.tasks.outputs.atomic_files import TEMP_MARKER
from int8flow.tasks.outputs.plots import plot_sensitivity, plot_tensor_histograms, plot_tensor_overview, plot_tensors
from int8flow.tasks.outputs.report import render_markdown, summary_rows, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUM_BINS = 2048


def full_report() -> dict[str, Any]:
    return {
        "model": {
            "uri": "s3://models/resnet50-v1.onnx",
            "sha256": "ab12" * 16,
            "registered_name": "resnet50-int8",
            "registered_version": 3,
        },
        "data": {
            "calibration": {"uri": "s3://data/cal", "fingerprint": "f00d", "examples": 1024, "skipped_images": 2},
            "validation": {"uri": "s3://data/val", "fingerprint": "beef", "examples": 50000, "skipped_images": 0},
        },
        "settings": {"method": "entropy", "num_bins": 8192, "percentile": 99.99, "spike_fix": True, "shards": 4},
        "accuracy": {
            "examples": 50000,
            "fp32_top1": 76.13,
            "int8_top1": 75.705,
            "top1_drop": 0.425,
            "fp32_top5": 92.862,
            "int8_top5": 92.9,
            "top5_drop": -0.038,
            "agreement_top1": 97.4,
        },
        "stages": {
            "validate": {"seconds": 301.7, "examples": 50000, "examples_per_second": 165.73},
            "observe": {"seconds": 12.345, "examples": 1024, "examples_per_second": 82.95},
            "reduce": {"seconds": 0.5},
            "thresholds": {"seconds": 2.25},
            "gate": {"seconds": 0.0123},
        },
        "cluster": {
            "kind": "external",
            "scheduler": "tcp://10.0.0.1:8786",
            "dashboard": "http://10.0.0.1:8787/status",
            "workers": 4,
            "shards": 16,
            "device": "cuda",
        },
        "gate": {
            "max_top1_drop": 0.5,
            "passed": True,
            "attempts": [
                {"excluded": [], "int8_top1": 75.1, "top1_drop": 1.03, "passed": False},
                {"excluded": ["conv1", "fc|head"], "int8_top1": 75.705, "top1_drop": 0.425, "passed": True},
            ],
        },
        "sensitivity": [
            {"node": f"layer{index}/conv", "op_type": "Conv", "error": 1.0 / (index + 1)} for index in range(12)
        ],
        "tensors": [
            {
                "name": "a",
                "method": "entropy",
                "threshold": 1.23456789,
                "divergence": 0.02,
                "error": 0.001,
                "signed": True,
            },
            {"name": "b", "method": "percentile", "threshold": 6.0, "divergence": None, "error": 0.02, "signed": False},
            {
                "name": "c",
                "method": "mse",
                "threshold": 0.000123456789,
                "divergence": 0.5,
                "error": 5e-4,
                "signed": False,
            },
            {"name": "d", "method": "entropy", "threshold": 3.5, "divergence": 0.02, "error": 0.004, "signed": True},
        ],
        "plots": ["plots/sensitivity.png", "plots/histogram-c-0123456789.png"],
        "int8flow_version": "0.1.0",
        "started": "2026-01-02T03:04:05+00:00",
        "finished": "2026-01-02T03:10:00+00:00",
    }


def no_temporaries(root: Path) -> bool:
    return not [path for path in root.rglob("*") if TEMP_MARKER in path.name]


def test_report_json_round_trips_exactly(tmp_path: Path) -> None:
    report = full_report()
    json_path, md_path = write_report(str(tmp_path), report)
    assert (json_path, md_path) == (f"{tmp_path}/report.json", f"{tmp_path}/report.md")
    with open(json_path, encoding="utf-8") as file:
        assert json.load(file) == report
    assert Path(json_path).read_text() == json.dumps(report, sort_keys=True, indent=2) + "\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json", "report.md"]


def test_report_json_writes_nan_as_null(tmp_path: Path) -> None:
    report = {"tensors": [{"name": "a", "threshold": 1.0, "divergence": math.nan, "signed": True}]}
    json_path, _ = write_report(str(tmp_path), report)
    assert json.loads(Path(json_path).read_text()) == {
        "tensors": [{"name": "a", "threshold": 1.0, "divergence": None, "signed": True}]
    }


def test_report_json_rejects_infinity_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_report(str(tmp_path), {"accuracy": {"top1_drop": math.inf}})
    assert list(tmp_path.iterdir()) == []


def test_write_report_replaces_previous_report_without_temporaries(tmp_path: Path) -> None:
    write_report(str(tmp_path), {"int8flow_version": "0.0.1"})
    write_report(str(tmp_path), full_report())
    assert json.loads((tmp_path / "report.json").read_text())["int8flow_version"] == "0.1.0"
    assert no_temporaries(tmp_path)


def test_markdown_title_and_run_line() -> None:
    lines = render_markdown(full_report()).splitlines()
    assert lines[0] == "# INT8 calibration report: resnet50-int8 v3"
    assert lines[2] == "int8flow 0.1.0, started 2026-01-02T03:04:05+00:00, finished 2026-01-02T03:10:00+00:00"


def test_markdown_title_falls_back_to_the_model_file_name() -> None:
    markdown = render_markdown({"model": {"uri": "s3://models/resnet50-v1.onnx"}})
    assert markdown.splitlines()[0] == "# INT8 calibration report: resnet50-v1.onnx"


def test_markdown_model_and_data() -> None:
    markdown = render_markdown(full_report())
    assert "- source: `s3://models/resnet50-v1.onnx`\n" in markdown
    assert f"- SHA-256: `{'ab12' * 16}`\n" in markdown
    assert "- registered as `resnet50-int8` version 3\n" in markdown
    assert (
        "|  | calibration | validation |\n"
        "| --- | --- | --- |\n"
        "| source | `s3://data/cal` | `s3://data/val` |\n"
        "| fingerprint | `f00d` | `beef` |\n"
        "| examples | 1,024 | 50,000 |\n"
        "| skipped images | 2 | 0 |\n"
    ) in markdown


def test_markdown_accuracy_table_has_two_decimals() -> None:
    markdown = render_markdown(full_report())
    assert (
        "## Accuracy\n\n"
        "|  | FP32 | INT8 | drop (points) |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| top-1 | 76.13% | 75.70% | 0.42 |\n"
        "| top-5 | 92.86% | 92.90% | -0.04 |\n\n"
        "Top-1 agreement of FP32 and INT8: 97.40%.\n\n"
        "Validation examples: 50,000.\n"
    ) in markdown


def deployed_report() -> dict:
    report = full_report()
    report["accuracy"].update(
        {"deploy_int8_top1": 75.2, "deploy_int8_top5": 92.5, "deploy_top1_drop": 0.93, "deploy_agreement_top1": 99.5}
    )
    report["gate"].update({"deploy_runtime": "onnxruntime", "decided_by": "onnxruntime"})
    report["gate"]["attempts"][1]["deploy_int8_top1"] = 75.2
    return report


def test_markdown_accuracy_shows_the_deployed_model_beside_int8flow() -> None:
    markdown = render_markdown(deployed_report())
    assert (
        "|  | FP32 | INT8 | drop (points) | INT8 in onnxruntime | drop in onnxruntime |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: |\n"
        "| top-1 | 76.13% | 75.70% | 0.42 | 75.20% | 0.93 |\n"
    ) in markdown
    assert "`model.int8.onnx` in onnxruntime is what users deploy. Their top-1 agreement: 99.50%." in markdown
    report = deployed_report()
    report["settings"].update({"signed_storage": "uint8", "unsigned_activations": True})
    assert (
        "`model.int8.onnx` in onnxruntime is what users deploy (signed activations stored as uint8 at zero point "
        "128, non-negative ones as uint8). Their top-1 agreement: 99.50%."
    ) in render_markdown(report)
    report["settings"].update({"signed_storage": "int8", "unsigned_activations": False})
    assert "(signed activations stored as int8 at zero point 0, every tensor signed)" in render_markdown(report)
    assert "The drop compared is onnxruntime's, the worse of the two." in markdown
    assert "| 2 | `conv1`, `fc\\|head` | 75.70% | 75.20% | 0.42 | passed |\n" in markdown
    assert ("INT8 top-1 deployed", "75.20%") in summary_rows(deployed_report())


def test_markdown_gate_lists_every_attempt() -> None:
    markdown = render_markdown(full_report())
    assert "**passed (2 attempts)**: maximum top-1 drop 0.50 points.\n" in markdown
    assert (
        "| attempt | kept in FP32 | INT8 top-1 | deployed top-1 | top-1 drop | result |\n"
        "| ---: | --- | ---: | ---: | ---: | --- |\n"
        "| 1 | none | 75.10% | — | 1.03 | failed |\n"
        "| 2 | `conv1`, `fc\\|head` | 75.70% | — | 0.42 | passed |\n"
    ) in markdown


def test_markdown_stage_timings_in_pipeline_order_with_three_significant_digits() -> None:
    markdown = render_markdown(full_report())
    assert (
        "| stage | seconds | examples | examples/s |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| observe | 12.3 | 1,024 | 83.0 |\n"
        "| reduce | 0.500 | — | — |\n"
        "| thresholds | 2.25 | — | — |\n"
        "| validate | 302 | 50,000 | 166 |\n"
        "| gate | 0.0123 | — | — |\n"
        "| total | 317 |  |  |\n"
    ) in markdown


def test_markdown_cluster_line() -> None:
    markdown = render_markdown(full_report())
    assert (
        "## Cluster\n\n4 workers, 16 shards, device cuda, scheduler `tcp://10.0.0.1:8786`, "
        "dashboard <http://10.0.0.1:8787/status>.\n"
    ) in markdown


def test_an_embedded_clusters_dashboard_is_not_linked_once_it_is_gone() -> None:
    report = full_report()
    report["cluster"] = {**report["cluster"], "kind": "LocalCluster"}
    markdown = render_markdown(report)
    assert (
        "## Cluster\n\n4 workers, 16 shards, device cuda, an embedded LocalCluster (closed with the run).\n" in markdown
    )
    assert "8787" not in markdown


def test_markdown_lists_the_ten_most_sensitive_nodes() -> None:
    markdown = render_markdown(full_report())
    assert "## Most sensitive nodes (10 of 12)\n" in markdown
    assert "| 1 | `layer0/conv` | Conv | 1 |\n" in markdown
    assert "| 3 | `layer2/conv` | Conv | 0.3333 |\n" in markdown
    assert "| 10 | `layer9/conv` | Conv | 0.1 |\n" in markdown
    assert "layer10/conv" not in markdown


def test_markdown_tensors_of_an_entropy_table_by_largest_divergence_with_missing_last() -> None:
    report = full_report()
    for tensor in report["tensors"]:
        tensor["method"] = "entropy"
    assert (
        "## Largest divergence (4 of 4 tensors)\n\n"
        "| tensor | method | threshold | divergence | error | signed |\n"
        "| --- | --- | ---: | ---: | ---: | --- |\n"
        "| `c` | entropy | 0.000123457 | 0.5 | 0.0005 | no |\n"
        "| `a` | entropy | 1.23457 | 0.02 | 0.001 | yes |\n"
        "| `d` | entropy | 3.5 | 0.02 | 0.004 | yes |\n"
        "| `b` | entropy | 6 | — | 0.02 | no |\n"
    ) in render_markdown(report)


def test_markdown_tensors_of_other_methods_by_their_relative_quantization_error() -> None:
    """Percentile and naive have no divergence and an auto table mixes methods: the error ranks them."""
    assert (
        "## Largest quantization error (4 of 4 tensors)\n\n"
        "| tensor | method | threshold | divergence | error | signed |\n"
        "| --- | --- | ---: | ---: | ---: | --- |\n"
        "| `b` | percentile | 6 | — | 0.02 | no |\n"
        "| `d` | entropy | 3.5 | 0.02 | 0.004 | yes |\n"
        "| `a` | entropy | 1.23457 | 0.02 | 0.001 | yes |\n"
        "| `c` | mse | 0.000123457 | 0.5 | 0.0005 | no |\n"
    ) in render_markdown(full_report())


def test_markdown_links_plots_and_lists_settings_sorted() -> None:
    markdown = render_markdown(full_report())
    assert (
        "## Plots\n\n"
        "- [plots/sensitivity.png](plots/sensitivity.png)\n"
        "- [plots/histogram-c-0123456789.png](plots/histogram-c-0123456789.png)\n"
    ) in markdown
    assert markdown.endswith(
        "## Settings\n\n"
        "| setting | value |\n"
        "| --- | --- |\n"
        "| `method` | `entropy` |\n"
        "| `num_bins` | `8192` |\n"
        "| `percentile` | `99.99` |\n"
        "| `shards` | `4` |\n"
        "| `spike_fix` | `true` |\n"
    )


def test_missing_sections_are_absent(tmp_path: Path) -> None:
    report = full_report()
    for key in ("data", "accuracy", "gate", "stages", "cluster", "sensitivity", "tensors", "plots", "settings"):
        del report[key]
    report["model"] = None
    _, md_path = write_report(str(tmp_path), report)
    assert Path(md_path).read_text() == (
        "# INT8 calibration report: unnamed model\n\n"
        "int8flow 0.1.0, started 2026-01-02T03:04:05+00:00, finished 2026-01-02T03:10:00+00:00\n"
    )


def test_empty_report_renders_a_title_only(tmp_path: Path) -> None:
    _, md_path = write_report(str(tmp_path), {})
    assert Path(md_path).read_text() == "# INT8 calibration report: unnamed model\n"


def test_partial_sections_render_what_is_there() -> None:
    markdown = render_markdown(
        {
            "accuracy": {"fp32_top1": 70.0, "int8_top1": 69.5},
            "gate": {"passed": False},
            "stages": {"observe": {"seconds": 1.0}},
        }
    )
    assert "| top-1 | 70.00% | 69.50% | — |\n" in markdown
    assert "top-5" not in markdown
    assert "agreement" not in markdown
    assert "## Gate\n\n**failed**\n" in markdown
    assert "| attempt |" not in markdown
    assert "| observe | 1.00 | — | — |\n| total | 1.00 |  |  |\n" in markdown


def test_summary_rows() -> None:
    assert summary_rows(full_report(), "out/run1") == [
        ("FP32 top-1", "76.13%"),
        ("INT8 top-1", "75.70%"),
        ("top-1 drop (points)", "0.42"),
        ("FP32 top-5", "92.86%"),
        ("INT8 top-5", "92.90%"),
        ("top-5 drop (points)", "-0.04"),
        ("top-1 agreement", "97.40%"),
        ("gate", "passed (2 attempts)"),
        ("calibration time (s)", "15.1"),
        ("observe throughput (examples/s)", "83.0"),
        ("output", "out/run1"),
    ]


def test_sections_with_nothing_to_show_are_absent() -> None:
    markdown = render_markdown({"gate": {"max_top1_drop": 1.0}, "cluster": {"other": 1}, "data": {"calibration": {}}})
    assert markdown == "# INT8 calibration report: unnamed model\n"


def test_summary_rows_leave_out_what_the_report_lacks() -> None:
    assert summary_rows({"accuracy": {"int8_top1": 75.0}, "gate": {"passed": False, "attempts": [{}]}}) == [
        ("INT8 top-1", "75.00%"),
        ("gate", "failed (1 attempt)"),
    ]


def test_a_run_without_a_gate_is_not_called_passed() -> None:
    gate = {"max_top1_drop": None, "passed": True, "attempts": [{"excluded": [], "passed": True}]}
    assert summary_rows({"gate": gate}) == [("gate", "not set (validated only)")]
    assert "**not set (validated only)**" in render_markdown({"gate": gate})


def calibrated(divergences: dict[str, float]) -> tuple[dict[str, Histogram], CalibrationTable]:
    """Real histograms of seeded data and a table whose divergences the test chooses."""
    rng = np.random.default_rng(7)
    histograms = {}
    records = []
    for index, (name, divergence) in enumerate(divergences.items()):
        values = rng.normal(size=4000) * (index + 1)
        signed = index % 2 == 0
        if not signed:
            values = np.abs(values)
        histograms[name] = Histogram.of(values, NUM_BINS)
        records.append(TensorCalibration(name, "entropy", 2.0 * (index + 1), signed, divergence))
    return histograms, CalibrationTable(tuple(records))


def assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        if size is not None:
            assert image.size == size
        else:
            assert 400 <= image.size[0] <= 2000 and 200 <= image.size[1] <= 2000


def test_histogram_plots_are_the_largest_divergences_in_order(tmp_path: Path) -> None:
    histograms, table = calibrated({"t0": 0.1, "t1": math.nan, "t2": 0.7, "t3": 0.3, "t4": 0.3, "t5": 0.01, "t6": 0.05})
    paths = plot_tensor_histograms(str(tmp_path), histograms, table, {}, count=4)
    assert [re.fullmatch(r"plots/histogram-(.+)-[0-9a-f]{10}\.png", path).group(1) for path in paths] == [
        "t2",
        "t3",
        "t4",
        "t0",
    ]
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == sorted(Path(path).name for path in paths)
    for path in paths:
        assert_png(tmp_path / path, (800, 450))


def test_tensors_without_divergence_come_last_and_untabled_ones_never(tmp_path: Path) -> None:
    histograms, table = calibrated({"b": math.nan, "a": math.nan, "z": 0.2})
    histograms["no_threshold"] = Histogram.of(np.arange(10.0), NUM_BINS)
    paths = plot_tensor_histograms(str(tmp_path), histograms, table, {})
    assert [path.split("-")[1] for path in paths] == ["z", "a", "b"]


def test_histogram_plots_of_a_percentile_table_are_its_largest_quantization_errors(tmp_path: Path) -> None:
    histograms, entropy = calibrated({"a": math.nan, "b": math.nan, "c": math.nan})
    table = CalibrationTable(tuple(replace(tensor, method="percentile") for tensor in entropy.tensors))
    paths = plot_tensor_histograms(str(tmp_path), histograms, table, {"a": 0.001, "b": 0.03, "c": 0.002}, count=2)
    assert [path.split("-")[1] for path in paths] == ["b", "c"]


def test_tensors_without_histogram_are_skipped(tmp_path: Path) -> None:
    histograms, table = calibrated({"a": 0.1, "b": 0.2})
    del histograms["b"]
    assert [path.split("-")[1] for path in plot_tensor_histograms(str(tmp_path), histograms, table, {})] == ["a"]


def test_histogram_file_names_are_safe_and_unique(tmp_path: Path) -> None:
    names = ["conv1/out:0", "conv1_out_0", "conv1:out/0", "Relu", "relu", "..hidden", "x" * 300, "x" * 301]
    histograms, table = calibrated({name: 0.1 for name in names})
    paths = plot_tensor_histograms(str(tmp_path), histograms, table, {}, count=len(names))
    files = [Path(path).name for path in paths]
    assert all(path == f"plots/{file}" for path, file in zip(paths, files, strict=True))
    assert all(re.fullmatch(r"histogram-[A-Za-z0-9][A-Za-z0-9._-]*\.png", file) and len(file) < 128 for file in files)
    assert len({file.lower() for file in files}) == len(names)
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == sorted(files)
    assert no_temporaries(tmp_path)


def test_histogram_plots_are_reproducible(tmp_path: Path) -> None:
    histograms, table = calibrated({"a": 0.1})
    first = plot_tensor_histograms(str(tmp_path / "one"), histograms, table, {})
    second = plot_tensor_histograms(str(tmp_path / "two"), histograms, table, {})
    assert first == second
    assert (tmp_path / "one" / first[0]).read_bytes() == (tmp_path / "two" / second[0]).read_bytes()


def test_the_overview_holds_the_ranked_histograms_two_a_row_under_one_top_level_name(tmp_path: Path) -> None:
    histograms, table = calibrated({"t0": 0.1, "t1": 0.7, "t2": 0.3})
    assert plot_tensors(str(tmp_path), histograms, table, {}) == [
        "tensors.png",
        *plot_tensor_histograms(str(tmp_path / "alone"), histograms, table, {}),
    ]
    assert_png(tmp_path / "tensors.png", (1600, 900))  # 3 histograms of 800 x 450: two rows of two
    assert no_temporaries(tmp_path)


def test_no_histogram_no_overview(tmp_path: Path) -> None:
    _, table = calibrated({"a": 0.1})
    assert plot_tensor_overview(str(tmp_path), {}, table, {}) is None
    assert plot_tensors(str(tmp_path), {}, table, {}) == []
    assert list(tmp_path.iterdir()) == []


def test_sensitivity_plot_is_a_png(tmp_path: Path) -> None:
    sensitivity = copy.deepcopy(full_report()["sensitivity"])
    path = plot_sensitivity(str(tmp_path), sensitivity)
    assert path == "sensitivity.png"  # top level: MLflow's compare view offers it side by side
    assert_png(tmp_path / path)
    assert no_temporaries(tmp_path)


def test_no_sensitivity_no_plot(tmp_path: Path) -> None:
    assert plot_sensitivity(str(tmp_path), []) is None
    assert list(tmp_path.iterdir()) == []


def test_mlflow_metrics_are_grouped_and_rounded_to_what_a_reader_compares() -> None:
    from int8flow.tasks.outputs.run_report import run_metrics

    stages = {name: {"seconds": 0.0123456} for name in ("reduce", "thresholds", "correct", "build", "gate")}
    report = {
        "stages": {
            **stages,
            "observe": {"seconds": 1.23456, "examples": 512},
            "validate": {"seconds": 5.55555, "examples_per_second": 1814.9449},
        },
        "data": {"calibration": {"skipped_images": 3}},
        "accuracy": {"examples": 10000, "fp32_top1": 92.04, "int8_top1": 91.84, "top1_drop": 92.04 - 91.84},
        "gate": {"attempts": [{}]},
    }
    assert 92.04 - 91.84 != 0.2  # what MLflow showed: 0.20000000000000284
    metrics = run_metrics(report)
    assert [key.split("/")[0] for key in metrics] == ["accuracy"] * 3 + ["time"] * 8 + ["throughput"] * 2 + [
        "count"
    ] * 4
    assert metrics == {
        "accuracy/fp32_top1": 92.04,
        "accuracy/int8_top1": 91.84,
        "accuracy/top1_drop": 0.2,
        "time/observe_seconds": 1.235,
        "time/validate_seconds": 5.556,
        **{f"time/{name}_seconds": 0.012 for name in ("reduce", "thresholds", "correct", "build", "gate")},
        "time/calib_seconds": 1.272,  # observe + reduce + thresholds + correct, then rounded
        "throughput/validate_examples_per_second": 1814.9,
        "throughput/calib_examples_per_second": 402.6,
        "count/calib_examples": 512,
        "count/calib_skipped_images": 3,
        "count/val_examples": 10000,
        "count/gate_attempts": 1,
    }


def test_the_html_report_embeds_its_plots_and_escapes_every_name(tmp_path: Path) -> None:
    from int8flow.tasks.outputs.report_html import write_report_html

    report = full_report()
    report["tensors"][0]["name"] = "<script>alert(1)</script>"
    report["plots"] = [plot_sensitivity(str(tmp_path), report["sensitivity"])]
    page = Path(write_report_html(str(tmp_path), report)).read_text()
    png = base64.b64encode((tmp_path / report["plots"][0]).read_bytes()).decode("ascii")
    assert f'<img src="data:image/png;base64,{png}" alt="sensitivity.png" />' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    tables = sum(line.startswith("| ---") for line in render_markdown(report).splitlines())
    assert page.count("<table>") == tables == 7 and "<h2>Plots</h2>" in page
    assert no_temporaries(tmp_path)

"""``int8flow run`` end to end on real parts: the committed Fashion-MNIST ResNet, Debian's Fashion-MNIST,
an embedded Dask cluster of two worker processes, a SQLite MLflow store; onnxruntime as the oracle."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import DEMO_MODEL, X86, flags
from mlflow import MlflowClient

from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.schemas.run_config import RunConfig
from int8flow.schemas.run_folder import FP32_MODEL, RESULT_NAMES
from int8flow.tasks.calibration.bias_correction import measure_bias_corrections
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.data import fashion_mnist_folder, load_mnist_split
from int8flow.tasks.distributed.shard_jobs import sample_indices, top_k
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.export_qdq import export_qdq
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.onnxruntime_engine import OnnxRuntimeExecutor, deployment_session
from int8flow.tasks.graph.quantize_pass import QuantizationOptions, calibration_tensors, quantize_graph
from int8flow.tasks.graph.simplify import simplify
from int8flow.tasks.run.pipeline import run_pipeline
from int8flow.tasks.run.plan import plan_run
from int8flow.tasks.validation.sensitivity import rank_sensitivity

MODEL = str(DEMO_MODEL)
CALIB = f"{fashion_mnist_folder()}#train"
VAL = f"{fashion_mnist_folder()}#t10k"
CALIB_EXAMPLES = 512
VAL_EXAMPLES = 2000
SCRIPT = str(Path(sys.executable).parent / "int8flow")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def run_demo_model(cwd: Path, **options: object) -> subprocess.CompletedProcess[str]:
    """``int8flow run`` of the demo model on Fashion-MNIST, with ``options`` as its flags."""
    return cli(
        "run", MODEL, f"--calib-data={CALIB}", f"--val-data={VAL}", "--preprocess=mnist", *flags(options), cwd=cwd
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One real run with a gate and a registration; several tests read what it left."""
    cwd = tmp_path_factory.mktemp("run")
    done = run_demo_model(
        cwd,
        calib_examples=CALIB_EXAMPLES,
        val_examples=VAL_EXAMPLES,
        batch_size=32,
        workers=2,
        shards=3,
        max_top1_drop=1,
        rank_sensitivity=True,
        register="fmnist-int8",
        out="out",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd, done


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    return load_mnist_split(fashion_mnist_folder(), "train")


def report_of(cwd: Path) -> dict:
    return json.loads((cwd / "out" / "report.json").read_text())


def mnist_inputs(pixels: np.ndarray) -> np.ndarray:
    """The 'mnist' preset written out: pixels times the float32 nearest 1/255."""
    return pixels[:, None].astype(np.float32) * np.float32(1 / 255)


def test_the_run_writes_every_output(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    cwd, done = demo_run
    out = cwd / "out"
    assert sorted(path.name for path in out.iterdir()) == sorted(set(RESULT_NAMES) - {FP32_MODEL})
    assert sorted(path.name for path in (out / "histograms").iterdir()) == [f"shard={i:05d}.parquet" for i in range(3)]
    for name in ("calibration.json", "calibration.cache", "model.int8.onnx", "report.json", "report.md", "run.json"):
        assert (out / name).is_file(), name
    plots = sorted(path.name for path in (out / "plots").iterdir())
    assert len(plots) == 6 and all(name.startswith("histogram-") for name in plots)
    assert (out / "tensors.png").is_file() and (out / "sensitivity.png").is_file()  # the key plots, top level
    assert len(report_of(cwd)["sensitivity"]) == 14  # 9 Conv, 3 Add, GlobalAveragePool, Gemm
    assert (
        "dashboard: http://" in done.stdout and "FP32 top-1" in done.stdout and "fmnist-int8 version 1" in done.stdout
    )


def test_the_distributed_table_equals_a_single_process_calibration(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]], images: tuple[np.ndarray, np.ndarray]
) -> None:
    """Thresholds and bias corrections alike: one process, one batch, no files give the same table."""
    cwd, _ = demo_run
    chosen = sample_indices(len(images[0]), CALIB_EXAMPLES, 0)
    graph = simplify(load_graph(MODEL)[0])
    executor = OnnxRuntimeExecutor(graph, threads=2)
    feeds = [{"input": mnist_inputs(images[0][chosen])}]
    histograms = collect_histograms(executor, feeds, calibration_tensors(graph))
    written = CalibrationTable.from_json((cwd / "out" / "calibration.json").read_text(), "calibration.json")
    defaults = RunConfig.from_mapping({"model": MODEL, "calib_data": CALIB})
    thresholds = build_calibration_table(histograms, defaults.threshold_settings(), written.metadata)
    options = QuantizationOptions(unsigned_activations=defaults.unsigned_activations)
    corrected = sample_indices(len(images[0]), defaults.correction_examples, 0)  # a sample of its own
    correction_feeds = [{"input": mnist_inputs(images[0][corrected])}]
    shifts = measure_bias_corrections(graph, quantize_graph(graph, thresholds, options), executor, correction_feeds)
    expected = dataclasses.replace(thresholds, bias_corrections=shifts)
    assert written.bias_corrections and written.to_json() == expected.to_json()


def test_accuracy_is_exact_and_agrees_with_onnxruntime(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    cwd, _ = demo_run
    pixels, labels = load_mnist_split(fashion_mnist_folder(), "t10k")
    inputs, labels = mnist_inputs(pixels[:VAL_EXAMPLES]), labels[:VAL_EXAMPLES]
    graph = simplify(load_graph(MODEL)[0])
    table = CalibrationTable.from_json((cwd / "out" / "calibration.json").read_text(), "calibration.json")
    fp32 = top_k(OnnxRuntimeExecutor(graph, threads=2).run({"input": inputs})["logits"])
    quantized = quantize_graph(graph, table, QuantizationOptions())
    int8_logits = GraphExecutor(quantized, ops=INT8_OPS).run({"input": inputs})["logits"]
    int8 = top_k(int8_logits)
    report = report_of(cwd)
    accuracy = report["accuracy"]
    assert report["stages"]["validate"]["gemm_fallbacks"] == 0  # NumPy: no cuBLAS to refuse
    assert accuracy["examples"] == VAL_EXAMPLES
    assert accuracy["fp32_top1"] == 100.0 * np.sum(fp32[:, 0] == labels) / VAL_EXAMPLES
    assert accuracy["int8_top1"] == 100.0 * np.sum(int8[:, 0] == labels) / VAL_EXAMPLES
    assert accuracy["int8_top5"] == 100.0 * np.sum(np.any(int8 == labels[:, None], axis=1)) / VAL_EXAMPLES
    assert accuracy["agreement_top1"] == 100.0 * np.sum(fp32[:, 0] == int8[:, 0]) / VAL_EXAMPLES
    onnx_fp32 = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]
    onnx_int8 = ort.InferenceSession(str(cwd / "out" / "model.int8.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": inputs}
    )[0]
    deployed = top_k(onnx_int8)
    assert accuracy["deploy_int8_top1"] == 100.0 * np.sum(deployed[:, 0] == labels) / VAL_EXAMPLES
    assert accuracy["deploy_int8_top5"] == 100.0 * np.sum(np.any(deployed == labels[:, None], axis=1)) / VAL_EXAMPLES
    assert accuracy["deploy_agreement_top1"] == 100.0 * np.sum(deployed[:, 0] == int8[:, 0]) / VAL_EXAMPLES
    assert report["gate"]["deploy_runtime"] == "onnxruntime"
    if X86:  # the defaults (uint8 storage, unsigned activations): onnxruntime computes our int8 bits
        np.testing.assert_array_equal(onnx_int8, int8_logits)
        assert accuracy["deploy_agreement_top1"] == 100.0
    assert np.mean(onnx_fp32.argmax(1) == fp32[:, 0]) >= 0.999


def test_mlflow_holds_the_run_and_the_registered_version(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    cwd, _ = demo_run
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlflow.db", registry_uri=f"sqlite:///{cwd}/mlflow.db")
    experiment = client.get_experiment_by_name("int8flow/fashion_mnist_resnet")
    (run,) = client.search_runs([experiment.experiment_id])
    report = report_of(cwd)
    for name in ("fp32_top1", "int8_top1", "top1_drop", "fp32_top5", "int8_top5", "top5_drop", "agreement_top1"):
        assert run.data.metrics[f"accuracy/{name}"] == round(report["accuracy"][name], 4), name  # 1e-4 points
    assert run.data.metrics["time/calib_seconds"] > 0 and run.data.metrics["count/calib_examples"] == CALIB_EXAMPLES
    assert run.data.params["calib_examples"] == str(CALIB_EXAMPLES) and run.data.params["method"] == "percentile"
    assert run.data.tags["int8flow.model_sha256"] == report["model"]["sha256"]
    assert run.data.tags["int8flow.gate"] == "passed"
    assert (run.data.tags["mlflow.source.name"], run.data.tags["mlflow.source.type"]) == ("int8flow run", "LOCAL")
    accuracy, attempts = report["accuracy"], len(report["gate"]["attempts"])
    assert run.data.tags["mlflow.note.content"] == (  # the run's description in MLflow
        f"INT8 calibration of `{MODEL}`: method percentile, {CALIB_EXAMPLES} calibration examples, "
        "bias correction on.\n\n"
        f"Top-1 on {VAL_EXAMPLES} validation examples: FP32 {accuracy['fp32_top1']:.2f}%, "
        f"INT8 {accuracy['int8_top1']:.2f}% (drop {accuracy['top1_drop']:.2f} points); "
        f"gate passed (max top-1 drop 1, {attempts} attempt(s)).\n\n"
        "Started by `int8flow run`."
    )
    span = [datetime.fromisoformat(report[key]).timestamp() * 1000 for key in ("started", "finished")]
    assert [run.info.start_time, run.info.end_time] == span
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    top_level = {"calibration.json", "model.int8.onnx", "report.md", "report.html", "tensors.png", "sensitivity.png"}
    assert top_level | {"histograms", "plots"} <= artifacts
    version = client.get_model_version_by_alias("fmnist-int8", "int8-candidate")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    (int8_model,) = run.outputs.model_outputs  # the INT8 model as an MLflow ONNX model of the run
    assert version.source == f"models:/{int8_model.model_id}"
    assert version.tags["fp32_sha256"] == report["model"]["sha256"]
    assert version.tags["validated"] == "true"
    accuracy = {name: f"{round(report['accuracy'][name], 4):g}" for name in ("fp32_top1", "int8_top1", "top1_drop")}
    assert set(version.tags) == {
        *accuracy,
        "agreement_top1",
        "deploy_int8_top1",
        "fp32_model_uri",
        "fp32_sha256",
        "method",
        "validated",
    }  # the few a reader needs; a file model has no FP32 registry tags
    assert {name: version.tags[name] for name in accuracy} == accuracy
    listed = cli("runs", cwd=cwd)
    assert listed.returncode == 0 and run.info.run_id[:8] in listed.stdout and "passed" in listed.stdout


def test_a_version_registered_without_validation_says_so(tmp_path: Path) -> None:
    done = cli(
        "run", MODEL, f"--calib-data={CALIB}", "--preprocess=mnist", "--calib-examples=64", "--workers=1",
        "--register=unvalidated", "--out=out", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", registry_uri=f"sqlite:///{tmp_path}/mlflow.db"
    )
    version = client.get_model_version("unvalidated", "1")
    assert version.tags["validated"] == "false" and "int8_top1" not in version.tags


def test_a_failed_gate_exits_1_and_registers_nothing(tmp_path: Path) -> None:
    done = run_demo_model(
        tmp_path,
        calib_examples=128,
        val_examples=256,
        workers=1,
        max_top1_drop=-1,
        fallback_budget=1,
        sensitivity_examples=32,
        register="never",
        out="out",
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.startswith("int8flow: accuracy gate failed") and done.stderr.count("\n") == 1
    gate = report_of(tmp_path)["gate"]
    assert not gate["passed"] and len(gate["attempts"]) == 2
    client = MlflowClient(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", registry_uri=f"sqlite:///{tmp_path}/mlflow.db"
    )
    assert client.search_registered_models() == []
    (run,) = client.search_runs([client.get_experiment_by_name("int8flow/fashion_mnist_resnet").experiment_id])
    assert run.data.tags["int8flow.gate"] == "failed"


def test_the_fallback_moves_the_most_sensitive_nodes_to_fp32_until_the_gate_passes(tmp_path: Path) -> None:
    settings = {
        "model": MODEL,
        "calib_data": CALIB,
        "val_data": VAL,
        "preprocess": "mnist",
        "calib_examples": 256,
        "val_examples": VAL_EXAMPLES,
        "method": "naive",
        "per_tensor_weights": True,
        "unsigned_activations": False,  # symmetric, naive, per tensor, uncorrected: coarse enough for the gate to fail
        "bias_correction": False,
        "max_top1_drop": -0.05,
        "fallback_budget": 3,
        "sensitivity_examples": 128,
        "workers": 2,
        "out": str(tmp_path / "out"),
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
    }
    config = RunConfig.from_mapping(settings)
    outcome = run_pipeline(config)
    attempts = outcome.report["gate"]["attempts"]
    graph = simplify(load_graph(MODEL)[0])
    table = CalibrationTable.from_json((tmp_path / "out" / "calibration.json").read_text(), "calibration.json")
    options = QuantizationOptions(per_channel=False, unsigned_activations=False)
    pixels, labels = load_mnist_split(fashion_mnist_folder(), "t10k")
    ranking = rank_sensitivity(graph, table, options, {"input": mnist_inputs(pixels[:128])})
    assert [node["node"] for node in outcome.report["sensitivity"]] == [node.node for node in ranking]
    inputs = mnist_inputs(pixels[:VAL_EXAMPLES])
    fp32_logits = OnnxRuntimeExecutor(graph, threads=2).run({"input": inputs})["logits"]
    fp32_top1 = np.sum(top_k(fp32_logits)[:, 0] == labels[:VAL_EXAMPLES])
    for index, attempt in enumerate(attempts):
        assert attempt["excluded"] == [node.node for node in ranking[:index]]
        quantized = quantize_graph(graph, table, dataclasses.replace(options, exclude=tuple(attempt["excluded"])))
        hits = np.sum(
            top_k(GraphExecutor(quantized, ops=INT8_OPS).run({"input": inputs})["logits"])[:, 0]
            == labels[:VAL_EXAMPLES]
        )
        deployed = deployment_session(export_qdq(quantized), threads=2).run(None, {"input": inputs})[0]
        deployed_hits = np.sum(top_k(deployed)[:, 0] == labels[:VAL_EXAMPLES])
        assert attempt["int8_top1"] == 100.0 * hits / VAL_EXAMPLES
        assert attempt["deploy_int8_top1"] == 100.0 * deployed_hits / VAL_EXAMPLES
        worse = 100.0 * (fp32_top1 - min(hits, deployed_hits)) / VAL_EXAMPLES
        assert attempt["top1_drop"] == pytest.approx(worse, abs=1e-9)
        assert attempt["passed"] == (worse <= -0.05)
    assert [attempt["passed"] for attempt in attempts[:-1]] == [False] * (len(attempts) - 1)
    assert outcome.passed == attempts[-1]["passed"] and (outcome.passed or len(attempts) == 4)
    built = json.loads((tmp_path / "out" / "stages" / "build.json").read_text())
    gate = json.loads((tmp_path / "out" / "stages" / "gate.json").read_text())
    assert built["excluded"] == gate["final_excluded"]
    plan_run(config)  # a new run in the same folder must not build with this run's gate exclusions
    assert not (tmp_path / "out" / "stages").exists()

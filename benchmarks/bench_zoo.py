"""The model zoo check: every torchvision/timm CNN loads, matches onnxruntime, quantizes, runs, exports.

For each architecture of ``examples/zoo_models.py`` (seeded weights, BatchNorm statistics estimated on
real photos) and each exporter (TorchScript at opset 17, dynamo at opset 18), with dynamic batch:

1. int8flow loads and simplifies the ONNX file (a refused op is reported with int8flow's own error);
2. FP32: int8flow's executor against onnxruntime on photo crops, at a batch size the export did not
   trace (3): the largest difference relative to the largest logit;
3. calibration (entropy, the defaults) on photo crops, quantization, and the INT8 graph run;
4. the QDQ export runs in onnxruntime; its logits with graph optimizations off (exact fake-quant
   arithmetic in float, see STACK.md) are compared with int8flow's INT8 executor, which validated it;
5. top-1 agreement of INT8 with FP32 on the validation crops, and ms/image of int8flow's FP32 and
   INT8 executors beside onnxruntime's FP32 and QDQ sessions, measured in the same run.

``--subset ci`` is what ``tests/test_zoo.py`` runs in CI (with ``--json``); the full zoo is a
benchmark: ``.venv/bin/python benchmarks/bench_zoo.py --subset full`` (table for RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from int8flow.kernels.thresholds import ThresholdSettings
from int8flow.tasks.calibration.collector import collect_histograms
from int8flow.tasks.calibration.table import build_calibration_table
from int8flow.tasks.data.photos import photo_crops
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.export_qdq import export_qdq
from int8flow.tasks.graph.int8_ops import INT8_OPS
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.quantize_pass import calibration_tensors, quantize_graph
from int8flow.tasks.graph.simplify import simplify

ROOT = Path(__file__).resolve().parent.parent
EXPORT_SCRIPT = ROOT / "examples" / "zoo_models.py"
CHECK_BATCH = 3
"""A batch size no exporter traced with (they trace at 1 or 2): dynamic batch must really work."""
BATCH = 8
Run = Callable[[np.ndarray], np.ndarray]


@dataclass
class ZooResult:
    """One model file's check; figures are None where an earlier step failed (``error`` says which)."""

    model: str
    opset: int = 0
    loads: bool = False
    fp32_error: float | None = None
    int8_runs: bool = False
    qdq_runs: bool = False
    qdq_error: float | None = None
    int8_agreement: float | None = None
    ms_per_image: dict[str, float] = field(default_factory=dict)
    error: str = ""


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference over the largest reference logit: the issue's FP32 criterion."""
    return float(np.abs(ours - reference).max() / max(float(np.abs(reference).max()), 1e-30))


def batched(run: Run, crops: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits of every crop in batches of ``BATCH``, and the milliseconds per image it took."""
    start = time.perf_counter()
    logits = np.concatenate([run(crops[i : i + BATCH]) for i in range(0, len(crops), BATCH)])
    return logits, (time.perf_counter() - start) * 1000 / len(crops)


def session_runner(model: bytes | str, optimized: bool = True) -> Run:
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def executor_runner(executor: GraphExecutor) -> Run:
    name, output = executor.graph.inputs[0].name, executor.graph.outputs[0].name
    return lambda batch: executor.run({name: batch})[output]


def check_model(path: Path, calib_count: int, val_count: int) -> ZooResult:
    """The whole check on one file; the first failing step ends it with its error, the rest stay None."""
    result = ZooResult(path.stem, onnx.load(str(path), load_external_data=False).opset_import[0].version)
    try:
        _check(path, result, calib_count, val_count)
    except Exception as error:  # noqa: BLE001 - a benchmark row records any failure and goes on
        result.error = f"{type(error).__name__}: {error}".splitlines()[0]
        traceback.print_exc()
    return result


def _check(path: Path, result: ZooResult, calib_count: int, val_count: int) -> None:
    graph = simplify(load_graph(str(path))[0])
    fp32 = GraphExecutor(graph)
    result.loads = True
    size = graph.inputs[0].shape[-1]
    assert isinstance(size, int), f"{path.name}: the input's width is not fixed"
    val = photo_crops(val_count, seed=12, size=size)
    onnxruntime_fp32 = session_runner(str(path))
    probe = val[:CHECK_BATCH]
    result.fp32_error = relative_error(executor_runner(fp32)(probe), onnxruntime_fp32(probe))

    calib = photo_crops(calib_count, seed=11, size=size)
    name = graph.inputs[0].name
    histograms = collect_histograms(
        fp32, [{name: calib[i : i + BATCH]} for i in range(0, len(calib), BATCH)], calibration_tensors(graph)
    )
    quantized = quantize_graph(graph, build_calibration_table(histograms, ThresholdSettings(), {}))
    int8 = GraphExecutor(quantized, ops=INT8_OPS)
    int8_logits, result.ms_per_image["int8flow_int8"] = batched(executor_runner(int8), val)
    result.int8_runs = bool(np.isfinite(int8_logits).all())

    qdq = export_qdq(quantized).SerializeToString()
    fake_quant_logits, _ = batched(session_runner(qdq, optimized=False), val)
    _, result.ms_per_image["onnxruntime_qdq"] = batched(session_runner(qdq), val)
    result.qdq_runs = True
    result.qdq_error = relative_error(int8_logits, fake_quant_logits)

    fp32_logits, result.ms_per_image["int8flow_fp32"] = batched(executor_runner(fp32), val)
    _, result.ms_per_image["onnxruntime_fp32"] = batched(onnxruntime_fp32, val)
    result.int8_agreement = float((int8_logits.argmax(axis=1) == fp32_logits.argmax(axis=1)).mean())


def export_zoo(folder: Path, subset: str, exporter: str, only: str | None) -> tuple[bool, list[Path]]:
    """Whether every export succeeded, and the files to check: ``<source>-<name>-<exporter>.onnx`` made by
    ``examples/zoo_models.py`` (which skips files already there and names a failed export itself);
    in a reused folder, files of other exporters or, with ``only``, of other names are left out."""
    command = [sys.executable, str(EXPORT_SCRIPT), "--out", str(folder), "--subset", subset, "--exporter", exporter]
    exported = subprocess.run(command + (["--only", only] if only else []), check=False).returncode == 0
    names = set(only.split(",")) if only else None
    return exported, [
        path
        for path in sorted(folder.glob("*-*-*.onnx"))
        if exporter in ("both", path.stem.rsplit("-", 1)[1]) and (names is None or path.stem.split("-")[1] in names)
    ]


def markdown_table(results: list[ZooResult]) -> str:
    def figure(value: float | None, text: str) -> str:
        return "-" if value is None else text.format(value)

    lines = [
        "| model | opset | loads | FP32 error | INT8 runs | QDQ runs | QDQ vs INT8 | INT8 top-1 agreement "
        "| ms/image FP32 (ours / ort) | ms/image INT8 (ours / ort QDQ) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        ms = result.ms_per_image
        timing = [
            f"{ms[ours]:.1f} / {ms[peer]:.1f}" if ours in ms and peer in ms else "-"
            for ours, peer in (("int8flow_fp32", "onnxruntime_fp32"), ("int8flow_int8", "onnxruntime_qdq"))
        ]
        cells = [
            result.model,
            str(result.opset),
            "yes" if result.loads else f"no: {result.error}",
            figure(result.fp32_error, "{:.1e}"),
            "yes" if result.int8_runs else "no",
            "yes" if result.qdq_runs else "no",
            figure(result.qdq_error, "{:.1e}"),
            figure(result.int8_agreement, "{:.0%}"),
            *timing,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", default="ci", choices=("ci", "full"))
    parser.add_argument("--only", help="comma-separated architecture names (default: the whole subset)")
    parser.add_argument("--exporter", default="both", choices=("torchscript", "dynamo", "both"))
    parser.add_argument("--models", type=Path, help="folder for the exported files (default: a temporary one)")
    parser.add_argument("--calib", type=int, default=16, help="calibration crops (default: %(default)s)")
    parser.add_argument("--val", type=int, default=32, help="validation crops (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.models or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        results = []
        exported, paths = export_zoo(folder, args.subset, args.exporter, args.only)
        for path in paths:
            results.append(check_model(path, args.calib, args.val))
            print(markdown_table(results[-1:]).splitlines()[-1], flush=True)
    print(markdown_table(results))
    if args.json:
        record = {"exported": exported, "results": [asdict(result) for result in results]}
        args.json.write_text(json.dumps(record, indent=1))
    if not exported:
        sys.exit("bench_zoo: some exports failed (named above)")


if __name__ == "__main__":
    main()

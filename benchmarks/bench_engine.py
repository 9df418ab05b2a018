"""Stage throughput against plain onnxruntime FP32 inference, EfficientNet-Lite0, same run, same data.

Data: two Parquet files of seeded random photo crops (``bench_calibration.write_photo_parquet``:
512 for calibration, 512 for validation, label 0), decoded and preprocessed by int8flow
(``imagenet-tf``). The peer: one onnxruntime session of the FP32 model with every core in its
intra-op pool, run over the validation examples already preprocessed, in batches of ``--batch``
(best of two passes). Then, per ``--engines`` entry, the stages of a real run on an embedded
LocalCluster of one worker per core: plan, observe, thresholds, build, validate (FP32 + INT8 by
int8flow's executor + the deployment check of ``model.int8.onnx`` in onnxruntime) and a gate that
passes. Printed: each stage's seconds and examples/s, the ratios the targets name (observe and
validate throughput over the peer's, the gate's share of the run), and the deployment agreement.

    .venv/bin/python benchmarks/bench_engine.py [--images 512] [--engines onnxruntime,int8flow]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from bench_calibration import write_photo_parquet
from bench_cli import model_parser

from int8flow.schemas.run_config import RunConfig
from int8flow.tasks.data.preprocess import parse_preprocess
from int8flow.tasks.data.sources import load_batch, open_dataset
from int8flow.tasks.distributed.cluster import dask_client, default_worker_count
from int8flow.tasks.run import stages
from int8flow.tasks.run.plan import plan_run

PREPROCESS = "imagenet-tf"
INPUT_SHAPE = (None, 3, 224, 224)


def preprocessed(parquet: Path, batch: int) -> list[np.ndarray]:
    dataset = open_dataset(str(parquet))
    spec = parse_preprocess(PREPROCESS)
    starts = range(0, len(dataset), batch)
    return [
        load_batch(dataset, list(range(start, min(start + batch, len(dataset)))), spec, INPUT_SHAPE).inputs
        for start in starts
    ]


def onnxruntime_throughput(model: str, batches: list[np.ndarray], threads: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for batch in batches:
            session.run(None, {name: batch})
        best = min(best, time.perf_counter() - started)
    return sum(len(batch) for batch in batches) / best


def run_stages(model: str, calib: Path, val: Path, out: Path, engine: str, images: int, batch: int) -> dict[str, Any]:
    config = RunConfig.from_mapping(
        {
            "model": model,
            "calib_data": str(calib),
            "val_data": str(val),
            "preprocess": PREPROCESS,
            "calib_examples": images,
            "batch_size": batch,
            "engine": engine,
            "max_top1_drop": 100.0,
            "out": str(out),
            "tracking_uri": f"sqlite:///{out.parent}/mlflow.db",
        }
    )
    seconds: dict[str, float] = {}

    def timed(name: str, work: Any) -> Any:
        started = time.perf_counter()
        result = work()
        seconds[name] = time.perf_counter() - started
        return result

    timed("plan", lambda: plan_run(config))
    with dask_client(workers=0, device="cpu") as (client, _):
        observed = timed("observe", lambda: stages.observe(str(out), client, config=config))
        timed("thresholds", lambda: stages.thresholds(str(out)))
        timed("build", lambda: stages.build(str(out), config))
        validated = timed("validate", lambda: stages.validate(str(out), client, config=config))
        gate = timed("gate", lambda: stages.gate(str(out), client, config=config))
    accuracy = validated.accuracy
    return {
        "engine": engine,
        "seconds": {name: round(value, 2) for name, value in seconds.items()},
        "observe_examples_per_second": round(observed.examples / seconds["observe"], 2),
        "validate_examples_per_second": round(accuracy.examples / seconds["validate"], 2),
        "gate_share": round(seconds["gate"] / sum(seconds.values()), 4),
        "gate_passed": gate.passed,
        "agreement_top1": accuracy.agreement_top1,
        "deploy_agreement_top1": accuracy.deploy_agreement_top1,
    }


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--engines", default="onnxruntime,int8flow")
    args = parser.parse_args()
    model = str(Path(args.model).resolve())
    with tempfile.TemporaryDirectory(prefix="int8flow-bench-engine-") as folder:
        root = Path(folder)
        write_photo_parquet(root / "calib.parquet", args.images, seed=0)
        write_photo_parquet(root / "val.parquet", args.images, seed=1)
        peer = onnxruntime_throughput(model, preprocessed(root / "val.parquet", args.batch), default_worker_count())
        print(json.dumps({"onnxruntime_fp32_examples_per_second": round(peer, 2), "cores": default_worker_count()}))
        for engine in args.engines.split(","):
            out = root / engine / "out"
            calib, val = root / "calib.parquet", root / "val.parquet"
            result = run_stages(model, calib, val, out, engine, args.images, args.batch)
            result["observe_over_onnxruntime"] = round(result["observe_examples_per_second"] / peer, 3)
            result["validate_over_onnxruntime"] = round(result["validate_examples_per_second"] / peer, 3)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

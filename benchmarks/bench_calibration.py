"""End-to-end entropy calibration of EfficientNet-Lite0: int8flow on Dask vs onnxruntime's quantize_static.

Data: a Parquet file of seeded random crops of the photos bundled with scikit-image / scikit-learn
(random area and position, short side resized to 256-320 px, JPEG quality 90, 64 rows per row
group, label 0), written to a temporary folder. int8flow reads, decodes and preprocesses these
images itself (``imagenet-tf``) inside its observe stage; onnxruntime is fed the very same
preprocessed tensors (same examples, same order, made by our ``load_batch`` before its timer starts)
through a CalibrationDataReader, in batches of the same size.

Every measured run is a fresh child process (this script with ``--child``); the parent samples the
RSS of the child's whole process tree (the client and, for int8flow, every Dask worker process)
every 50 ms with psutil and keeps the peak, per phase too. Forked workers share pages with their
parent, so the RSS sum over-counts shared pages; the PSS sum (sampled every 0.5 s) is shown beside it.

- int8flow: ``plan`` + ``stages.observe`` + ``stages.thresholds`` (reduce of the partial histograms,
  entropy search) with ``method=entropy, num_bins=8192, num_quantized_bins=255`` on an embedded
  LocalCluster of 1 and of 2 worker processes (the cluster start-up is timed apart).
- onnxruntime 1.32 ``quantize_static`` (QDQ, per-channel, QInt8 weights and activations,
  ``ActivationSymmetric``, ``CalibTensorRangeSymmetric``) with ``CalibrationMethod.Entropy``. By
  default it keeps every activation of every image (~60 MB per image here: 256 images reach
  15.6 GiB), so the timing run feeds it in chunks with ``CalibStridedMinMax=64`` (one
  ``collect_data`` per chunk, histograms merged by re-binning; the KL search runs once). Its
  ``extra_options`` forward no bin counts to the calibrator, so ``create_calibrator`` is wrapped to
  pass ``num_bins=8001`` (MXNet's zero-centred layout, which onnxruntime's search assumes) and
  ``num_quantized_bins=255``. The wrapper also times its calibration part (calibrator creation +
  ``collect_data`` + ``compute_data``) inside the one ``quantize_static`` run. The memory runs at
  other sizes stop after ``collect_data`` (calibrator creation + collection, where every activation
  is held): the KL search that follows works on the histograms only and takes ~8 min whatever the
  number of images; they run both ways, default and strided. A child whose tree passes
  ``--ort-limit-gib`` is killed, the number of images fed so far is reported, and the default mode
  is not run at larger sizes.
- int8flow runs before and again after onnxruntime's timing run: the machine is shared, and the two
  samples show how much of a difference is load.

    .venv/bin/python benchmarks/bench_calibration.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from bench_cli import EFFICIENTNET_LITE0

ROOT = Path(__file__).resolve().parent.parent

MODEL = str(ROOT / EFFICIENTNET_LITE0)
SEED = 0
NUM_BINS = 8192
ORT_NUM_BINS = 8001
NUM_QUANTIZED_BINS = 255
ROW_GROUP = 64
SAMPLE_SECONDS = 0.05
PSS_EVERY = 10
GIB = 1024**3


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def write_photo_parquet(path: Path, count: int, seed: int) -> None:
    """``count`` JPEG-encoded seeded random crops of the bundled photos, short side 256-320 px."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from int8flow.tasks.data.photos import PHOTO_NAMES, load_photo

    photos = {name: Image.fromarray(np.array(load_photo(name))) for name in PHOTO_NAMES}
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(count):
        image = photos[PHOTO_NAMES[int(rng.integers(len(PHOTO_NAMES)))]]
        width, height = image.size
        area = rng.uniform(0.2, 1.0) * width * height
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        crop_width = min(width, max(8, round(math.sqrt(area * aspect))))
        crop_height = min(height, max(8, round(math.sqrt(area / aspect))))
        left = int(rng.integers(width - crop_width + 1))
        top = int(rng.integers(height - crop_height + 1))
        crop = image.crop((left, top, left + crop_width, top + crop_height))
        scale = int(rng.integers(256, 321)) / min(crop_width, crop_height)
        crop = crop.resize((round(crop_width * scale), round(crop_height * scale)), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    table = pa.table({"image": pa.array(encoded, pa.binary()), "label": pa.array(np.zeros(count, np.int64))})
    pq.write_table(table, path, row_group_size=ROW_GROUP)


def write_preprocessed(parquet: Path, npy: Path, batch: int) -> None:
    """Every example of ``parquet`` as the model input int8flow makes of it (float32 NCHW), in file order."""
    from int8flow.tasks.data.preprocess import parse_preprocess
    from int8flow.tasks.data.sources import load_batch, open_dataset

    dataset = open_dataset(str(parquet))
    spec = parse_preprocess("imagenet-tf")
    tensors = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(len(dataset), 3, 224, 224))
    for start in range(0, len(dataset), batch):
        indices = list(range(start, min(start + batch, len(dataset))))
        tensors[start : start + len(indices)] = load_batch(dataset, indices, spec, (None, 3, 224, 224)).inputs
    tensors.flush()
    del tensors


# ----------------------------------------------------------------------------------------------
# Child processes: the measured runs
# ----------------------------------------------------------------------------------------------


def _say(kind: str, payload: Any) -> None:
    print(f"@@{kind} {payload if isinstance(payload, str) else json.dumps(payload)}", flush=True)


def child_ours(job: dict[str, Any]) -> None:
    from int8flow.schemas.run_config import RunConfig
    from int8flow.tasks.distributed.cluster import dask_client
    from int8flow.tasks.run import stages
    from int8flow.tasks.run.plan import plan_run

    config = RunConfig.from_mapping(
        {
            "model": MODEL,
            "calib_data": job["parquet"],
            "preprocess": "imagenet-tf",
            "calib_examples": job["images"],
            "seed": SEED,
            "batch_size": job["batch"],
            "method": "entropy",
            "num_bins": NUM_BINS,
            "num_quantized_bins": NUM_QUANTIZED_BINS,
            "workers": job["workers"],
            "device": "cpu",
            "out": job["out"],
            "overwrite": True,
            "tracking_uri": f"sqlite:///{job['tmp']}/mlflow.db",
        }
    )
    times: dict[str, float] = {}
    _say("PHASE", "plan")
    started = time.perf_counter()
    plan_run(config, cwd=job["tmp"])
    times["plan"] = time.perf_counter() - started
    _say("PHASE", "cluster")
    started = time.perf_counter()
    with dask_client("", job["workers"], "cpu") as (client, info):
        times["cluster"] = time.perf_counter() - started
        _say("PHASE", "observe")
        started = time.perf_counter()
        observed = stages.observe(job["out"], client)
        times["observe_wall"] = time.perf_counter() - started
        _say("PHASE", "thresholds")
        started = time.perf_counter()
        chosen = stages.thresholds(job["out"])
        times["thresholds_wall"] = time.perf_counter() - started
        _say("PHASE", "close")
        workers = info.workers
    times.update(observe=observed.seconds, reduce=chosen.reduce_seconds, search=chosen.thresholds_seconds)
    times["plots"] = times["thresholds_wall"] - times["reduce"] - times["search"]
    _say(
        "RESULT",
        {
            "times": times,
            "examples": observed.examples,
            "shards": observed.shards,
            "examples_per_second": observed.examples_per_second,
            "workers": workers,
        },
    )


class _PreprocessedReader:
    """Feeds onnxruntime the preprocessed rows ``indices`` of an .npy file, ``batch`` at a time.

    The file is mapped afresh for every batch and unmapped after the copy, so the reader itself holds
    one batch, never the whole set. ``set_range`` is what quantize_static's ``CalibStridedMinMax``
    calls to feed one chunk per ``collect_data``.
    """

    def __init__(self, npy: str, input_name: str, indices: np.ndarray, batch: int) -> None:
        self.npy, self.input_name, self.indices, self.batch = npy, input_name, indices, batch
        self.position, self.stop, self.fed = 0, len(indices), 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.stop:
            return None
        rows = self.indices[self.position : min(self.position + self.batch, self.stop)]
        mapped = np.load(self.npy, mmap_mode="r")
        inputs = np.ascontiguousarray(mapped[rows])
        del mapped
        self.position += len(rows)
        self.fed += len(rows)
        _say("FED", str(self.fed))
        return {self.input_name: inputs}

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.stop = start_index, min(end_index, len(self.indices))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.get_next, None)

    def __len__(self) -> int:
        return len(self.indices)


def child_ort(job: dict[str, Any]) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from int8flow.tasks.distributed.shard_jobs import sample_indices

    total = np.load(job["npy"], mmap_mode="r").shape[0]
    indices = sample_indices(total, job["images"], SEED)
    input_name = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    reader = _PreprocessedReader(job["npy"], input_name, indices, job["batch"])
    options = {"symmetric": True, "num_bins": job["ort_bins"], "num_quantized_bins": NUM_QUANTIZED_BINS}
    times: dict[str, float] = {}

    def timed(name: str, work):  # type: ignore[no-untyped-def]
        _say("PHASE", name)
        started = time.perf_counter()
        result = work()
        times[name] = times.get(name, 0.0) + time.perf_counter() - started
        return result

    stride = job["stride"]
    if job["mode"] == "collect":
        # What quantize_static does up to the end of the collection, with (stride) or without CalibStridedMinMax.
        def collect() -> None:
            if not stride:
                calibrator.collect_data(reader)
                return
            for start in range(0, len(reader), stride):
                reader.set_range(start, start + stride)
                calibrator.collect_data(reader)

        with tempfile.TemporaryDirectory() as folder:
            calibrator = timed(
                "calibrator",
                lambda: create_calibrator(
                    Path(MODEL),
                    list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                    f"{folder}/augmented.onnx",
                    CalibrationMethod.Entropy,
                    extra_options=options,
                ),
            )
            timed("collect", collect)
        _say("RESULT", {"times": times})
        return

    def wrapped_create_calibrator(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["extra_options"] = {**kwargs.get("extra_options", {}), **options}
        calibrator = timed("calibrator", lambda: create_calibrator(*args, **kwargs))
        collect, compute = calibrator.collect_data, calibrator.compute_data
        calibrator.collect_data = lambda data_reader: timed("collect", lambda: collect(data_reader))

        def compute_and_keep():  # type: ignore[no-untyped-def]
            ranges = timed("compute", compute)
            Path(job["ranges"]).write_text(
                json.dumps(
                    {name: [float(data.range_value[0]), float(data.range_value[1])] for name, data in ranges.items()}
                )
            )
            _say("PHASE", "quantize")
            return ranges

        calibrator.compute_data = compute_and_keep
        return calibrator

    # ``onnxruntime.quantization.quantize`` is also the name of a function the package exports, so the
    # module that quantize_static reads create_calibrator from is taken from sys.modules.
    sys.modules["onnxruntime.quantization.quantize"].create_calibrator = wrapped_create_calibrator
    with tempfile.TemporaryDirectory() as folder:
        timed(
            "whole",
            lambda: quantize_static(
                MODEL,
                f"{folder}/int8.onnx",
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Entropy,
                extra_options={
                    "ActivationSymmetric": True,
                    "CalibTensorRangeSymmetric": True,
                    **({"CalibStridedMinMax": stride} if stride else {}),
                },
            ),
        )
    times["quantize"] = times["whole"] - times["calibrator"] - times["collect"] - times["compute"]
    _say("RESULT", {"times": times})


# ----------------------------------------------------------------------------------------------
# The parent: run a child, sample its process tree's memory
# ----------------------------------------------------------------------------------------------


@dataclass
class ChildRun:
    result: dict[str, Any] | None = None
    peak_rss: int = 0
    peak_pss: int = 0
    phase_peaks: dict[str, int] = field(default_factory=dict)
    fed: int = 0
    killed: bool = False
    load: tuple[float, float] = (0.0, 0.0)


def _tree_memory(root: psutil.Process, with_pss: bool) -> tuple[int, int]:
    rss = pss = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for process in processes:
        try:
            if with_pss:
                info = process.memory_full_info()
                rss, pss = rss + info.rss, pss + info.pss
            else:
                rss += process.memory_info().rss
        except psutil.Error:
            pass
    return rss, pss


def run_child(job: dict[str, Any], log: Path, limit_bytes: int | None = None) -> ChildRun:
    """Run ``job`` in a fresh process, sampling the RSS of its process tree until it exits."""
    run = ChildRun()
    phase = ["start"]
    with log.open("a") as errors:
        errors.write(f"\n=== {json.dumps({k: v for k, v in job.items() if k not in ('tmp',)})}\n")
        errors.flush()
        process = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(job)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=str(ROOT),
        )
        root = psutil.Process(process.pid)
        load_before = os.getloadavg()[0]

        def read_lines() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("@@PHASE "):
                    phase[0] = line.split(" ", 1)[1].strip()
                elif line.startswith("@@FED "):
                    run.fed = int(line.split(" ", 1)[1])
                elif line.startswith("@@RESULT "):
                    run.result = json.loads(line.split(" ", 1)[1])

        reader = threading.Thread(target=read_lines, daemon=True)
        reader.start()
        tick = 0
        while process.poll() is None:
            rss, pss = _tree_memory(root, tick % PSS_EVERY == 0)
            tick += 1
            run.peak_rss = max(run.peak_rss, rss)
            run.peak_pss = max(run.peak_pss, pss)
            run.phase_peaks[phase[0]] = max(run.phase_peaks.get(phase[0], 0), rss)
            if limit_bytes is not None and rss > limit_bytes and not run.killed:
                run.killed = True
                for child in root.children(recursive=True):
                    child.kill()
                root.kill()
            time.sleep(SAMPLE_SECONDS)
        reader.join(timeout=10)
        run.load = (load_before, os.getloadavg()[0])
    if run.result is None and not run.killed:
        raise RuntimeError(f"child {job['kind']} failed (exit {process.returncode}); see {log}")
    return run


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def compare_thresholds(table_path: Path, ranges_path: Path) -> dict[str, Any]:
    """Our entropy threshold / onnxruntime's max(|low|, |high|), per tensor both calibrate."""
    from int8flow.schemas.calibration_table import CalibrationTable

    ours = CalibrationTable.from_json(table_path.read_text(), str(table_path)).by_name()
    theirs = json.loads(ranges_path.read_text())
    ratios = {}
    for name, (low, high) in theirs.items():
        amax = max(abs(low), abs(high))
        if name in ours and amax > 0:
            ratios[name] = ours[name].threshold / amax
    values = np.array(list(ratios.values()))
    return {
        "ours": len(ours),
        "theirs": len(theirs),
        "both": len(ratios),
        "median": float(np.median(values)),
        "within_1.25x": int(np.sum((values >= 0.8) & (values <= 1.25))),
        "ours_2x_larger": int(np.sum(values > 2.0)),
        "ours_2x_smaller": int(np.sum(values < 0.5)),
        "extremes": sorted(ratios.items(), key=lambda item: item[1])[-3:],
        "larger_ours": float(np.median([ours[name].threshold for name, ratio in ratios.items() if ratio > 2.0] or [0])),
        "larger_theirs": float(
            np.median([max(map(abs, theirs[name])) for name, ratio in ratios.items() if ratio > 2.0] or [0])
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and 1001 onnxruntime bins: a smoke run")
    parser.add_argument("--images", type=int, default=512, help="calibration images of the timing runs")
    parser.add_argument("--memory-sizes", default="256,1024,2048", help="calibration images of the memory runs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stride", type=int, default=64, help="onnxruntime CalibStridedMinMax of the timing run")
    parser.add_argument("--ort-limit-gib", type=float, default=16.0, help="kill an onnxruntime run past this RSS")
    parser.add_argument("--keep", default="", help="write the data and logs into this folder instead of a temp one")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        {"ours": child_ours, "ort": child_ort}[job["kind"]](job)
        return

    ort_bins = ORT_NUM_BINS
    sizes = [int(size) for size in args.memory_sizes.split(",") if size]
    if args.quick:
        args.images, sizes, args.batch, args.stride, ort_bins = 64, [32, 96], 16, 16, 1001
    limit = int(args.ort_limit_gib * GIB)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-calibration-"))
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "children.log"
    total = max([args.images, *sizes])
    parquet, npy = folder / "photos.parquet", folder / "photos.npy"
    started = time.perf_counter()
    write_photo_parquet(parquet, total, seed=2026)
    write_preprocessed(parquet, npy, args.batch)
    print(
        f"{total} JPEG photo crops, {parquet.stat().st_size / 2**20:.1f} MiB Parquet ({ROW_GROUP} rows per row "
        f"group), preprocessed copy for onnxruntime, in {time.perf_counter() - started:.0f} s; folder {folder}"
    )
    print(
        f"CPUs: {os.cpu_count()}, batch {args.batch}, ours {NUM_BINS} bins, onnxruntime {ort_bins} bins, "
        f"{NUM_QUANTIZED_BINS} quantized bins; child stderr in {log}"
    )

    def ours(images: int, workers: int, tag: str) -> ChildRun:
        job = {
            "kind": "ours",
            "images": images,
            "workers": workers,
            "batch": args.batch,
            "parquet": str(parquet),
            "out": str(folder / f"out-{tag}"),
            "tmp": str(folder),
        }
        run = run_child(job, log)
        print(
            f"  ours {images} images, {workers} worker(s): {run.result['times']['observe']:.1f} s observe, "
            f"peak {gib(run.peak_rss)} (load {run.load[0]:.1f}->{run.load[1]:.1f})",
            flush=True,
        )
        return run

    def ort_run(images: int, mode: str, stride: int) -> ChildRun:
        job = {
            "kind": "ort",
            "images": images,
            "mode": mode,
            "stride": stride,
            "batch": args.batch,
            "npy": str(npy),
            "ort_bins": ort_bins,
            "ranges": str(folder / "ort-ranges.json"),
        }
        run = run_child(job, log, limit)
        state = (
            f"KILLED past {gib(limit)} after {run.fed} images fed"
            if run.killed
            else f"{sum(v for k, v in run.result['times'].items() if k in ('calibrator', 'collect', 'compute')):.1f} s"
        )
        print(
            f"  onnxruntime {mode} {images} images, stride {stride or 'none'}: {state}, peak {gib(run.peak_rss)} "
            f"(load {run.load[0]:.1f}->{run.load[1]:.1f})",
            flush=True,
        )
        return run

    # 1 + 3. Timing at args.images: ours with 2 and 1 workers, then onnxruntime's whole quantize_static.
    # onnxruntime keeps every activation of every image it is fed in one collect_data call (~60 MB per
    # image here), so it calibrates args.images only in chunks (CalibStridedMinMax = stride).
    print(f"\nTiming runs, {args.images} images (int8flow before and again after onnxruntime):", flush=True)
    two = ours(args.images, 2, "w2")
    one = ours(args.images, 1, "w1")
    ort_full = ort_run(args.images, "full", args.stride)
    if ort_full.result is None:
        raise SystemExit("onnxruntime's timing run was killed by the memory limit; lower --images or --stride")
    two_again = ours(args.images, 2, "w2-again")
    one_again = ours(args.images, 1, "w1-again")

    # 2. Memory at the other sizes: ours with 2 workers; onnxruntime up to the end of its collection,
    # as quantize_static runs it by default (one collect_data) and with CalibStridedMinMax.
    print("\nMemory runs:", flush=True)
    memory: dict[int, tuple[ChildRun, ChildRun | None, ChildRun]] = {}
    default_stopped_at = None
    for images in sizes:
        ours_run = two if images == args.images else ours(images, 2, f"mem{images}")
        ort_default = None
        if default_stopped_at is None:
            ort_default = ort_run(images, "collect", 0)
            if ort_default.killed:
                default_stopped_at = images
        ort_strided = ort_full if images == args.images else ort_run(images, "collect", args.stride)
        memory[images] = (ours_run, ort_default, ort_strided)

    # Report.
    to = ort_full.result["times"]

    def calibration(times: dict[str, float]) -> float:
        return times["plan"] + times["observe"] + times["reduce"] + times["search"]

    ours_runs = {
        "1 worker, before ORT": one,
        "1 worker, after ORT": one_again,
        "2 workers, before ORT": two,
        "2 workers, after ORT": two_again,
    }
    ort_calibration = to["calibrator"] + to["collect"] + to["compute"]
    print(
        f"\n1. End-to-end entropy calibration, EfficientNet-Lite0, {args.images} images "
        "(ours: plan + observe incl. reading/decoding/preprocessing + reduce + search; cluster start-up apart)"
    )
    print(f"{'':40s}{'seconds':>9s}{'ORT calib / this':>18s}{'ORT whole / this':>18s}{'peak RSS':>11s}{'load':>11s}")
    rows = [
        (f"int8flow, {label}", calibration(run.result["times"]), run.peak_rss, run.load)
        for label, run in ours_runs.items()
    ]
    rows += [
        (
            f"onnxruntime calibration part, stride {args.stride}",
            ort_calibration,
            max(ort_full.phase_peaks.get(phase, 0) for phase in ("calibrator", "collect", "compute")),
            ort_full.load,
        ),
        (f"onnxruntime quantize_static, stride {args.stride}", to["whole"], ort_full.peak_rss, ort_full.load),
    ]
    for label, seconds, peak, load in rows:
        print(
            f"{label:40s}{seconds:9.1f}{ort_calibration / seconds:17.1f}x{to['whole'] / seconds:17.1f}x"
            f"{peak / GIB:7.2f} GiB{load[0]:5.1f}->{load[1]:.1f}"
        )
    for label, run in ours_runs.items():
        times = run.result["times"]
        print(
            f"  int8flow {label}: cluster start-up {times['cluster']:.1f} s (not counted), plan {times['plan']:.1f}, "
            f"observe {times['observe']:.1f}, reduce {times['reduce']:.2f}, search {times['search']:.2f}, "
            f"plots {times['plots']:.1f} (not counted)"
        )
    print(
        f"  onnxruntime: calibrator {to['calibrator']:.1f} s, collect_data {to['collect']:.1f}, compute_data "
        f"(KL search) {to['compute']:.1f}, QDQ rewrite {to['quantize']:.1f}"
    )
    print("  peak RSS of onnxruntime by phase: " + ", ".join(f"{k} {gib(v)}" for k, v in ort_full.phase_peaks.items()))

    print(
        "\n2. Peak memory (sum of RSS over the process tree; int8flow's PSS sum beside it), by calibration images;"
        f" onnxruntime up to the end of its collection, default (one collect_data) and CalibStridedMinMax={args.stride}"
    )
    print(
        f"{'images':>7s}{'int8flow 2w RSS':>17s}{'PSS':>10s}{'ORT default':>32s}{'ORT/ours':>9s}"
        f"{'ORT strided':>13s}{'ORT/ours':>9s}"
    )
    for images, (ours_run, ort_default, ort_strided) in memory.items():
        if ort_default is None:
            theirs, ratio = f"not run ({default_stopped_at} hit the limit)", ""
        elif ort_default.killed:
            theirs, ratio = (
                f">{args.ort_limit_gib:g} GiB, killed at {ort_default.fed}",
                f">{limit / ours_run.peak_rss:.1f}x",
            )
        else:
            theirs, ratio = gib(ort_default.peak_rss), f"{ort_default.peak_rss / ours_run.peak_rss:.1f}x"
        strided = ">limit" if ort_strided.killed else gib(ort_strided.peak_rss)
        print(
            f"{images:7d}{gib(ours_run.peak_rss):>17s}{gib(ours_run.peak_pss):>10s}{theirs:>32s}{ratio:>9s}"
            f"{strided:>13s}{ort_strided.peak_rss / ours_run.peak_rss:8.1f}x"
        )
    for images, (ours_run, _, _) in memory.items():
        print(
            f"  int8flow {images} images, peak RSS by phase: "
            + ", ".join(f"{phase} {gib(peak)}" for phase, peak in ours_run.phase_peaks.items())
        )

    print(f"\n3. Observe-stage throughput, {args.images} images")
    for label, run in ours_runs.items():
        print(
            f"  {label}: {run.result['times']['observe']:.1f} s, {run.result['examples_per_second']:.1f} examples/s "
            f"({run.result['shards']} shards)"
        )
    for label, first, second in (("before", one, two), ("after", one_again, two_again)):
        ratio = second.result["examples_per_second"] / first.result["examples_per_second"]
        print(f"  speed-up 2 workers / 1 worker, runs {label} ORT: {ratio:.2f}x")

    tables = {(folder / f"out-{tag}" / "calibration.json").read_bytes() for tag in ("w1", "w2", "w1-again", "w2-again")}
    print(f"\nCalibration tables of the four int8flow timing runs bit-identical: {len(tables) == 1}")
    check = compare_thresholds(folder / "out-w2" / "calibration.json", folder / "ort-ranges.json")
    print(
        f"Thresholds (informative): {check['both']} tensors calibrated by both (ours {check['ours']}, onnxruntime "
        f"{check['theirs']}); ours / onnxruntime's max(|low|,|high|): median {check['median']:.2f}, "
        f"within 0.8-1.25x: {check['within_1.25x']}, ours >2x larger: {check['ours_2x_larger']}, "
        f"ours <0.5x: {check['ours_2x_smaller']}; largest ratios: "
        + ", ".join(f"{name} {ratio:.1f}x" for name, ratio in check["extremes"])
        + f"; where ours is >2x larger, median thresholds: ours {check['larger_ours']:.3g}, onnxruntime "
        f"{check['larger_theirs']:.3g}"
    )
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()

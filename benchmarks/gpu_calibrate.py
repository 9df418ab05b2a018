"""The calibration of ``make demo`` on a Dask cluster without MLflow, and bit-for-bit table comparisons.

``int8flow run`` cannot start on a machine without MLflow (the lent GPU machines): ``tasks/run/plan.py``
imports ``tasks/tracking/mlflow_store.py`` and ``model_source.py``, which import ``mlflow`` at module
level, and ``stages.py``, ``pipeline.py``, ``calibration/steps.py`` and the CLI import ``plan.py``.
This script runs the same calibration from the modules below them, none of which imports MLflow: the
shard jobs of ``tasks/distributed/shard_jobs.py`` (``observe_shard``, which every run's workers
execute), fanned out by ``tasks/distributed/fanout.py`` over the cluster of
``tasks/distributed/cluster.py`` (``dask_client``: ``LocalCUDACluster`` with ``--device gpu``), the
exact merge of the partial files and the table step. Sample, shards and table metadata follow
``plan_run`` and ``steps.write_table``, so the thresholds are those ``int8flow run`` writes for the same
data and settings (``compare --tensors`` against a CPU ``int8flow run`` checks it).

    python3 benchmarks/gpu_calibrate.py subset /usr/share/datasets/fashion-mnist .gpudata/fashion-mnist
    python3 benchmarks/gpu_calibrate.py calibrate --device cpu --out build/calib-cpu
    python3 benchmarks/gpu_calibrate.py calibrate --device gpu --out build/calib-gpu --expect-cluster LocalCUDACluster
    python3 benchmarks/gpu_calibrate.py compare build/calib-cpu build/calib-gpu

``subset`` writes the 1024 training images ``make demo`` calibrates on (its seeded sample, in order) as
a 0.3 MB idx folder: calibrating on all of it reads the same examples in the same order as the demo
on the full 26 MB set, so only the data fingerprint in the table's metadata differs.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from int8flow.kernels.backend import select_backend
from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.schemas.run_config import RunConfig
from int8flow.schemas.run_folder import CALIBRATION_JSON, HISTOGRAM_DIR, TENSORRT_CACHE, partial_file_name
from int8flow.tasks.calibration.partial_files import merge_partial_files
from int8flow.tasks.calibration.table import build_calibration_table, write_calibration_table
from int8flow.tasks.data.mnist_idx import load_mnist_split
from int8flow.tasks.data.preprocess import check_batch_fits, check_fits, parse_preprocess
from int8flow.tasks.data.sources import open_dataset
from int8flow.tasks.distributed.cluster import threads_per_task
from int8flow.tasks.distributed.fanout import run_shards
from int8flow.tasks.distributed.shard_jobs import ModelRef, ShardSpec, observe_shard, sample_indices
from int8flow.tasks.graph.fp32_ops import check_supported
from int8flow.tasks.graph.load import import_model, load_model
from int8flow.tasks.graph.quantize_pass import calibration_tensors
from int8flow.tasks.graph.simplify import simplify

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "examples" / "models" / "fashion_mnist_resnet.onnx"
"""The model of ``make demo``."""
CARRIED_DATA = ROOT / ".gpudata" / "fashion-mnist"
"""Where ``subset`` puts the demo's calibration images for a GPU machine (git-ignored, carried)."""
SUMMARY = "gpu_calibrate.json"
"""What ``calibrate`` leaves beside the table: the cluster, the workers' array modules, the timings."""


def write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST-format idx file of uint8 ``array``, gzipped with a fixed header (same bytes every time)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as file:
        file.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def subset(arguments: argparse.Namespace) -> int:
    images, labels = load_mnist_split(arguments.source, "train")
    chosen = sample_indices(len(labels), arguments.examples, arguments.seed)
    destination = Path(arguments.destination)
    destination.mkdir(parents=True, exist_ok=True)
    write_idx(destination / "train-images-idx3-ubyte.gz", images[chosen])
    write_idx(destination / "train-labels-idx1-ubyte.gz", labels[chosen].astype(np.uint8))
    size = sum(file.stat().st_size for file in destination.iterdir())
    print(
        f"{destination}: {len(chosen)} of the {len(labels)} training images of {arguments.source} "
        f"(seed {arguments.seed}), {size / 1e6:.2f} MB"
    )
    return 0


@contextlib.contextmanager
def cluster_client(how: str, workers: int, device: str) -> Iterator[tuple[Any, str]]:
    """``int8flow``: the cluster a run gets (``dask_client``). ``spawn``: LocalCUDACluster (or
    LocalCluster for the CPU) with spawned workers, for telling a fork problem from anything else."""
    if how == "int8flow":
        from int8flow.tasks.distributed.cluster import dask_client

        with dask_client("", workers, device) as (client, info):
            yield client, info.kind
        return
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        if device == "gpu":
            from dask_cuda import LocalCUDACluster

            cluster: Any = LocalCUDACluster(n_workers=workers or None, dashboard_address=":0")
            kind = "LocalCUDACluster"
        else:
            cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True, dashboard_address=":0")
            kind = "LocalCluster"
        with cluster, Client(cluster) as client:
            yield client, f"{kind} (spawn)"


def worker_backend(device: str) -> str:
    """What a worker's shard jobs compute with (``ModelRef.device`` goes through the same call)."""
    module = select_backend(device)
    if module.__name__ != "cupy":
        return module.__name__
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    return f"cupy {cupy.__version__} on {name}"


def calibrate(arguments: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = RunConfig.from_mapping(
        {
            "model": str(Path(arguments.model).resolve()),
            "calib_data": arguments.data,
            "preprocess": arguments.preprocess,
            "calib_examples": arguments.examples,
            "seed": arguments.seed,
            "batch_size": arguments.batch_size,
            "device": arguments.device,
            "workers": arguments.workers,
            "shards": arguments.shards,
            "out": str(Path(arguments.out).resolve()),
        }
    )
    # What plan_run checks and fixes, without the tracking store.
    loaded = load_model(config.model)
    graph = simplify(import_model(loaded.proto, config.model))
    check_supported(graph)
    spec = parse_preprocess(config.preprocess)
    check_fits(spec, graph.inputs[0].shape, config.preprocess)
    check_batch_fits(spec, graph.inputs[0].shape, config.batch_size)
    dataset = open_dataset(config.calib_data)
    total, fingerprint = len(dataset), dataset.fingerprint()
    sample = min(config.calib_examples, total)
    shards = min(config.shards, sample)
    specs = [
        ShardSpec(
            config.calib_data,
            fingerprint,
            total,
            sample,
            config.seed,
            shard,
            shards,
            config.batch_size,
            config.preprocess,
            config.on_bad_image,
        )
        for shard in range(shards)
    ]
    model = ModelRef(config.model, loaded.fingerprint, config.device, config.engine)
    tensors = tuple(calibration_tensors(graph))
    run_key = hashlib.sha256(f"{loaded.fingerprint} {fingerprint} {config.as_dict()}".encode()).hexdigest()
    out = Path(config.out)
    (out / HISTOGRAM_DIR).mkdir(parents=True, exist_ok=True)
    paths = [str(out / HISTOGRAM_DIR / partial_file_name(shard.shard)) for shard in specs]
    for stale in (out / HISTOGRAM_DIR).glob("*.parquet"):
        stale.unlink()
    with cluster_client(arguments.cluster, config.workers, config.device) as (client, kind):
        threads = threads_per_task(client)
        jobs = [(model, shard, tensors, config.num_bins, path, run_key, threads) for shard, path in zip(specs, paths)]
        cluster_seconds = time.perf_counter() - started
        backends = sorted(set(client.run(worker_backend, config.device).values()))
        observe_started = time.perf_counter()
        observed = run_shards(client, "observe", observe_shard, jobs)
        observe_seconds = time.perf_counter() - observe_started
    histograms = merge_partial_files(paths, loaded.fingerprint, config.num_bins)
    metadata = {  # as tasks/calibration/steps.write_table records them
        "model_sha256": loaded.fingerprint,
        "calibration_data": fingerprint,
        "calibration_examples": str(sample),
        "num_bins": str(config.num_bins),
    }
    table = build_calibration_table(histograms, config.threshold_settings(), metadata)
    write_calibration_table(table, str(out))
    summary = {
        "device": config.device,
        "cluster": kind,
        "worker_backends": backends,
        "examples": sum(shard.examples for shard in observed),
        "shards": len(observed),
        "tensors": len(table.tensors),
        "cluster_start_seconds": round(cluster_seconds, 2),
        "observe_seconds": round(observe_seconds, 2),
        "calibration_json_sha256": hashlib.sha256((out / CALIBRATION_JSON).read_bytes()).hexdigest(),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"calibrated ({config.device}): {json.dumps(summary)}")
    if arguments.expect_cluster and not kind.startswith(arguments.expect_cluster):
        print(f"FAIL: the cluster was {kind}, not {arguments.expect_cluster}", file=sys.stderr)
        return 1
    if config.device == "gpu" and not all(backend.startswith("cupy") for backend in backends):
        print(f"FAIL: --device gpu, but the workers compute with {backends}", file=sys.stderr)
        return 1
    return 0


def compare(arguments: argparse.Namespace) -> int:
    """0 when the two runs' tables are the same bytes (``--tensors``: the same tensor records)."""
    first, second = Path(arguments.first), Path(arguments.second)
    texts = [(folder / CALIBRATION_JSON).read_text() for folder in (first, second)]
    caches = [(folder / TENSORRT_CACHE).read_bytes() for folder in (first, second)]
    if texts[0] == texts[1] and caches[0] == caches[1]:
        digest = hashlib.sha256(texts[0].encode()).hexdigest()[:16]
        print(f"IDENTICAL: {first} and {second}: {CALIBRATION_JSON} and {TENSORRT_CACHE} (sha256 {digest}...)")
        return 0
    tables = [CalibrationTable.from_json(text, str(folder)) for text, folder in zip(texts, (first, second))]
    records = [{tensor.name: tensor for tensor in table.tensors} for table in tables]
    names = sorted(records[0].keys() | records[1].keys())
    differing = [name for name in names if records[0].get(name) != records[1].get(name)]
    metadata = sorted(
        key
        for key in tables[0].metadata.keys() | tables[1].metadata.keys()
        if tables[0].metadata.get(key) != tables[1].metadata.get(key)
    )
    print(
        f"{first} vs {second}: {len(differing)} of {len(names)} tensor records differ; metadata differs in {metadata}"
    )
    worst = []
    for name in differing:
        a, b = records[0].get(name), records[1].get(name)
        if a is None or b is None:
            print(f"  {name}: only in {'second' if a is None else 'first'}")
            continue
        worst.append((abs(a.threshold - b.threshold) / max(abs(a.threshold), 1e-30), name, a, b))
    for relative, name, a, b in sorted(worst, reverse=True)[:8]:
        print(
            f"  {name}: threshold {a.threshold!r} vs {b.threshold!r} (relative {relative:.2e}), "
            f"divergence {a.divergence!r} vs {b.divergence!r}"
        )
    if arguments.tensors and not differing:
        print(f"SAME TENSORS: {first} and {second} (metadata aside)")
        return 0
    print(f"DIFFERENT: {first} and {second}")
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make_subset = commands.add_parser("subset", help="the demo's calibration images as a small idx folder")
    make_subset.add_argument("source", help="idx folder with train-*-ubyte.gz (Debian's dataset-fashion-mnist)")
    make_subset.add_argument("destination")
    make_subset.add_argument("--examples", type=int, default=1024, help="the demo's --calib-examples")
    make_subset.add_argument("--seed", type=int, default=0, help="the demo's --seed (default)")
    run = commands.add_parser("calibrate", help="calibrate on a Dask cluster and write calibration.json")
    run.add_argument("--model", default=str(DEMO_MODEL))
    run.add_argument("--data", default=f"{CARRIED_DATA}#train", help="idx folder#split (default: %(default)s)")
    run.add_argument("--preprocess", default="mnist")
    run.add_argument("--examples", type=int, default=1024)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu")
    run.add_argument("--workers", type=int, default=0, help="0: the cluster's default (one per GPU with dask-cuda)")
    run.add_argument("--shards", type=int, default=8)
    run.add_argument("--out", required=True)
    run.add_argument(
        "--cluster",
        choices=("int8flow", "spawn"),
        default="int8flow",
        help="int8flow: tasks/distributed/cluster.dask_client (fork); spawn: a cluster with spawned workers",
    )
    run.add_argument("--expect-cluster", default="", help="fail unless the cluster's kind starts with this")
    check = commands.add_parser("compare", help="compare two runs' calibration tables bit for bit")
    check.add_argument("first")
    check.add_argument("second")
    check.add_argument("--tensors", action="store_true", help="pass when only the metadata differs")
    arguments = parser.parse_args()
    return {"subset": subset, "calibrate": calibrate, "compare": compare}[arguments.command](arguments)


if __name__ == "__main__":
    sys.exit(main())

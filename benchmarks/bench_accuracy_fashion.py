"""INT8 top-1 on Fashion-MNIST with its real labels: int8flow against quantize_static and NNCF.

The demo's ResNet (examples/models), calibrated on a seeded sample of the training images (as
``int8flow run`` samples them), scored on all 10,000 test images: top-1 against the labels, its drop
from FP32, and agreement with FP32's top-1. The models compared are ``accuracy_peers``'.

    .venv/bin/python benchmarks/bench_accuracy_fashion.py [--calib 1000] [--methods M ...] [--peers-only | --no-peers]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from accuracy_peers import add_selection_options, compared_models, logits
from bench_cli import FASHION_RESNET

from int8flow.tasks.data.mnist_idx import fashion_mnist_folder, load_mnist_split
from int8flow.tasks.distributed.shard_jobs import sample_indices
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.simplify import simplify


def scaled(images: np.ndarray) -> np.ndarray:
    """The ``mnist`` preprocessing preset: [0, 1], one channel."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calib", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    add_selection_options(parser)
    args = parser.parse_args()

    folder = fashion_mnist_folder()
    train_images, _ = load_mnist_split(folder, "train")
    test_images, labels = load_mnist_split(folder, "t10k")
    calib = scaled(train_images[sample_indices(len(train_images), args.calib, args.seed)])
    test = scaled(test_images)
    graph = simplify(load_graph(str(FASHION_RESNET))[0])
    name = graph.inputs[0].name
    session = ort.InferenceSession(str(FASHION_RESNET), providers=["CPUExecutionProvider"])
    fp32_top1 = logits(lambda x: session.run(None, {name: x})[0], test).argmax(axis=1)
    fp32_accuracy = (fp32_top1 == labels).mean() * 100
    print(f"{args.calib} calibration images, {len(test)} test images; FP32 top-1 {fp32_accuracy:.2f}%")
    print(f"{'method':<44}{'calibration s':>14}{'top-1':>8}{'drop':>7}{'agreement':>11}", flush=True)
    for label, seconds, predict in compared_models(args, str(FASHION_RESNET), graph, calib):
        top1 = logits(predict, test).argmax(axis=1)
        accuracy = (top1 == labels).mean() * 100
        agreement = (top1 == fp32_top1).mean()
        print(
            f"{label:<44}{seconds:>14.1f}{accuracy:>7.2f}%{fp32_accuracy - accuracy:>7.2f}{agreement:>11.2%}",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""What the accuracy benchmarks' command lines share: the models they measure unless told otherwise."""

from __future__ import annotations

import argparse
from pathlib import Path

EFFICIENTNET_LITE0 = "models/efficientnet_lite0.onnx"
"""Where ``make models`` exports ImageNet EfficientNet-Lite0 (the Makefile's ``EFFICIENTNET``)."""
FASHION_RESNET = Path(__file__).resolve().parents[1] / "examples" / "models" / "fashion_mnist_resnet.onnx"
"""The demo's Fashion-MNIST ResNet, committed with the examples."""


def model_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of the benchmark's docstring, with ``--model``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--model", default=EFFICIENTNET_LITE0, help="ONNX model (default: %(default)s)")
    return parser

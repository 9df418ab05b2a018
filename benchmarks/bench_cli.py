"""What the EfficientNet benchmarks' command lines share: the model they measure unless told otherwise."""

from __future__ import annotations

import argparse

EFFICIENTNET_LITE0 = "models/efficientnet_lite0.onnx"
"""Where ``make models`` exports ImageNet EfficientNet-Lite0 (the Makefile's ``EFFICIENTNET``)."""


def model_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of the benchmark's docstring, with ``--model``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--model", default=EFFICIENTNET_LITE0, help="ONNX model (default: %(default)s)")
    return parser

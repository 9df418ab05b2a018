"""INT8 vs FP32 top-1 agreement on EfficientNet-Lite0: int8flow against quantize_static and NNCF.

There are no labelled ImageNet images here, so every method is scored by how often its INT8 top-1
agrees with FP32's, on real photo crops (bundled with scikit-image / scikit-learn), overall and on
confident crops (FP32 top-1 probability >= 0.5). Same calibration crops and validation crops for
everyone, same run; the models compared are ``accuracy_peers``'.

    .venv/bin/python benchmarks/bench_accuracy_efficientnet.py [--calib 512] [--val 1024]
        [--methods M ...] [--peers-only | --no-peers]
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from accuracy_peers import add_selection_options, compared_models, logits
from bench_cli import model_parser

from int8flow.tasks.data.photos import photo_crops
from int8flow.tasks.graph.load import load_graph
from int8flow.tasks.graph.simplify import simplify


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--calib", type=int, default=512)
    parser.add_argument("--val", type=int, default=1024)
    add_selection_options(parser)
    args = parser.parse_args()

    calib = photo_crops(args.calib, seed=11)
    val = photo_crops(args.val, seed=12)
    graph = simplify(load_graph(args.model)[0])
    name = graph.inputs[0].name
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    fp32_logits = logits(lambda x: session.run(None, {name: x})[0], val)
    fp32_top1 = fp32_logits.argmax(axis=1)
    confident = softmax(fp32_logits).max(axis=1) >= 0.5
    print(f"{args.calib} calibration crops, {args.val} validation crops ({confident.sum()} confident)")
    print(f"{'method':<44}{'calibration s':>14}{'agreement':>11}{'confident':>11}", flush=True)
    for label, seconds, predict in compared_models(args, args.model, graph, calib):
        agree = logits(predict, val).argmax(axis=1) == fp32_top1
        print(f"{label:<44}{seconds:>14.1f}{agree.mean():>11.2%}{agree[confident].mean():>11.2%}", flush=True)


if __name__ == "__main__":
    main()

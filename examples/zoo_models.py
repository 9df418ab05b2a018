"""Export torchvision and timm classifiers to ONNX, as a platform team's model zoo would hold them.

The zoo check (``benchmarks/bench_zoo.py``, its CI subset in ``tests/test_zoo.py``) needs the
architectures, not their trained weights: the ops an export emits, and activations shaped like real
ones, decide whether int8flow loads, matches onnxruntime and quantizes a model. So the weights are
seeded random (no downloads), and the BatchNorm statistics are then estimated on real photo crops
(``photo_crops``), which keeps activations in the range a trained network has instead of growing
layer by layer. Each model is exported by both torch exporters with a dynamic batch:

- ``torchscript``: ``torch.onnx.export(dynamo=False)``, opset 17, ``dynamic_axes``;
- ``dynamo``: ``torch.onnx.export(dynamo=True)``, opset 18, ``dynamic_shapes``.

Both trace at batch 2, so the batch stays symbolic. Files are ``<source>-<name>-<exporter>.onnx``,
written under a temporary name and renamed; a file already there is kept. A failed export is named
on one line and the others go on; the exit status is non-zero when any failed.

    python examples/zoo_models.py --out models/zoo --subset ci --exporter both
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import timm
import torch
import torchvision

from int8flow.tasks.data.photos import photo_crops

EXPORTERS = {"torchscript": 17, "dynamo": 18}
"""Exporter -> the opset it writes."""
TRACE_BATCH = 2
BN_CROPS = 16


@dataclass(frozen=True)
class Architecture:
    """One zoo entry: where it comes from, how to build it, its input size in the full zoo and in CI."""

    source: str
    name: str
    build: Callable[[], torch.nn.Module]
    size: int = 224
    ci_size: int | None = None
    """Input size in the CI subset; None: not in the CI subset."""

    @property
    def key(self) -> str:
        return f"{self.source}-{self.name}"


def _torchvision(name: str, **kwargs: object) -> Callable[[], torch.nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, **kwargs)


def _timm(name: str) -> Callable[[], torch.nn.Module]:
    return lambda: timm.create_model(name, pretrained=False)


CI_SIZE = 64
ZOO = {
    "torchvision": (
        "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "mnasnet1_0",
        "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "regnet_x_400mf", "regnet_y_400mf", "resnet18",
        "resnet50", "resnext50_32x4d", "wide_resnet50_2", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
        "squeezenet1_1", "vgg11_bn",
    ),
    "timm": (
        "resnet18d", "efficientnet_b0", "tf_efficientnet_lite0", "mobilenetv3_large_100", "mixnet_s", "ghostnet_100",
        "rexnet_100", "regnety_002", "repvgg_a0", "cspresnet50", "dpn68", "hrnet_w18_small", "convnext_atto",
        "levit_128s",
    ),
}  # fmt: skip
CI_SUBSET = {
    "torchvision": ("mobilenet_v3_small", "resnet18", "shufflenet_v2_x0_5"),
    "timm": ("mixnet_s", "ghostnet_100", "repvgg_a0", "hrnet_w18_small", "convnext_atto"),
}
BUILDERS = {"torchvision": _torchvision, "timm": _timm}
ARCHITECTURES = [
    *(
        Architecture(source, name, BUILDERS[source](name), ci_size=CI_SIZE if name in CI_SUBSET[source] else None)
        for source, names in ZOO.items()
        for name in names
    ),
    Architecture("torchvision", "googlenet", _torchvision("googlenet", aux_logits=False, init_weights=True)),
    Architecture("torchvision", "inception_v3", _torchvision("inception_v3", aux_logits=False, init_weights=True), 299),
]
"""The zoo. The CI subset covers what the ops set must: standalone BatchNormalization (repvgg),
channel shuffle on a dynamic batch (shufflenet), Split (mixnet), Slice (ghostnet), Resize (hrnet),
LayerNorm and GELU (convnext), squeeze-excitation and hard-swish (mobilenet_v3), a plain ResNet;
at 64x64, which every one of them takes."""


def estimate_batchnorm_statistics(model: torch.nn.Module, size: int, seed: int) -> None:
    """Running mean and variance from photo crops (a cumulative average, only BatchNorm in train
    mode, so dropout stays off), then eval mode for the export."""
    model.eval()
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        model(torch.from_numpy(photo_crops(BN_CROPS, seed, size)))
    model.eval()


def export(model: torch.nn.Module, size: int, exporter: str, out: Path) -> None:
    example = (torch.zeros(TRACE_BATCH, 3, size, size),)
    names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": EXPORTERS[exporter]}
    tmp = out.with_name(out.name + ".tmp")
    if exporter == "torchscript":
        axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(model, example, str(tmp), dynamo=False, dynamic_axes=axes, **names)
        proto = onnx.load(str(tmp))
    else:
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(model, example, dynamo=True, dynamic_shapes=({0: batch},), optimize=True, **names)
        proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp), save_as_external_data=False)
    tmp.replace(out)


def check_logits(model: torch.nn.Module, size: int, seed: int) -> None:
    """Seeded weights must still give a classifier's logits: finite, and not one value for all."""
    with torch.no_grad():
        logits = model(torch.from_numpy(photo_crops(4, seed + 1, size))).numpy()
    if not np.isfinite(logits).all() or np.ptp(logits) == 0:
        raise RuntimeError("the seeded model's logits are not finite or all equal")


def export_architecture(architecture: Architecture, size: int, exporters: list[str], out: Path, seed: int) -> list[str]:
    """Export one architecture with each exporter; the failures, one line each."""
    targets = {exporter: out / f"{architecture.key}-{exporter}.onnx" for exporter in exporters}
    missing = {exporter: path for exporter, path in targets.items() if not path.exists()}
    if not missing:
        return []
    torch.manual_seed(seed)
    model = architecture.build()
    estimate_batchnorm_statistics(model, size, seed)
    check_logits(model, size, seed)
    failures = []
    for exporter, path in missing.items():
        start = time.perf_counter()
        try:
            export(model, size, exporter, path)
        except Exception as error:  # noqa: BLE001 - name the failure and go on with the others
            failures.append(f"{architecture.key} ({exporter}): {type(error).__name__}: {error}".splitlines()[0])
            print(f"FAILED {failures[-1]}", file=sys.stderr)
            continue
        print(f"{path.name}: {time.perf_counter() - start:.1f} s", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .onnx files")
    parser.add_argument("--subset", default="ci", choices=("ci", "full"))
    parser.add_argument("--exporter", default="both", choices=(*EXPORTERS, "both"))
    parser.add_argument("--only", help="comma-separated architecture names (either source)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    exporters = list(EXPORTERS) if args.exporter == "both" else [args.exporter]
    chosen = [a for a in ARCHITECTURES if args.subset == "full" or a.ci_size is not None]
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {a.name for a in ARCHITECTURES}
        if unknown:
            parser.error(f"--only: unknown architecture(s) {sorted(unknown)}")
        chosen = [a for a in chosen if a.name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    failures = []
    for architecture in chosen:
        size = architecture.ci_size if args.subset == "ci" and architecture.ci_size else architecture.size
        try:
            failures += export_architecture(architecture, size, exporters, args.out, args.seed)
        except Exception as error:  # noqa: BLE001 - a model that cannot be built fails alone
            failures.append(f"{architecture.key}: {type(error).__name__}: {error}".splitlines()[0])
            print(f"FAILED {failures[-1]}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} export(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

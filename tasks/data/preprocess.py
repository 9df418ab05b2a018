"""How decoded images become model inputs: channels, resize, centre crop, scale and normalise.

Calibration is only as good as the match between its inputs and what the model saw in training, so
the preprocessing is one explicit value — a preset or a ``key=value`` spec given as ``--preprocess``
— that is checked against the model's input shape before any worker starts and is recorded with the
run. Resizing uses Pillow's bilinear filter on uint8 pixels, as TF and torchvision pipelines do, so
the same image gives the same tensor on every worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image

Channels = Literal["rgb", "bgr", "gray"]
CHANNEL_ORDERS: tuple[Channels, ...] = ("rgb", "bgr", "gray")
# Limits that catch absurd sizes at plan time rather than as a MemoryError on a worker.
MAX_IMAGE_SIDE = 16384
MAX_INPUT_BATCH_BYTES = 1 << 30
KEYS = ("resize", "crop", "scale", "mean", "std", "channels")
_EXAMPLES = {
    "resize": "resize=256",
    "crop": "crop=224",
    "scale": "scale=0.00392156862745098",
    "mean": "mean=123.7/116.3/103.5",
    "std": "std=58.4/57.1/57.4",
    "channels": "channels=rgb",
}


def channel_count(channels: Channels) -> int:
    """How many channels the model input has for images in this channel order."""
    return 1 if channels == "gray" else 3


class PreprocessError(ValueError):
    """A ``--preprocess`` value is malformed, or its output cannot feed the model's input."""


@dataclass(frozen=True)
class PreprocessSpec:
    """Output = ((pixels * scale) - mean) / std in float32, NCHW, after the optional resize and crop.

    ``resize`` scales the short side to that many pixels (bilinear); ``crop`` takes the centred
    square of that side. ``mean`` and ``std`` hold one value or one per channel, in the output
    channel order (B, G, R for ``bgr``).
    """

    resize: int | None = None
    crop: int | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: Channels = "rgb"

    def __post_init__(self) -> None:
        for key in ("resize", "crop"):
            size = getattr(self, key)
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                raise PreprocessError(f"{key}={size}: must be a whole number of pixels >= 1, or none")
            if size is not None and size > MAX_IMAGE_SIDE:
                raise PreprocessError(f"{key}={size}: more than {MAX_IMAGE_SIDE} pixels, int8flow's limit for a side")
        if self.channels not in CHANNEL_ORDERS:
            raise PreprocessError(f"channels={self.channels}: use one of {', '.join(CHANNEL_ORDERS)}")
        # Lists given by callers compare equal to the presets' tuples once normalised.
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "mean", tuple(float(value) for value in self.mean))
        object.__setattr__(self, "std", tuple(float(value) for value in self.std))
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise PreprocessError(f"scale={self.scale}: must be a finite number > 0, e.g. {_EXAMPLES['scale']}")
        count = channel_count(self.channels)
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, count) or not all(math.isfinite(value) for value in values):
                if count == 3:
                    wanted = f"1 or 3 finite values separated by '/', e.g. {_EXAMPLES[key]}"
                else:
                    wanted = f"1 finite value, e.g. {key}=0.5"
                raise PreprocessError(f"{key}={_numbers_text(values)}: channels={self.channels} needs {wanted}")
        if 0.0 in self.std:
            raise PreprocessError(f"std={_numbers_text(self.std)}: must not be zero")
        # resize sets the short side exactly, so a larger crop fails on every image; refuse it at parse time.
        if self.resize is not None and self.crop is not None and self.crop > self.resize:
            raise PreprocessError(
                f"crop={self.crop} is larger than resize={self.resize} (the short side after resizing); "
                f"crop at most {self.resize} or resize to at least {self.crop}"
            )

    def __str__(self) -> str:
        """The spec as ``--preprocess`` text that ``parse_preprocess`` reads back to an equal spec."""
        return ",".join(
            [
                f"resize={'none' if self.resize is None else self.resize}",
                f"crop={'none' if self.crop is None else self.crop}",
                f"scale={_number_text(self.scale)}",
                f"mean={_numbers_text(self.mean)}",
                f"std={_numbers_text(self.std)}",
                f"channels={self.channels}",
            ]
        )


PRESETS: dict[str, PreprocessSpec] = {
    # EfficientNet-Lite and other TF-slim models: (x - 127) / 128.
    "imagenet-tf": PreprocessSpec(resize=256, crop=224, scale=1.0, mean=(127.0,), std=(128.0,), channels="rgb"),
    # torchvision's ImageNet models: ToTensor() then Normalize(mean, std).
    "imagenet-torch": PreprocessSpec(
        resize=256, crop=224, scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channels="rgb"
    ),
    "mnist": PreprocessSpec(resize=None, crop=None, scale=1 / 255, mean=(0.0,), std=(1.0,), channels="gray"),
}


def parse_preprocess(text: str) -> PreprocessSpec:
    """A preset name, ``key=value`` pairs, or a preset followed by overriding pairs, comma-separated:
    ``imagenet-tf``, ``resize=32,crop=28,scale=0.0039,channels=gray``, ``imagenet-tf,crop=200``."""
    try:
        return _parsed(text)
    except PreprocessError as error:
        raise PreprocessError(f"--preprocess {text!r}: {error}") from None


def check_fits(spec: PreprocessSpec, input_shape: tuple[int | None, ...], source: str) -> None:
    """Refuse a spec whose tensors cannot feed an NCHW model input, before any data is read.

    ``source`` is the ``--preprocess`` text the user gave, so the message quotes it back.
    """
    misfit = _misfit(spec, input_shape)
    if misfit is None:
        return
    reason, fix = misfit
    fitting = [repr(name) for name, preset in PRESETS.items() if _misfit(preset, input_shape) is None]
    remedy = f"use --preprocess {' or '.join(fitting)}, or {fix}" if fitting else fix
    raise PreprocessError(
        f"--preprocess {source!r} does not fit the model input {_shape_text(input_shape)}: {reason}; {remedy}"
    )


def check_batch_fits(spec: PreprocessSpec, input_shape: tuple[int | None, ...], batch_size: int) -> None:
    """Refuse a batch whose inputs alone exceed ``MAX_INPUT_BATCH_BYTES``: it would fail on a worker, late."""
    _, _, height, width = input_shape
    height, width = height or spec.crop or spec.resize, width or spec.crop or spec.resize
    if height is None or width is None:
        return
    example_bytes = channel_count(spec.channels) * height * width * np.dtype(np.float32).itemsize
    if batch_size * example_bytes > MAX_INPUT_BATCH_BYTES:
        fitting = max(1, MAX_INPUT_BATCH_BYTES // example_bytes)
        raise PreprocessError(
            f"--batch-size {batch_size}: a batch of {channel_count(spec.channels)}x{height}x{width} float32 inputs is "
            f"{batch_size * example_bytes / 2**30:.1f} GiB, more than the {MAX_INPUT_BATCH_BYTES >> 30} GiB a batch "
            f"may hold (its activations take more); use --batch-size {fitting} or less"
        )


def preprocess_batch(
    images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    input_shape: tuple[int | None, ...],
    sources: Sequence[str] | None = None,
) -> np.ndarray:
    """float32 (N, C, H, W) model inputs from uint8 HxW (grey) or HxWx3 (RGB) images.

    Channels are converted first (grey from RGB is Pillow's ITU-R 601 luma; RGB from grey repeats
    it), then resized and cropped. ``sources`` name the images in error messages.
    """
    check_fits(spec, input_shape, str(spec))
    names = list(sources) if sources is not None else [f"image {index} of the batch" for index in range(len(images))]
    _, _, height, width = input_shape
    count = channel_count(spec.channels)
    if not images:
        return np.empty((0, count, height or 0, width or 0), dtype=np.float32)
    pixels = [_fitted_pixels(image, spec, name) for image, name in zip(images, names, strict=True)]
    _check_sizes(pixels, names, height, width)
    batch = np.stack(pixels).reshape(len(pixels), *pixels[0].shape[:2], count)
    if spec.channels == "bgr":
        batch = batch[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    values = (batch.astype(np.float32) * np.float32(spec.scale) - mean) / std
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


def _resize_short_side(image: Image.Image, short: int) -> Image.Image:
    """Bilinear resize so the short side is ``short``; the long side keeps the aspect ratio, rounded."""
    width, height = image.size
    ratio = short / min(width, height)
    size = (max(short, round(width * ratio)), max(short, round(height * ratio)))
    return image.resize(size, Image.Resampling.BILINEAR)


def _fitted_pixels(image: np.ndarray, spec: PreprocessSpec, name: str) -> np.ndarray:
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise PreprocessError(
            f"{name}: image of shape {image.shape} and dtype {image.dtype}; expected uint8 HxW (grey) or HxWx3 (RGB)"
        )
    picture = Image.fromarray(image).convert("L" if spec.channels == "gray" else "RGB")
    if spec.resize is not None:
        picture = _resize_short_side(picture, spec.resize)
    if spec.crop is not None:
        width, height = picture.size
        if min(width, height) < spec.crop:
            resized = " after resize" if spec.resize is not None else ""
            raise PreprocessError(
                f"{name}: image is {height}x{width} (HxW){resized}, smaller than crop={spec.crop}; "
                f"add resize={spec.crop} (or more) so every image covers the crop"
            )
        left, top = (width - spec.crop) // 2, (height - spec.crop) // 2
        picture = picture.crop((left, top, left + spec.crop, top + spec.crop))
    return np.asarray(picture)


def _check_sizes(pixels: list[np.ndarray], names: list[str], height: int | None, width: int | None) -> None:
    first = pixels[0].shape[:2]
    for image, name in zip(pixels, names):
        size = image.shape[:2]
        if (height is not None and size[0] != height) or (width is not None and size[1] != width):
            target = f"{height or '?'}x{width or '?'}"
            fix = f"add crop={height} (with resize={height} or more)" if height == width else f"store them at {target}"
            raise PreprocessError(
                f"{name}: preprocessed to {size[0]}x{size[1]} (HxW) but the model input needs {target}; {fix}"
            )
        if size != first:
            raise PreprocessError(
                f"{name}: preprocessed to {size[0]}x{size[1]} (HxW) but {names[0]} to {first[0]}x{first[1]}; "
                "images of one batch need equal sizes: add crop=SIZE (with resize=SIZE or more)"
            )


def _misfit(spec: PreprocessSpec, input_shape: tuple[int | None, ...]) -> tuple[str, str] | None:
    """Why ``spec`` cannot feed ``input_shape``, and the change to the spec that fixes it."""
    if len(input_shape) != 4:
        return "the input is not NCHW (4 dimensions)", "int8flow calibrates image models with NCHW inputs only"
    _, channels, height, width = input_shape
    count = channel_count(spec.channels)
    if channels is not None and channels != count:
        plural = "" if channels == 1 else "s"
        produced = f"{count}-channel ({spec.channels}) images but the model input has {channels} channel{plural}"
        if channels == 1:
            return produced, "add channels=gray"
        if channels == 3:
            return produced, "add channels=rgb (or bgr)"
        return produced, "only 1-channel (gray) or 3-channel (rgb, bgr) inputs are supported"
    if max(height or 0, width or 0) > MAX_IMAGE_SIDE:
        return (
            f"a side over {MAX_IMAGE_SIDE} pixels is beyond int8flow's limit",
            "check the model's declared input size",
        )
    if spec.crop is not None and height is not None and width is not None and (spec.crop, spec.crop) != (height, width):
        produced = f"crop={spec.crop} makes {spec.crop}x{spec.crop} images but the model input is {height}x{width}"
        if height == width:
            return produced, f"add crop={height}"
        return produced, f"add resize=none,crop=none and store images at {height}x{width} (HxW)"
    return None


def _parsed(text: str) -> PreprocessSpec:
    items = [item.strip() for item in text.split(",")]
    base, overrides = PreprocessSpec(), items
    if "=" not in items[0]:
        if items[0] not in PRESETS:
            raise PreprocessError(
                f"unknown preset {items[0]!r}; use one of {', '.join(PRESETS)}, "
                f"or key=value pairs with keys {', '.join(KEYS)}"
            )
        base, overrides = PRESETS[items[0]], items[1:]
    changes: dict[str, object] = {}
    for item in overrides:
        key, separator, value = (part.strip() for part in item.partition("="))
        if not separator:
            raise PreprocessError(
                f"{item!r} is not key=value (a preset name may only come first); keys: {', '.join(KEYS)}"
            )
        if key not in _PARSERS:
            raise PreprocessError(f"unknown key {key!r}; valid keys: {', '.join(KEYS)}")
        if key in changes:
            raise PreprocessError(f"key {key!r} given twice; keep one")
        changes[key] = _PARSERS[key](key, value)
    return replace(base, **changes)  # type: ignore[arg-type]


def _size(key: str, value: str) -> int | None:
    if value.lower() == "none":
        return None
    if not (value.isascii() and value.isdigit()):
        raise PreprocessError(f"{key}={value!r} is not a whole number of pixels or none; e.g. {_EXAMPLES[key]}")
    return int(value)


def _number(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise PreprocessError(f"{key}={value!r} is not a number; e.g. {_EXAMPLES[key]}") from None


def _numbers(key: str, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in value.split("/"))
    except ValueError:
        raise PreprocessError(
            f"{key}={value!r} is not a number or '/'-separated numbers; e.g. {_EXAMPLES[key]}"
        ) from None


def _channels(key: str, value: str) -> str:
    if value not in CHANNEL_ORDERS:
        raise PreprocessError(f"{key}={value!r}: use one of {', '.join(CHANNEL_ORDERS)}")
    return value


_PARSERS: dict[str, Callable[[str, str], object]] = {
    "resize": _size,
    "crop": _size,
    "scale": _number,
    "mean": _numbers,
    "std": _numbers,
    "channels": _channels,
}


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _numbers_text(values: tuple[float, ...]) -> str:
    return "/".join(_number_text(value) for value in values)


def _shape_text(shape: tuple[int | None, ...]) -> str:
    dims = ["N" if index == 0 and dim is None else "?" if dim is None else str(dim) for index, dim in enumerate(shape)]
    return "(" + ", ".join(dims) + ")"

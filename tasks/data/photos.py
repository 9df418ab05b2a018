"""Real photos shipped inside package wheels, and seeded random crops of them for ImageNet models.

There is no labelled ImageNet data on our machines, but calibration and FP32-agreement checks need
real images, not noise. scikit-image ships a handful of photos inside its wheel (the files behind
``skimage.data.astronaut()`` etc.) and scikit-learn ships two (``load_sample_image("china.jpg")``).
They are read straight from the installed packages with PIL: nothing is downloaded and neither
package is imported. ``photo_crops`` turns these dozen photos into any number of distinct, seeded
crops, preprocessed the way EfficientNet-Lite ("imagenet-tf") expects.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import replace

import numpy as np
from PIL import Image

from int8flow.tasks.data.preprocess import PRESETS, preprocess_batch

# name -> (package, path inside the package). Colour photos first, then three grey ones (as RGB).
_PHOTO_FILES = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "camera": ("skimage", "data/camera.png"),
    "coins": ("skimage", "data/coins.png"),
    "grass": ("skimage", "data/grass.png"),
}
_DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn"}

PHOTO_NAMES: tuple[str, ...] = tuple(_PHOTO_FILES)
"""The photos ``load_photo`` and ``photo_crops`` use, in the order ``photo_crops`` indexes them."""

# Random-crop ranges: the crop covers 25-100 % of the photo's area with an aspect ratio in [3/4, 4/3].
_AREA_RANGE = (0.25, 1.0)
_LOG_ASPECT_RANGE = (math.log(3 / 4), math.log(4 / 3))


def load_photo(name: str) -> np.ndarray:
    """The photo ``name`` (one of ``PHOTO_NAMES``) as read-only uint8 RGB, shape (H, W, 3)."""
    array = np.asarray(_photo_image(name))
    array.setflags(write=False)
    return array


def preprocess_imagenet_tf(image: Image.Image | np.ndarray, size: int = 224) -> np.ndarray:
    """float32 (3, size, size): the ``imagenet-tf`` preset (EfficientNet-Lite's ``(x - 127) / 128``)
    with its 256/224 resize-to-crop ratio kept for other sizes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    spec = replace(PRESETS["imagenet-tf"], resize=round(size * 256 / 224), crop=size)
    return preprocess_batch([np.asarray(image.convert("RGB"))], spec, (1, 3, size, size))[0]


def photo_crops(count: int, seed: int, size: int = 224) -> np.ndarray:
    """``count`` seeded random crops of the bundled photos, float32 (count, 3, size, size).

    Each crop picks a photo, an area (25-100 % of the photo), an aspect ratio (3/4 to 4/3), a
    position and a horizontal flip, all from ``numpy.random.default_rng(seed)``, then goes through
    ``preprocess_imagenet_tf``. Values lie in [-127/128, 1]. The same seed gives the same crops, and
    the first k crops of a longer run equal a run of k.
    """
    if count < 0:
        raise ValueError(f"count {count}: must be >= 0")
    if size < 1:
        raise ValueError(f"size {size}: must be >= 1")
    rng = np.random.default_rng(seed)
    crops = np.empty((count, 3, size, size), dtype=np.float32)
    for index in range(count):
        name = PHOTO_NAMES[int(rng.integers(len(PHOTO_NAMES)))]
        area_fraction = rng.uniform(*_AREA_RANGE)
        aspect = math.exp(rng.uniform(*_LOG_ASPECT_RANGE))
        x_fraction, y_fraction = rng.random(), rng.random()
        flip = rng.random() < 0.5
        image = _photo_image(name)
        width, height = image.size
        area = area_fraction * width * height
        crop_width = min(width, max(1, round(math.sqrt(area * aspect))))
        crop_height = min(height, max(1, round(math.sqrt(area / aspect))))
        left = int(x_fraction * (width - crop_width + 1))
        top = int(y_fraction * (height - crop_height + 1))
        crop = image.crop((left, top, left + crop_width, top + crop_height))
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops[index] = preprocess_imagenet_tf(crop, size)
    return crops


@functools.cache
def _photo_image(name: str) -> Image.Image:
    if name not in _PHOTO_FILES:
        raise ValueError(f"photo {name!r}: unknown; use one of {', '.join(PHOTO_NAMES)}")
    package, relative = _PHOTO_FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"photo {name!r}: package {package} is not installed; `pip install {_DISTRIBUTIONS[package]}`"
        )
    path = os.path.join(spec.submodule_search_locations[0], relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: photo {name!r} missing from the installed {_DISTRIBUTIONS[package]}")
    with Image.open(path) as image:
        return image.convert("RGB")

"""Real data for calibration and validation, read from files that packages install.

- ``mnist_idx``: MNIST-format idx files, and where Debian's ``dataset-fashion-mnist`` puts them.
- ``photos``: real photos shipped inside the scikit-image and scikit-learn wheels, and seeded
  random crops of them preprocessed for ImageNet models.
- ``sources``: user data sets named by a URI (Parquet, ImageFolder, idx folder with a split), read a
  few examples at a time, and ``load_batch`` that turns them into model inputs.
- ``preprocess``: the ``--preprocess`` presets and specs, and the pixel math they stand for.

Nothing here downloads anything.
"""

from int8flow.tasks.data.mnist_idx import (
    FASHION_MNIST_CLASSES,
    DatasetError,
    fashion_mnist_folder,
    load_mnist_split,
    read_idx_images,
    read_idx_labels,
)
from int8flow.tasks.data.photos import PHOTO_NAMES, load_photo, photo_crops, preprocess_imagenet_tf
from int8flow.tasks.data.preprocess import (
    PRESETS,
    PreprocessError,
    PreprocessSpec,
    check_fits,
    parse_preprocess,
    preprocess_batch,
)
from int8flow.tasks.data.sources import Batch, ImageDataset, RawExamples, decode_image, load_batch, open_dataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "PHOTO_NAMES",
    "PRESETS",
    "Batch",
    "DatasetError",
    "ImageDataset",
    "PreprocessError",
    "PreprocessSpec",
    "RawExamples",
    "check_fits",
    "decode_image",
    "fashion_mnist_folder",
    "load_batch",
    "load_mnist_split",
    "load_photo",
    "open_dataset",
    "parse_preprocess",
    "photo_crops",
    "preprocess_batch",
    "preprocess_imagenet_tf",
    "read_idx_images",
    "read_idx_labels",
]

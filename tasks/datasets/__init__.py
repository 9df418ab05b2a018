"""Real data for calibration and validation, read from files that packages install.

- ``mnist_idx``: MNIST-format idx files, and where Debian's ``dataset-fashion-mnist`` puts them.
- ``photos``: real photos shipped inside the scikit-image and scikit-learn wheels, and seeded
  random crops of them preprocessed for ImageNet models.

Nothing here downloads anything.
"""

from tasks.datasets.mnist_idx import (
    FASHION_MNIST_CLASSES,
    DatasetError,
    fashion_mnist_folder,
    load_mnist_split,
    read_idx_images,
    read_idx_labels,
)
from tasks.datasets.photos import PHOTO_NAMES, load_photo, photo_crops, preprocess_imagenet_tf

__all__ = [
    "FASHION_MNIST_CLASSES",
    "PHOTO_NAMES",
    "DatasetError",
    "fashion_mnist_folder",
    "load_mnist_split",
    "load_photo",
    "photo_crops",
    "preprocess_imagenet_tf",
    "read_idx_images",
    "read_idx_labels",
]

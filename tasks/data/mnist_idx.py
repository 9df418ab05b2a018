"""MNIST-format idx files (MNIST, Fashion-MNIST): images and labels as NumPy arrays.

The format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): a big-endian header of two zero
bytes, a type code (0x08: unsigned byte), the number of dimensions, then one 32-bit size per
dimension; the data follows, row-major. Files may be gzipped (detected by their magic bytes, not
their name). Paths may be local or any fsspec URL. Every error is one line naming the file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Literal

import fsspec
import numpy as np

FASHION_MNIST_FOLDER = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package installs the four idx ``.gz`` files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """A data set file is missing, unreadable or not what its name says."""


def read_idx_images(path: str) -> np.ndarray:
    """The images of an idx3 file: uint8, shape (N, rows, cols) ((N, 28, 28) for MNIST)."""
    return _read_idx(path, ndim=3, what="images")


def read_idx_labels(path: str) -> np.ndarray:
    """The labels of an idx1 file: int64, shape (N,)."""
    return _read_idx(path, ndim=1, what="labels").astype(np.int64)


def load_mnist_split(folder: str, split: Literal["train", "t10k"]) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split from ``{split}-images-idx3-ubyte[.gz]`` and
    ``{split}-labels-idx1-ubyte[.gz]`` in ``folder`` (a local path or fsspec URL)."""
    if split not in ("train", "t10k"):
        raise DatasetError(f"split {split!r}: use 'train' or 't10k'")
    images_path = _find_idx_file(folder, f"{split}-images-idx3-ubyte")
    labels_path = _find_idx_file(folder, f"{split}-labels-idx1-ubyte")
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels; "
            "the two files belong to different data sets"
        )
    return images, labels


def fashion_mnist_folder() -> str:
    """The folder holding Fashion-MNIST's idx files, installed by the Debian package."""
    expected = [f"{split}-{kind}-ubyte.gz" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]
    missing = [name for name in expected if not os.path.isfile(os.path.join(FASHION_MNIST_FOLDER, name))]
    if missing:
        raise DatasetError(
            f"{os.path.join(FASHION_MNIST_FOLDER, missing[0])}: Fashion-MNIST not found; "
            "install it with `apt-get install dataset-fashion-mnist`"
        )
    return FASHION_MNIST_FOLDER


def _find_idx_file(folder: str, stem: str) -> str:
    fs, root = fsspec.core.url_to_fs(folder)
    for name in (stem, stem + ".gz"):
        if fs.isfile(f"{root.rstrip('/')}/{name}"):
            return f"{folder.rstrip('/')}/{name}"
    raise DatasetError(f"{folder.rstrip('/')}/{stem}[.gz]: file not found in {folder}")


def _read_idx(path: str, ndim: int, what: str) -> np.ndarray:
    data = _read_bytes(path)
    kind = "idx3 (images)" if ndim == 3 else "idx1 (labels)"
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated idx file ({len(data)} bytes, not even a header)")
    magic = int.from_bytes(data[:4], "big")
    expected_magic = (_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise DatasetError(
            f"{path}: bad magic number 0x{magic:08x} (expected 0x{expected_magic:08x}); not an {kind} file"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(f"{path}: truncated idx file ({len(data)} bytes, header needs {header_size})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_size = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) < expected_size:
        raise DatasetError(
            f"{path}: truncated idx file: header says {shape[0]} {what} of shape {shape[1:]} "
            f"({expected_size} bytes), file has {len(data)}"
        )
    if len(data) > expected_size:
        raise DatasetError(
            f"{path}: {len(data) - expected_size} bytes after the {shape[0]} {what} the header announces; "
            "corrupt or not an idx file"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read the file ({error})") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except EOFError:
            raise DatasetError(f"{path}: truncated gzip stream; download or copy the file again") from None
        except (OSError, zlib.error) as error:
            raise DatasetError(f"{path}: corrupt gzip file ({error})") from None
    return data

"""Real data readers: MNIST-format idx files and the bundled photos."""

from __future__ import annotations

import gzip
import os
import re

import fsspec
import numpy as np
import pytest

from int8flow.tasks.data import (
    FASHION_MNIST_CLASSES,
    PHOTO_NAMES,
    DatasetError,
    fashion_mnist_folder,
    load_mnist_split,
    load_photo,
    photo_crops,
    read_idx_images,
    read_idx_labels,
)
from int8flow.tasks.data.mnist_idx import FASHION_MNIST_FOLDER


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(folder, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    suffix = ".gz" if gz else ""
    for stem, array in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        (folder / (stem + suffix)).write_bytes(gzip.compress(data, mtime=0) if gz else data)


@pytest.fixture
def small_split() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=5)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_split_round_trips(tmp_path, small_split, gz):
    images, labels = small_split
    write_split(tmp_path, "train", images, labels, gz)
    loaded_images, loaded_labels = load_mnist_split(str(tmp_path), "train")
    assert loaded_images.dtype == np.uint8 and loaded_images.shape == (5, 28, 28)
    assert loaded_labels.dtype == np.int64 and loaded_labels.shape == (5,)
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_labels, labels)


def test_gzip_is_detected_by_content_not_name(tmp_path, small_split):
    images, _ = small_split
    path = tmp_path / "images-without-suffix"
    path.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(read_idx_images(str(path)), images)


def test_reads_fsspec_urls(small_split):
    images, labels = small_split
    for stem, array in (("t10k-images-idx3-ubyte.gz", images), ("t10k-labels-idx1-ubyte", labels)):
        with fsspec.open(f"memory://idx-test/{stem}", "wb") as file:
            file.write(gzip.compress(idx_bytes(array)) if stem.endswith(".gz") else idx_bytes(array))
    loaded_images, loaded_labels = load_mnist_split("memory://idx-test", "t10k")
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_labels, labels)


def test_missing_file_names_the_file(tmp_path, small_split):
    images, labels = small_split
    write_split(tmp_path, "train", images, labels, gz=True)
    os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\[\.gz\]: file not found"):
        load_mnist_split(str(tmp_path), "train")
    with pytest.raises(DatasetError, match=r"nothing\.gz: file not found"):
        read_idx_labels(str(tmp_path / "nothing.gz"))


def test_bad_magic_number_names_the_file(tmp_path, small_split):
    _, labels = small_split
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(labels))
    with pytest.raises(
        DatasetError, match=rf"{re.escape(str(path))}: bad magic number 0x00000801 \(expected 0x00000803\)"
    ):
        read_idx_images(str(path))


@pytest.mark.parametrize("cut", [2, 10, 100], ids=["header", "dimensions", "data"])
def test_truncated_file_names_the_file(tmp_path, small_split, cut):
    images, _ = small_split
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:cut])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: truncated idx file"):
        read_idx_images(str(path))


def test_truncated_gzip_names_the_file(tmp_path, small_split):
    images, _ = small_split
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-20])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: truncated gzip stream"):
        read_idx_images(str(path))


def test_trailing_bytes_name_the_file(tmp_path, small_split):
    _, labels = small_split
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(labels) + b"\0")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: 1 bytes after the 5 labels"):
        read_idx_labels(str(path))


def test_count_mismatch_names_both_files(tmp_path, small_split):
    images, labels = small_split
    write_split(tmp_path, "t10k", images, labels[:4], gz=False)
    with pytest.raises(
        DatasetError, match=r"t10k-images-idx3-ubyte: 5 images but .*t10k-labels-idx1-ubyte has 4 labels"
    ):
        load_mnist_split(str(tmp_path), "t10k")


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"split 'test': use 'train' or 't10k'"):
        load_mnist_split(str(tmp_path), "test")


needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_FOLDER),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_FOLDER}: apt-get install dataset-fashion-mnist",
)


@needs_fashion_mnist
@pytest.mark.parametrize(("split", "count"), [("train", 60_000), ("t10k", 10_000)])
def test_real_fashion_mnist_loads(split, count):
    images, labels = load_mnist_split(fashion_mnist_folder(), split)
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (count,) and labels.dtype == np.int64
    # Fashion-MNIST is balanced: every one of the 10 classes has exactly a tenth of each split.
    np.testing.assert_array_equal(np.bincount(labels, minlength=len(FASHION_MNIST_CLASSES)), [count // 10] * 10)
    assert images.max() == 255 and images.min() == 0


def test_every_bundled_photo_loads_as_rgb():
    for name in PHOTO_NAMES:
        photo = load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, name
        assert min(photo.shape[:2]) >= 256, name
    assert len(PHOTO_NAMES) >= 10


def test_unknown_photo_is_refused():
    with pytest.raises(ValueError, match=r"photo 'lena': unknown"):
        load_photo("lena")


def test_photo_crops_shape_dtype_and_range():
    crops = photo_crops(6, seed=3)
    assert crops.shape == (6, 3, 224, 224) and crops.dtype == np.float32
    # (x - 127) / 128 of uint8 pixels.
    assert crops.min() >= -127 / 128 and crops.max() <= 128 / 128
    np.testing.assert_array_equal(np.round(crops * 128 + 127), crops * 128 + 127)
    assert photo_crops(2, seed=3, size=96).shape == (2, 3, 96, 96)


def test_photo_crops_are_deterministic_and_prefix_stable():
    crops = photo_crops(8, seed=11)
    np.testing.assert_array_equal(crops, photo_crops(8, seed=11))
    np.testing.assert_array_equal(crops[:3], photo_crops(3, seed=11))


def test_photo_crops_differ_across_seeds_and_within_a_run():
    first, second = photo_crops(8, seed=0), photo_crops(8, seed=1)
    assert not np.array_equal(first, second)
    flat = first.reshape(len(first), -1)
    assert len({row.tobytes() for row in flat}) == len(first)

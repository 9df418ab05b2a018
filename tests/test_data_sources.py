"""Data sets named by a URI: Parquet files and folders, ImageFolder trees, idx folders with a split."""

from __future__ import annotations

import gzip
import io
import os
import re

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from int8flow.tasks.data import (
    PRESETS,
    DatasetError,
    decode_image,
    load_batch,
    load_mnist_split,
    open_dataset,
    parse_preprocess,
    preprocess_batch,
)
from int8flow.tasks.data.mnist_idx import FASHION_MNIST_FOLDER


def rgb(seed: int, height: int = 9, width: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def encoded(image: Image.Image | np.ndarray, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=image_format)
    return buffer.getvalue()


def write_parquet(path, images: list, labels: list[int], row_group_size: int, **options) -> None:
    """``images``: encoded bytes or nested lists of pixels."""
    pq.write_table(pa.table({"image": images, "label": labels}), str(path), row_group_size=row_group_size, **options)


@pytest.fixture
def photos() -> list[np.ndarray]:
    """Eleven RGB images of different sizes, so a wrong row shows up as a wrong shape too."""
    return [rgb(seed, 8 + seed, 6 + seed % 3) for seed in range(11)]


@pytest.fixture
def parquet_folder(tmp_path, photos) -> str:
    """Two files of 6 and 5 rows, row groups of 4 and 2; ``b`` written first but read second."""
    folder = tmp_path / "parquet"
    folder.mkdir()
    write_parquet(folder / "b.parquet", [encoded(image) for image in photos[6:]], list(range(6, 11)), 2)
    write_parquet(folder / "a.parquet", [encoded(image) for image in photos[:6]], list(range(6)), 4)
    (folder / "_SUCCESS").write_bytes(b"")
    return str(folder)


@pytest.fixture
def image_folder(tmp_path) -> str:
    """Classes cat (2 images), dog (2 images, one JPEG) and empty; a text file and a hidden folder are ignored."""
    root = tmp_path / "images"
    for folder in ("cat", "dog", "empty", ".ipynb_checkpoints"):
        (root / folder).mkdir(parents=True)
    (root / "cat" / "b.PNG").write_bytes(encoded(rgb(1)))
    (root / "cat" / "a.png").write_bytes(encoded(rgb(0)))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "c.JpEg").write_bytes(encoded(rgb(2, 16, 16), "JPEG"))
    (root / "dog" / "d.bmp").write_bytes(encoded(rgb(3), "BMP"))
    (root / ".ipynb_checkpoints" / "x.png").write_bytes(encoded(rgb(4)))
    return str(root)


def test_parquet_file_reads_rows_across_row_groups(tmp_path, photos):
    path = tmp_path / "data.parquet"
    write_parquet(path, [encoded(image) for image in photos], [10 + index for index in range(11)], 3)
    dataset = open_dataset(str(path))
    assert dataset.kind == "parquet" and dataset.uri == str(path) and len(dataset) == 11
    examples = dataset.read([10, 0, 5, 3])
    for image, index in zip(examples.images, [10, 0, 5, 3]):
        np.testing.assert_array_equal(image, photos[index])
    np.testing.assert_array_equal(examples.labels, [20, 10, 15, 13])
    assert examples.labels.dtype == np.int64
    assert examples.sources == [f"{path} row {row}" for row in (10, 0, 5, 3)]
    assert examples.errors == [None] * 4


def test_parquet_folder_reads_files_in_name_order(parquet_folder, photos):
    dataset = open_dataset(parquet_folder)
    assert len(dataset) == 11
    examples = dataset.read(range(11))
    for image, photo in zip(examples.images, photos):
        np.testing.assert_array_equal(image, photo)
    np.testing.assert_array_equal(examples.labels, np.arange(11))
    assert examples.sources[5:7] == [f"{parquet_folder}/a.parquet row 5", f"{parquet_folder}/b.parquet row 0"]


@pytest.mark.parametrize("span", [(3, 5), (4, 6), (5, 8), (0, 11), (9, 11), (7, 7)])
def test_any_range_equals_the_same_slice_of_a_full_read(parquet_folder, span):
    dataset = open_dataset(parquet_folder)
    everything = dataset.read(range(len(dataset)))
    part = dataset.read(range(*span))
    assert part.sources == everything.sources[slice(*span)]
    np.testing.assert_array_equal(part.labels, everything.labels[slice(*span)])
    for image, expected in zip(part.images, everything.images[slice(*span)], strict=True):
        np.testing.assert_array_equal(image, expected)


def test_parquet_reads_only_the_row_groups_it_needs(tmp_path, photos):
    path = tmp_path / "data.parquet"
    write_parquet(path, [encoded(image) for image in photos], list(range(11)), 4, use_dictionary=False)
    dataset = open_dataset(str(path))
    # Overwrite row group 0's image bytes: rows 4-10 still read, rows 0-3 cannot.
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset : column.data_page_offset + column.total_compressed_size] = (
        b"\xff" * column.total_compressed_size
    )
    path.write_bytes(bytes(data))
    np.testing.assert_array_equal(dataset.read(range(4, 11)).labels, np.arange(4, 11))
    with pytest.raises(
        DatasetError,
        match=rf"^{re.escape(str(path))}: cannot read row group 0 \(.*\); the file is "
        r"corrupt, write it again$",
    ):
        dataset.read([6, 2])


def test_parquet_pixel_arrays_hw_and_hwc(tmp_path):
    grey = np.random.default_rng(5).integers(0, 256, size=(28, 28)).astype(np.uint8)
    colour = rgb(6)
    write_parquet(tmp_path / "grey.parquet", [grey.tolist()] * 3, [0, 1, 2], 2)
    pq.write_table(
        pa.table({"image": pa.array([colour.tolist()], pa.list_(pa.list_(pa.list_(pa.uint8())))), "label": [4]}),
        str(tmp_path / "colour.parquet"),
    )
    greys = open_dataset(str(tmp_path / "grey.parquet")).read([2])
    assert greys.images[0].dtype == np.uint8
    np.testing.assert_array_equal(greys.images[0], grey)
    np.testing.assert_array_equal(open_dataset(str(tmp_path / "colour.parquet")).read([0]).images[0], colour)


def test_parquet_rows_that_are_not_images_are_reported_not_raised(tmp_path):
    good = np.arange(12).reshape(3, 4).tolist()
    rows = [good, [[1, 2], [3]], [[-1, 300]], [[0.5, 1.0]], None, [[]], good]
    images = pa.array(rows, pa.list_(pa.list_(pa.float64())))
    labels = pa.array([0, 1, 2, 3, 4, 5, None], pa.int64())
    pq.write_table(pa.table({"image": images, "label": labels}), str(tmp_path / "bad.parquet"))
    examples = open_dataset(str(tmp_path / "bad.parquet")).read(range(7))
    assert examples.images[0].dtype == np.uint8
    np.testing.assert_array_equal(examples.images[0], np.arange(12).reshape(3, 4))
    assert examples.errors == [
        None,
        "ragged pixel lists: rows of lengths 1 to 2",
        "pixel values from -1.0 to 300.0; store whole numbers 0 to 255 (uint8), not normalised ones",
        "pixel values from 0.5 to 1.0; store whole numbers 0 to 255 (uint8), not normalised ones",
        "the image is null",
        "pixel array of shape (1, 0); store HxW, HxWx1 or HxWx3 values",
        "the label is null",
    ]
    assert examples.images[1:] == [None] * 6
    np.testing.assert_array_equal(examples.labels, [0, 1, 2, 3, 4, 5, -1])


def test_parquet_over_an_fsspec_url(memory_dir, photos):
    for name, rows in (("part-1.parquet", range(0, 5)), ("part-2.parquet", range(5, 11))):
        with fsspec.open(f"{memory_dir}/{name}", "wb") as file:
            pq.write_table(pa.table({"image": [encoded(photos[row]) for row in rows], "label": list(rows)}), file)
    dataset = open_dataset(memory_dir)
    examples = dataset.read([4, 5])
    assert examples.sources == [f"{memory_dir}/part-1.parquet row 4", f"{memory_dir}/part-2.parquet row 0"]
    np.testing.assert_array_equal(examples.images[1], photos[5])
    assert len(dataset.fingerprint()) == 64


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"image": [b"x"], "target": [1]},
            r"no 'label' column \(columns: image, target\); a Parquet data set needs "
            r"'image' \(encoded PNG/JPEG bytes or a nested list of pixels\) and 'label' \(integer\)",
        ),
        ({"pixels": [b"x"], "class": [1]}, r"no 'image' or 'label' column \(columns: pixels, class\)"),
        ({"image": [b"x"], "label": ["cat"]}, r"column 'label' is string; store class indices as integers"),
        (
            {"image": ["a.png"], "label": [1]},
            r"column 'image' is string; store encoded PNG/JPEG bytes \(binary\) or "
            r"pixel values as nested lists of numbers \(HxW or HxWxC\)",
        ),
    ],
)
def test_parquet_without_usable_columns_is_refused(tmp_path, columns, message):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table(columns), str(path))
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: {message}"):
        open_dataset(str(path))


def test_parquet_without_rows_is_refused(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"image": pa.array([], pa.binary()), "label": pa.array([], pa.int64())}), str(path))
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: the Parquet data has no rows; add examples$"):
        open_dataset(str(path))


def test_a_file_that_is_not_parquet_is_refused(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(
        DatasetError,
        match=rf"^{re.escape(str(path))}: not a readable Parquet file \(.*\); write it "
        r"again$",
    ):
        open_dataset(str(path))


def test_image_folder_labels_by_sorted_class_folder(image_folder):
    dataset = open_dataset(image_folder)
    assert dataset.kind == "imagefolder" and len(dataset) == 4
    assert dataset.classes == ["cat", "dog", "empty"]
    examples = dataset.read(range(4))
    names = ["cat/a.png", "cat/b.PNG", "dog/c.JpEg", "dog/d.bmp"]
    assert examples.sources == [f"{image_folder}/{name}" for name in names]
    np.testing.assert_array_equal(examples.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(examples.images[0], rgb(0))
    np.testing.assert_array_equal(examples.images[1], rgb(1))
    with Image.open(os.path.join(image_folder, "dog", "c.JpEg")) as jpeg:
        np.testing.assert_array_equal(examples.images[2], np.asarray(jpeg.convert("RGB")))
    np.testing.assert_array_equal(examples.images[3], rgb(3))


def test_a_corrupt_image_is_reported_with_its_path(image_folder):
    path = os.path.join(image_folder, "cat", "b.PNG")
    with open(path, "r+b") as file:
        file.truncate(60)
    examples = open_dataset(image_folder).read([1, 0])
    assert examples.images[0] is None and examples.sources[0] == path
    assert examples.errors[0] == "OSError: image file is truncated"
    np.testing.assert_array_equal(examples.images[1], rgb(0))
    assert examples.errors[1] is None


def test_decoding_keeps_grey_and_turns_every_other_mode_to_rgb():
    grey = np.random.default_rng(8).integers(0, 256, size=(5, 6), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encoded(grey)), grey)
    rgba = np.dstack([rgb(9, 5, 6), np.full((5, 6), 7, np.uint8)])
    np.testing.assert_array_equal(decode_image(encoded(rgba)), rgba[..., :3])
    palette = Image.fromarray(rgb(10, 5, 6)).quantize(8)
    np.testing.assert_array_equal(decode_image(encoded(palette)), np.asarray(palette.convert("RGB")))
    cmyk_jpeg = encoded(Image.fromarray(rgb(11, 5, 6)).convert("CMYK"), "JPEG")
    with Image.open(io.BytesIO(cmyk_jpeg)) as cmyk:
        assert cmyk.mode == "CMYK"
        np.testing.assert_array_equal(decode_image(cmyk_jpeg), np.asarray(cmyk.convert("RGB")))
    with pytest.raises(ValueError, match=r"^I;16 pixels are not 8-bit; store 8-bit grey or RGB images$"):
        decode_image(encoded(Image.fromarray(np.full((4, 4), 1000, np.uint16))))


def test_image_folder_without_images_is_refused(tmp_path):
    for folder in ("train/cat", "val/cat"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.png").write_bytes(encoded(rgb(0)))
    with pytest.raises(
        DatasetError,
        match=rf"^{re.escape(str(tmp_path))}: 2 class sub-folders \(train, val\) but no "
        r"bmp/jpeg/jpg/png/webp files directly inside them; give the folder whose sub-folders are the "
        r"classes$",
    ):
        open_dataset(str(tmp_path))


needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_FOLDER),
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_FOLDER}: apt-get install dataset-fashion-mnist",
)


@needs_fashion_mnist
def test_idx_folder_with_a_split_reads_fashion_mnist():
    dataset = open_dataset(f"{FASHION_MNIST_FOLDER}#t10k")
    assert dataset.kind == "idx" and dataset.uri == f"{FASHION_MNIST_FOLDER}#t10k" and len(dataset) == 10_000
    images, labels = load_mnist_split(FASHION_MNIST_FOLDER, "t10k")
    examples = dataset.read([9_999, 0, 17])
    for image, index in zip(examples.images, [9_999, 0, 17]):
        np.testing.assert_array_equal(image, images[index])
    np.testing.assert_array_equal(examples.labels, labels[[9_999, 0, 17]])
    assert examples.sources[0] == f"{FASHION_MNIST_FOLDER}#t10k example 9999"
    assert examples.errors == [None] * 3


@needs_fashion_mnist
def test_idx_folder_without_a_split_lists_the_splits():
    with pytest.raises(
        DatasetError,
        match=rf"^{FASHION_MNIST_FOLDER}: a folder of idx files with splits t10k, train; "
        rf"append #train or #t10k to choose one, e.g. {FASHION_MNIST_FOLDER}#t10k$",
    ):
        open_dataset(FASHION_MNIST_FOLDER)


@needs_fashion_mnist
def test_an_idx_file_itself_points_to_its_folder():
    path = f"{FASHION_MNIST_FOLDER}/t10k-images-idx3-ubyte.gz"
    with pytest.raises(
        DatasetError,
        match=rf"^{path}: not a \.parquet file; for idx files give their folder with "
        r"#t10k; give a \.parquet file",
    ):
        open_dataset(path)


def write_idx_t10k(folder, images: np.ndarray, labels: np.ndarray) -> None:
    for stem, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
        (folder / f"{stem}.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_an_idx_split_rewritten_in_place_is_read_afresh_by_a_new_open(tmp_path):
    """No process-wide cache by location: a long-lived process must see the files as they are now."""
    write_idx_t10k(tmp_path, np.zeros((2, 3, 3)), np.array([1, 2]))
    before = open_dataset(f"{tmp_path}#t10k")
    fingerprint = before.fingerprint()
    write_idx_t10k(tmp_path, np.full((3, 3, 3), 7), np.array([4, 5, 6]))
    after = open_dataset(f"{tmp_path}#t10k")
    assert len(before) == 2 and len(after) == 3 and after.fingerprint() != fingerprint
    read = after.read([0, 2])
    assert read.labels.tolist() == [4, 6] and all(np.all(image == 7) for image in read.images)


def test_idx_split_missing_from_the_folder_is_refused(tmp_path):
    for stem, array in (("t10k-images-idx3-ubyte", np.zeros((2, 3, 3))), ("t10k-labels-idx1-ubyte", np.zeros(2))):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    assert len(open_dataset(f"{tmp_path}#t10k")) == 2
    with pytest.raises(
        DatasetError,
        match=rf"^{re.escape(str(tmp_path))}#train: no split 'train' in this folder "
        rf"\(found t10k\); e.g. {re.escape(str(tmp_path))}#t10k$",
    ):
        open_dataset(f"{tmp_path}#train")


@pytest.mark.parametrize(
    ("layout", "suffix", "message"),
    [
        ("missing", "", r"{uri}: no such file or folder; check the path$"),
        (
            "empty",
            "",
            r"{uri}: empty folder; give a \.parquet file, a folder of \.parquet files, an ImageFolder tree "
            r"\(one sub-folder per class\) or a folder of idx files with #train or #t10k$",
        ),
        ("text", "", r"{uri}: no \.parquet, idx or image files and no class sub-folders in this folder; give a "),
        (
            "flat",
            "",
            r"{uri}: image files but no class sub-folders; move them into one sub-folder per class "
            r"\(ImageFolder\)$",
        ),
        ("flat", "#test", r"{uri}#test: unknown split '#test'; use #train or #t10k after a folder of idx files$"),
        (
            "flat",
            "#train",
            r"{uri}#train: '#train' selects a split of an idx folder, but {uri} holds no idx files; "
            r"remove it$",
        ),
        ("text", "/notes.txt", r"{uri}/notes\.txt: not a \.parquet file; give a \.parquet file"),
    ],
)
def test_unusable_paths_are_refused(tmp_path, layout, suffix, message):
    folder = tmp_path / layout
    if layout != "missing":
        folder.mkdir()
    if layout == "text":
        (folder / "notes.txt").write_text("hello")
    if layout == "flat":
        (folder / "a.png").write_bytes(encoded(rgb(0)))
    with pytest.raises(DatasetError, match="^" + message.format(uri=re.escape(str(folder)))):
        open_dataset(f"{folder}{suffix}")


def test_indices_outside_the_data_set_are_refused(parquet_folder):
    with pytest.raises(
        IndexError,
        match=rf"^{re.escape(parquet_folder)}: example 11 does not exist; the data set has "
        r"11 \(0 to 10\)$",
    ):
        open_dataset(parquet_folder).read([3, 11])
    with pytest.raises(IndexError, match=r"example -1 does not exist"):
        open_dataset(parquet_folder).read([-1])


def test_fingerprint_is_stable_and_follows_every_byte_and_name(image_folder, parquet_folder, tmp_path):
    first = open_dataset(image_folder).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert open_dataset(image_folder).fingerprint() == first
    assert open_dataset(parquet_folder).fingerprint() != first
    path = os.path.join(image_folder, "dog", "d.bmp")
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    with open(path, "wb") as file:
        file.write(data)
    changed = open_dataset(image_folder).fingerprint()
    assert changed != first
    os.rename(path, os.path.join(image_folder, "dog", "e.bmp"))
    assert open_dataset(image_folder).fingerprint() not in (first, changed)


@needs_fashion_mnist
def test_fingerprint_of_an_idx_split_covers_only_that_split():
    t10k = open_dataset(f"{FASHION_MNIST_FOLDER}#t10k")
    assert t10k.fingerprint() == open_dataset(f"{FASHION_MNIST_FOLDER}#t10k").fingerprint()
    assert t10k.fingerprint() != open_dataset(f"{FASHION_MNIST_FOLDER}#train").fingerprint()


def test_load_batch_preprocesses_the_examples(parquet_folder, photos):
    spec = parse_preprocess("resize=8,crop=8,scale=0.5")
    batch = load_batch(open_dataset(parquet_folder), [2, 9], spec, (None, 3, 8, 8))
    np.testing.assert_array_equal(batch.inputs, preprocess_batch([photos[2], photos[9]], spec, (None, 3, 8, 8)))
    np.testing.assert_array_equal(batch.labels, [2, 9])
    assert batch.skipped == 0 and batch.skipped_sources == []


def test_load_batch_fails_on_a_bad_image_and_names_it(image_folder):
    for name in ("a.png", "b.PNG"):
        with open(os.path.join(image_folder, "cat", name), "wb") as file:
            file.write(b"\x89PNG broken")
    with pytest.raises(
        DatasetError,
        match=rf"^{re.escape(image_folder)}/cat/a\.png: cannot decode the image "
        r"\(not an image format Pillow recognises \(or an empty file\)\) \(and 1 more in this batch\); "
        r"fix or remove it, or pass --on-bad-image skip to leave such examples out$",
    ):
        load_batch(open_dataset(image_folder), range(4), PRESETS["imagenet-tf"], (None, 3, 224, 224), "fail")


def test_load_batch_skips_bad_images_and_counts_them(image_folder):
    with open(os.path.join(image_folder, "cat", "b.PNG"), "wb") as file:
        file.write(b"\x89PNG broken")
    dataset = open_dataset(image_folder)
    batch = load_batch(dataset, range(4), PRESETS["imagenet-tf"], (None, 3, 224, 224), "skip")
    assert batch.skipped == 1 and batch.skipped_sources == [f"{image_folder}/cat/b.PNG"]
    np.testing.assert_array_equal(batch.labels, [0, 1, 1])
    good = dataset.read([0, 2, 3]).images
    np.testing.assert_array_equal(batch.inputs, preprocess_batch(good, PRESETS["imagenet-tf"], (None, 3, 224, 224)))


def test_load_batch_of_only_bad_images_is_empty(image_folder):
    with open(os.path.join(image_folder, "cat", "a.png"), "wb") as file:
        file.write(b"")
    batch = load_batch(open_dataset(image_folder), [0], PRESETS["imagenet-tf"], (None, 3, 224, 224), "skip")
    assert batch.inputs.shape == (0, 3, 224, 224) and batch.labels.shape == (0,) and batch.skipped == 1


def test_load_batch_refuses_an_unknown_policy(image_folder):
    with pytest.raises(ValueError, match=r"^on_bad_image='ignore': use 'skip' or 'fail'$"):
        load_batch(open_dataset(image_folder), [0], PRESETS["imagenet-tf"], (None, 3, 224, 224), "ignore")

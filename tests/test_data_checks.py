"""Data defects that used to pass silently or surface late: symlinked ImageFolder classes and files,
and a crop larger than the resize that feeds it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from int8flow.tasks.data import DatasetError, PreprocessError, open_dataset, parse_preprocess


def png(seed: int, height: int = 5, width: int = 4) -> bytes:
    """A small random RGB PNG; its size tells the images apart when reading them back."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def linked_tree(tmp_path: Path) -> Path:
    """``root/a/``, ``root/b -> ../elsewhere/b`` (a symlinked class) and ``root/c/`` holding a symlinked image."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere" / "b"
    for folder in (root / "a", root / "c", elsewhere):
        folder.mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(png(1, 5, 4))
    (elsewhere / "2.png").write_bytes(png(2, 6, 4))
    (elsewhere / "3.png").write_bytes(png(3, 7, 4))
    (tmp_path / "elsewhere" / "4.png").write_bytes(png(4, 8, 4))
    os.symlink("../elsewhere/b", root / "b")
    os.symlink("../../elsewhere/4.png", root / "c" / "4.png")
    return root


def test_a_symlinked_class_folder_keeps_its_label_and_later_labels(tmp_path):
    root = linked_tree(tmp_path)
    dataset = open_dataset(str(root))
    assert dataset.names == ["a/1.png", "b/2.png", "b/3.png", "c/4.png"]
    examples = dataset.read(range(4))
    assert examples.labels.tolist() == [0, 1, 1, 2]
    assert [image.shape[0] for image in examples.images] == [5, 6, 7, 8]
    assert examples.errors == [None] * 4


def test_the_fingerprint_covers_the_linked_files_contents(tmp_path):
    root = linked_tree(tmp_path)
    first = open_dataset(str(root)).fingerprint()
    (tmp_path / "elsewhere" / "b" / "2.png").write_bytes(png(20, 6, 4))
    second = open_dataset(str(root)).fingerprint()
    (tmp_path / "elsewhere" / "4.png").write_bytes(png(40, 8, 4))
    assert open_dataset(str(root)).fingerprint() not in (first, second)
    assert second != first


def test_a_dangling_link_is_refused_by_name(tmp_path):
    root = linked_tree(tmp_path)
    os.symlink("../nowhere", root / "d")
    with pytest.raises(DatasetError, match=r"root/d: symbolic link to \.\./nowhere, which does not exist") as error:
        open_dataset(str(root))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text",
    ["resize=256,crop=300", "imagenet-tf,crop=300", "crop=300,resize=256", "imagenet-torch,resize=200,crop=300"],
)
def test_a_crop_larger_than_the_resize_is_refused_when_parsed(text):
    resize = 200 if "resize=200" in text else 256
    with pytest.raises(PreprocessError) as error:
        parse_preprocess(text)
    message = str(error.value)
    assert message == (
        f"--preprocess {text!r}: crop=300 is larger than resize={resize} (the short side after resizing); "
        f"crop at most {resize} or resize to at least 300"
    )


@pytest.mark.parametrize("text", ["resize=256,crop=256", "imagenet-tf,crop=200", "crop=300", "imagenet-tf,resize=none"])
def test_a_crop_within_the_resize_or_without_one_is_accepted(text):
    parse_preprocess(text)

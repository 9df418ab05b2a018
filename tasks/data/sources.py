"""Labelled image data sets named by one URI, read a few examples at a time.

Calibration and validation run as shards on Dask workers, so opening a data set only lists files
and reads Parquet footers, and each worker then reads just its own examples: ``read`` touches only
the Parquet row groups and image files those examples live in. An example that cannot be decoded
is reported beside the others rather than raised, so ``load_batch`` can fail or skip it as
``--on-bad-image`` says. Paths may be local or any fsspec URL.

URI rules, checked in this order:

- ``FOLDER#train`` / ``FOLDER#t10k``: MNIST-format idx files in FOLDER, one split.
- a ``.parquet`` file, or a folder of them (read in name order): columns ``image`` (encoded
  PNG/JPEG bytes, or a nested list of pixel values HxW or HxWxC) and ``label`` (integer).
- a folder with one sub-folder per class (ImageFolder): class index = position of the sub-folder
  in name order; the jpg/jpeg/png/bmp/webp files directly inside, in name order. Symbolic links
  to class folders and to image files are followed; a link to nothing is refused.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem
from PIL import Image, UnidentifiedImageError

from int8flow.tasks.data.mnist_idx import DatasetError, load_mnist_split
from int8flow.tasks.data.preprocess import PreprocessSpec, preprocess_batch

DatasetKind = Literal["parquet", "imagefolder", "idx"]
OnBadImage = Literal["skip", "fail"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
IDX_SPLITS = ("train", "t10k")
_IDX_FILE = re.compile(r"^(train|t10k)-(images-idx3|labels-idx1)-ubyte(\.gz)?$")
_LAYOUTS = (
    "give a .parquet file, a folder of .parquet files, an ImageFolder tree (one sub-folder per class) "
    "or a folder of idx files with #train or #t10k"
)
_HASH_CHUNK = 1 << 20
# Modes whose pixels are not 8-bit: converting them to L or RGB would clip values silently.
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_GREY_MODES = frozenset({"1", "L", "LA", "La"})


@dataclass(frozen=True)
class RawExamples:
    """Decoded examples in the order asked for; ``images[i]`` is None where ``errors[i]`` says why."""

    images: list[np.ndarray | None]
    labels: np.ndarray
    sources: list[str]
    errors: list[str | None]


class ImageDataset(Protocol):
    """What calibration and validation need from a data set, whatever its files look like."""

    uri: str

    @property
    def kind(self) -> DatasetKind: ...

    def __len__(self) -> int: ...

    def fingerprint(self) -> str:
        """sha256 hex of the contents and relative names of the files behind the examples."""
        ...

    def read(self, indices: Sequence[int]) -> RawExamples: ...

    def labels(self, count: int) -> np.ndarray:
        """The labels of the first ``count`` examples, reading no image: what planning checks them by."""
        ...


@dataclass(frozen=True)
class Batch:
    """Model inputs (float32 NCHW) and labels of the examples that decoded, and which did not."""

    inputs: np.ndarray
    labels: np.ndarray
    skipped: int
    skipped_sources: list[str]


def open_dataset(uri: str) -> ImageDataset:
    """The data set at ``uri``, its kind detected from the files (see the module docstring)."""
    base, split = _split_fragment(uri)
    fs, root = fsspec.core.url_to_fs(base)
    root = root.rstrip("/") or "/"
    if not fs.exists(root):
        raise DatasetError(f"{base}: no such file or folder; check the path")
    if fs.isfile(root):
        if split is not None:
            raise DatasetError(f"{uri}: '#{split}' selects a split of an idx folder, but {base} is a file; remove it")
        name = root.rsplit("/", 1)[-1].partition("?")[0]  # an HTTP(S) path keeps its query (a signed URL)
        if name.endswith(".parquet"):
            return ParquetDataset(base, fs, [root], [base], [name])
        hint = f"; for idx files give their folder with #{_IDX_FILE.match(name)[1]}" if _IDX_FILE.match(name) else ""
        raise DatasetError(f"{base}: not a .parquet file{hint}; {_LAYOUTS}")
    files, folders = _visible_entries(fs, root)
    if not files and not folders:
        raise DatasetError(f"{base}: empty folder; {_LAYOUTS}")
    splits = sorted({match[1] for name in files if (match := _IDX_FILE.match(name))})
    if splits:
        return _open_idx(base, split, splits, fs, root, files)
    if split is not None:
        raise DatasetError(
            f"{uri}: '#{split}' selects a split of an idx folder, but {base} holds no idx files; remove it"
        )
    parquet = [name for name in files if name.endswith(".parquet")]
    if parquet:
        paths = [f"{root}/{name}" for name in parquet]
        return ParquetDataset(base, fs, paths, [f"{base.rstrip('/')}/{name}" for name in parquet], parquet)
    if folders:
        return ImageFolderDataset(base, fs, root, folders)
    if any(_is_image(name) for name in files):
        raise DatasetError(
            f"{base}: image files but no class sub-folders; move them into one sub-folder per class (ImageFolder)"
        )
    raise DatasetError(f"{base}: no .parquet, idx or image files and no class sub-folders in this folder; {_LAYOUTS}")


def load_batch(
    dataset: ImageDataset,
    indices: Sequence[int],
    spec: PreprocessSpec,
    input_shape: tuple[int | None, ...],
    on_bad_image: OnBadImage = "fail",
) -> Batch:
    """The examples at ``indices`` as model inputs; undecodable ones fail the batch or are skipped."""
    if on_bad_image not in ("skip", "fail"):
        raise ValueError(f"on_bad_image={on_bad_image!r}: use 'skip' or 'fail'")
    raw = dataset.read(indices)
    bad = [index for index, error in enumerate(raw.errors) if error is not None]
    if bad and on_bad_image == "fail":
        others = f" (and {len(bad) - 1} more in this batch)" if len(bad) > 1 else ""
        raise DatasetError(
            f"{raw.sources[bad[0]]}: cannot decode the image ({raw.errors[bad[0]]}){others}; fix or remove it, "
            "or pass --on-bad-image skip to leave such examples out"
        )
    good = [index for index, error in enumerate(raw.errors) if error is None]
    inputs = preprocess_batch(
        [raw.images[index] for index in good], spec, input_shape, [raw.sources[index] for index in good]
    )
    return Batch(inputs, raw.labels[good], len(bad), [raw.sources[index] for index in bad])


def decode_image(data: bytes) -> np.ndarray:
    """uint8 pixels of an encoded image: HxW for grey, HxWx3 RGB for everything else (alpha dropped)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in _WIDE_MODES:
            raise ValueError(f"{image.mode} pixels are not 8-bit; store 8-bit grey or RGB images")
        return np.asarray(image.convert("L" if image.mode in _GREY_MODES else "RGB"))


class _FilesFingerprint:
    """The fingerprint of a data set stored as files: their bytes and names, hashed once per object."""

    fs: AbstractFileSystem
    paths: list[str]
    names: list[str]

    @functools.cached_property
    def _fingerprint(self) -> str:
        return _files_fingerprint(self.fs, self.paths, self.names)

    def fingerprint(self) -> str:
        return self._fingerprint


class ParquetDataset(_FilesFingerprint):
    """Examples in rows of Parquet files; only the footers are read until ``read`` asks for rows."""

    kind: DatasetKind = "parquet"

    def __init__(self, uri: str, fs: AbstractFileSystem, paths: list[str], shown: list[str], names: list[str]) -> None:
        self.uri, self.fs, self.paths, self.shown, self.names = uri, fs, paths, shown, names
        # Footers are kept so that reading rows later goes straight to the row groups' bytes.
        self._footers = [_checked_footer(fs, path, label) for path, label in zip(paths, shown)]
        group_rows = [
            [footer.row_group(group).num_rows for group in range(footer.num_row_groups)] for footer in self._footers
        ]
        # Every row group of every file, in order: which file, which group in it, its first example.
        self._group_file = np.array([file for file, sizes in enumerate(group_rows) for _ in sizes], dtype=np.int64)
        self._group_index = np.array([group for sizes in group_rows for group in range(len(sizes))], dtype=np.int64)
        sizes = np.array([size for sizes in group_rows for size in sizes], dtype=np.int64)
        self._group_start = np.concatenate([[0], np.cumsum(sizes)])
        self._file_start = np.concatenate([[0], np.cumsum([sum(sizes) for sizes in group_rows])])
        if self._group_start[-1] == 0:
            raise DatasetError(f"{uri}: the Parquet data has no rows; add examples")

    def __len__(self) -> int:
        return int(self._group_start[-1])

    def read(self, indices: Sequence[int]) -> RawExamples:
        positions = _positions(self.uri, len(self), indices)
        groups = np.searchsorted(self._group_start, positions, side="right") - 1
        images: list[np.ndarray | None] = [None] * len(positions)
        labels = np.full(len(positions), -1, dtype=np.int64)
        sources = [""] * len(positions)
        errors: list[str | None] = [None] * len(positions)
        for file in np.unique(self._group_file[groups]):
            with self.fs.open(self.paths[file], "rb") as handle:
                for group in np.unique(groups[self._group_file[groups] == file]):
                    table = self._row_group(handle, int(file), int(self._group_index[group]))
                    for slot in np.flatnonzero(groups == group):
                        row = int(positions[slot] - self._group_start[group])
                        sources[slot] = f"{self.shown[file]} row {int(positions[slot] - self._file_start[file])}"
                        images[slot], labels[slot], errors[slot] = _parquet_example(table, row)
        return RawExamples(images, labels, sources, errors)

    def labels(self, count: int) -> np.ndarray:
        found: list[np.ndarray] = []
        remaining = count
        for file, path in enumerate(self.paths):
            if remaining <= 0:
                break
            with self.fs.open(path, "rb") as handle:
                column = pq.ParquetFile(handle, metadata=self._footers[file]).read(columns=["label"]).column("label")
            values = column.slice(0, remaining).to_numpy(zero_copy_only=False)
            found.append(
                np.where(np.isnan(values), -1, values).astype(np.int64) if values.dtype.kind == "f" else values
            )
            remaining -= len(values)
        return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)

    def _row_group(self, handle: io.IOBase, file: int, group: int) -> pa.Table:
        try:
            parquet = pq.ParquetFile(handle, metadata=self._footers[file])
            return parquet.read_row_group(group, columns=["image", "label"])
        except (OSError, pa.ArrowException) as error:
            raise DatasetError(
                f"{self.shown[file]}: cannot read row group {group} ({_one_line(error)}); "
                "the file is corrupt, write it again"
            ) from None


class ImageFolderDataset(_FilesFingerprint):
    """Image files in one sub-folder per class; the class index is the sub-folder's position by name."""

    kind: DatasetKind = "imagefolder"

    def __init__(self, uri: str, fs: AbstractFileSystem, root: str, classes: list[str]) -> None:
        self.uri, self.fs, self.root, self.classes = uri, fs, root, classes
        names: list[str] = []
        labels: list[int] = []
        for label, folder in enumerate(classes):
            files, _ = _visible_entries(fs, f"{root}/{folder}")
            images = [f"{folder}/{name}" for name in files if _is_image(name)]
            names += images
            labels += [label] * len(images)
        if not names:
            shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
            extensions = "/".join(sorted(extension[1:] for extension in IMAGE_EXTENSIONS))
            raise DatasetError(
                f"{uri}: {len(classes)} class sub-folders ({shown}) but no {extensions} files directly inside them; "
                "give the folder whose sub-folders are the classes"
            )
        self.names = names
        self.paths = [f"{self.root}/{name}" for name in names]
        self.class_labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def read(self, indices: Sequence[int]) -> RawExamples:
        positions = _positions(self.uri, len(self), indices)
        sources = [f"{self.uri.rstrip('/')}/{self.names[position]}" for position in positions]
        images: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for position, source in zip(positions, sources):
            try:
                with self.fs.open(f"{self.root}/{self.names[position]}", "rb") as handle:
                    data = handle.read()
            except OSError as error:
                raise DatasetError(
                    f"{source}: cannot read the file ({_one_line(error)}); check the data set is complete"
                ) from None
            image, error_text = _decoded(data)
            images.append(image)
            errors.append(error_text)
        return RawExamples(images, self.class_labels[positions], sources, errors)

    def labels(self, count: int) -> np.ndarray:
        return self.class_labels[:count]


class IdxDataset(_FilesFingerprint):
    """One split of MNIST-format idx files, loaded once per data set object and shared by its reads.

    The arrays belong to the object, not to a process-wide cache keyed by the folder: a cache by
    location would serve a long-lived process (a Dask worker, or the client whose forked workers
    inherit its memory) the old examples after the files were rewritten. Workers share one object
    per data fingerprint (``int8flow.tasks.distributed.shard_jobs``).
    """

    kind: DatasetKind = "idx"

    def __init__(
        self, uri: str, folder: str, split: str, fs: AbstractFileSystem, paths: list[str], names: list[str]
    ) -> None:
        self.uri, self.folder, self.split, self.fs, self.paths, self.names = uri, folder, split, fs, paths, names
        if len(self) == 0:
            raise DatasetError(f"{uri}: the split has no examples; add examples or choose another split")

    def __len__(self) -> int:
        return len(self._split[1])

    @functools.cached_property
    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = load_mnist_split(self.folder, self.split)  # type: ignore[arg-type]
        images.setflags(write=False)
        labels.setflags(write=False)
        return images, labels

    def read(self, indices: Sequence[int]) -> RawExamples:
        positions = _positions(self.uri, len(self), indices)
        images, labels = self._split
        return RawExamples(
            [images[position] for position in positions],
            labels[positions],
            [f"{self.uri} example {position}" for position in positions],
            [None] * len(positions),
        )

    def labels(self, count: int) -> np.ndarray:
        return np.asarray(self._split[1][:count], dtype=np.int64)


def _open_idx(
    base: str, split: str | None, splits: list[str], fs: AbstractFileSystem, root: str, files: list[str]
) -> IdxDataset:
    example = f"{base.rstrip('/')}#{splits[0]}"
    if split is None:
        raise DatasetError(
            f"{base}: a folder of idx files with splits {', '.join(splits)}; append #train or #t10k to choose one, "
            f"e.g. {example}"
        )
    if split not in splits:
        raise DatasetError(
            f"{base}#{split}: no split {split!r} in this folder (found {', '.join(splits)}); e.g. {example}"
        )
    names = [name for name in files if (match := _IDX_FILE.match(name)) and match[1] == split]
    return IdxDataset(f"{base}#{split}", base, split, fs, [f"{root}/{name}" for name in names], names)


def _split_fragment(uri: str) -> tuple[str, str | None]:
    """``FOLDER#split`` -> (FOLDER, split); a '#' followed later by '/' belongs to a folder name."""
    base, hash_sign, fragment = uri.rpartition("#")
    if not hash_sign or "/" in fragment:
        return uri, None
    if fragment not in IDX_SPLITS:
        raise DatasetError(f"{uri}: unknown split '#{fragment}'; use #train or #t10k after a folder of idx files")
    return base, fragment


def _visible_entries(fs: AbstractFileSystem, folder: str) -> tuple[list[str], list[str]]:
    """Names of the files and of the sub-folders in ``folder``, sorted; hidden ones ('.x') left out.

    Symbolic links are followed, as torchvision's ImageFolder does: a listing reports a link as
    neither file nor folder, and a linked class folder left out would silently shift the label of
    every class after it. A link to nothing is refused by name for the same reason.
    """
    files, folders = [], []
    for entry in fs.ls(folder, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        if entry.get("islink"):
            entry = _link_target(fs, entry, f"{folder.rstrip('/')}/{name}")
        (folders if entry["type"] == "directory" else files).append(name)
    return sorted(files), sorted(folders)


def _link_target(fs: AbstractFileSystem, entry: dict, path: str) -> dict:
    """The listing entry of what the link at ``path`` points to (fsspec's ``info`` follows links)."""
    try:
        return fs.info(entry["name"])
    except FileNotFoundError:
        destination = entry.get("destination", "?")
        raise DatasetError(
            f"{path}: symbolic link to {destination}, which does not exist; fix the link or remove it"
        ) from None


def _is_image(name: str) -> bool:
    return "." in name and name[name.rindex(".") :].lower() in IMAGE_EXTENSIONS


def _positions(uri: str, length: int, indices: Sequence[int]) -> np.ndarray:
    positions = np.asarray(indices, dtype=np.int64).reshape(-1)
    outside = positions[(positions < 0) | (positions >= length)]
    if len(outside):
        raise IndexError(
            f"{uri}: example {int(outside[0])} does not exist; the data set has {length} (0 to {length - 1})"
        )
    return positions


def _files_fingerprint(fs: AbstractFileSystem, paths: Sequence[str], names: Sequence[str]) -> str:
    """Each file hashed in chunks, then the (name, file hash) pairs hashed in order, length-prefixed
    so that no two different lists of files give the same stream."""
    digest = hashlib.sha256()
    for path, name in zip(paths, names, strict=True):
        content = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                content.update(chunk)
        encoded = name.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded + content.digest())
    return digest.hexdigest()


def _checked_footer(fs: AbstractFileSystem, path: str, shown: str) -> pq.FileMetaData:
    """The file's footer, after checking it has the columns a data set needs."""
    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            schema, metadata = parquet.schema_arrow, parquet.metadata
    except (OSError, pa.ArrowException) as error:
        raise DatasetError(f"{shown}: not a readable Parquet file ({_one_line(error)}); write it again") from None
    missing = [column for column in ("image", "label") if column not in schema.names]
    if missing:
        absent = " or ".join(repr(column) for column in missing)
        raise DatasetError(
            f"{shown}: no {absent} column (columns: {', '.join(schema.names)}); a Parquet data set needs "
            "'image' (encoded PNG/JPEG bytes or a nested list of pixels) and 'label' (integer)"
        )
    image_type, label_type = schema.field("image").type, schema.field("label").type
    if not (_is_bytes(image_type) or _is_number_lists(image_type)):
        raise DatasetError(
            f"{shown}: column 'image' is {image_type}; store encoded PNG/JPEG bytes (binary) or pixel values "
            "as nested lists of numbers (HxW or HxWxC)"
        )
    if not pa.types.is_integer(label_type):
        raise DatasetError(f"{shown}: column 'label' is {label_type}; store class indices as integers")
    return metadata


def _is_bytes(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _is_number_lists(kind: pa.DataType) -> bool:
    if not _is_list(kind):
        return False
    while _is_list(kind):
        kind = kind.value_type
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _parquet_example(table: pa.Table, row: int) -> tuple[np.ndarray | None, int, str | None]:
    """(image, label, error) of one row of a row group."""
    label = table.column("label")[row]
    if not label.is_valid:
        return None, -1, "the label is null"
    image = table.column("image").slice(row, 1).combine_chunks()
    if image.null_count:
        return None, label.as_py(), "the image is null"
    if _is_bytes(image.type):
        decoded, error = _decoded(image[0].as_py())
        return decoded, label.as_py(), error
    try:
        return _pixel_array(image), label.as_py(), None
    except ValueError as error:
        return None, label.as_py(), str(error)


def _decoded(data: bytes) -> tuple[np.ndarray | None, str | None]:
    # Pillow's format plugins raise OSError, SyntaxError, struct.error, IndexError and more on corrupt
    # input; any of them means this one image is bad, not that the run is.
    try:
        return decode_image(data), None
    except UnidentifiedImageError:
        return None, "not an image format Pillow recognises (or an empty file)"
    except Exception as error:  # noqa: BLE001
        return None, f"{type(error).__name__}: {_one_line(error)}"


def _one_line(error: Exception) -> str:
    """Arrow's messages span lines; ours stay on one."""
    return " ".join(str(error).split())


def _pixel_array(values: pa.Array) -> np.ndarray:
    """uint8 HxW or HxWx3 pixels of a one-row nested-list array, without a Python object per pixel."""
    shape: list[int] = []
    while _is_list(values.type):
        if values.null_count:
            raise ValueError("a null inside the pixel lists")
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        if len(lengths) and np.any(lengths != lengths[0]):
            raise ValueError(f"ragged pixel lists: rows of lengths {int(lengths.min())} to {int(lengths.max())}")
        shape.append(int(lengths[0]) if len(lengths) else 0)
        values = values.flatten()
    if values.null_count:
        raise ValueError("null pixel values")
    pixels = values.to_numpy(zero_copy_only=False).reshape(shape)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3) or pixels.size == 0:
        raise ValueError(f"pixel array of shape {pixels.shape}; store HxW, HxWx1 or HxWx3 values")
    if pixels.dtype != np.uint8 and (pixels.min() < 0 or pixels.max() > 255 or np.any(pixels != np.round(pixels))):
        raise ValueError(
            f"pixel values from {pixels.min()} to {pixels.max()}; "
            "store whole numbers 0 to 255 (uint8), not normalised ones"
        )
    return pixels.astype(np.uint8)

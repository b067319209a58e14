"""Readers for the data formats people already have on disk. Each returns plain numpy arrays.

- image folders: root/<class>/<file>.png|jpg|bmp|gif (Pillow decodes)
- MNIST IDX files (optionally gzipped), checked against their magic numbers
- CIFAR-10 python batches, read with an unpickler that only builds arrays (a batch file that
  tries to run code is refused)
- CSV / Parquet tables through Ray Data
- plain UTF-8 text, or the standard library's pydoc topics corpus
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from trainyard.spec import UserInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


class DataError(UserInputError):
    """Data that is missing or not in the expected format; the message says which file."""


def _need(path: Path, what: str, field: str = "data.path") -> Path:
    if not path.exists():
        raise DataError(f"{field}: {what} not found: {path} (relative paths start at "
                        f"{Path.cwd()})")
    return path


def read_image_folder(root: str | Path, size: int, channels: int):
    """(images uint8 (N, C, size, size), labels int64 (N,), class names sorted)."""
    from PIL import Image

    root = _need(Path(root), "image folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root}: expected one subfolder per class (at least 2), found "
                        f"{len(classes)}")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            with Image.open(file) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                image = image.resize((size, size), Image.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the "
                        "class folders")
    return np.stack(images), np.array(labels, dtype=np.int64), classes


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (the MNIST format): magic 0x00 0x00 <dtype> <ndim>, big-endian sizes."""
    path = _need(Path(path), "IDX file")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {data.size} bytes (truncated?)")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).exists():
            return folder / name
    raise DataError(f"{folder}: missing {stem} (or {stem}.gz)")


def read_mnist_idx(folder: str | Path):
    """((train images, train labels), (test images, test labels)); images (N, 1, 28, 28)."""
    folder = _need(Path(folder), "MNIST folder")
    parts = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise DataError(f"{folder}: {prefix} has {len(images)} images but "
                            f"{len(labels)} labels")
        parts.append((images[:, None], labels.astype(np.int64)))
    return parts[0], parts[1]


class _ArraysOnly(pickle.Unpickler):
    """Builds dicts, lists, strings, bytes and numpy arrays; refuses every other global."""

    ALLOWED = {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")


def _load_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _ArraysOnly(io.BytesIO(handle.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"{path}: not a CIFAR-10 python batch: {err}") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def read_cifar10(folder: str | Path):
    """((train images, labels), (test images, labels), class names); images (N, 3, 32, 32)."""
    folder = _need(Path(folder), "CIFAR-10 folder")
    train = [_load_batch(_need(folder / f"data_batch_{i}", "CIFAR-10 batch"))
             for i in range(1, 6)]
    test = _load_batch(_need(folder / "test_batch", "CIFAR-10 batch"))

    def arrays(batches):
        images = np.concatenate([np.asarray(b["data"], np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b["labels"], np.int64) for b in batches])
        return images.reshape(-1, 3, 32, 32), labels

    names = [f"class_{i}" for i in range(10)]
    if (folder / "batches.meta").exists():
        meta = _load_batch(folder / "batches.meta")
        names = [n.decode() if isinstance(n, bytes) else n for n in meta["label_names"]]
    return arrays(train), arrays([test]), names


def table_dataset(path: str | Path, fmt: str, field: str = "data.path"):
    """A lazy Ray Dataset over a CSV/Parquet file or folder (nothing is read yet)."""
    import ray.data

    path = _need(Path(path), "table", field=field)
    if fmt == "auto":
        suffixes = {p.suffix for p in (path.iterdir() if path.is_dir() else [path])}
        fmt = "parquet" if ".parquet" in suffixes else "csv"
    reader = ray.data.read_parquet if fmt == "parquet" else ray.data.read_csv
    return reader(str(path.resolve()))  # Ray's tasks have another cwd


def encode_table(frame, features: list[str], label: str, classes: list[str], where):
    """(features float32 (N, F), labels int64 (N,)) of a pandas frame, labels by `classes`."""
    missing = [c for c in [*features, label] if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: no column(s) {', '.join(missing)}; the table has "
                        f"{', '.join(map(str, frame.columns))}")
    index = {name: i for i, name in enumerate(classes)}
    labels = frame[label].astype(str).map(index)
    if labels.isna().any():
        unknown = sorted(set(frame[label].astype(str)) - set(classes))[:5]
        raise DataError(f"{where}: label(s) {', '.join(unknown)} appear in no validation or "
                        "test row; every class must appear there")
    try:
        values = frame[features].to_numpy(np.float32)
    except ValueError as err:
        raise DataError(f"{where}: feature columns must be numeric: {err}") from None
    return values, labels.to_numpy(np.int64)


def read_table(path: str | Path, fmt: str, features: list[str], label: str,
               field: str = "data.path", classes: list[str] | None = None):
    """(features float32 (N, F), labels int64 (N,), class names) read with Ray Data."""
    frame = table_dataset(path, fmt, field).to_pandas()
    if label in frame.columns and classes is None:
        classes = sorted(frame[label].astype(str).unique())
    values, labels = encode_table(frame, features, label, classes or [], path)
    return values, labels, classes


def read_text(source: str) -> str:
    """The corpus: 'pydoc_topics' (standard library, ~465k characters) or a UTF-8 file."""
    if source == "pydoc_topics":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    path = _need(Path(source), "text file", field="data.source")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text: {err}") from None

"""Each on-disk format is read from small files made here, and bad files say what is wrong."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from trainyard.supervised import formats
from trainyard.supervised.formats import DataError


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_mnist(folder, n_train=20, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = np.arange(n) % 10
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = _idx_bytes(array)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
    return folder


def make_cifar(folder, per_batch=10):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [i % 10 for i in range(per_batch)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, handle)
    return folder


def make_image_folder(root, per_class=4):
    from PIL import Image

    for index, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((12, 10, 3), 40 + 150 * index + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder(tmp_path):
    images, labels, names = formats.read_image_folder(make_image_folder(tmp_path / "imgs"), 8, 3)
    assert images.shape == (8, 3, 8, 8) and images.dtype == np.uint8
    assert names == ["cat", "dog"] and labels.tolist() == [0] * 4 + [1] * 4
    assert images[labels == 1].mean() > images[labels == 0].mean()  # pixels survived
    gray, _, _ = formats.read_image_folder(tmp_path / "imgs", 6, 1)
    assert gray.shape == (8, 1, 6, 6)


def test_image_folder_needs_class_folders(tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="one subfolder per class"):
        formats.read_image_folder(tmp_path, 8, 3)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    (train_x, train_y), (test_x, test_y) = formats.read_mnist_idx(make_mnist(tmp_path, gz=gz))
    assert train_x.shape == (20, 1, 28, 28) and test_x.shape == (10, 1, 28, 28)
    assert train_y.tolist() == [i % 10 for i in range(20)]


def test_idx_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x00\x01\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DataError, match="bad magic"):
        formats.read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(_idx_bytes(np.zeros((4, 2, 2)))[:-3])
    with pytest.raises(DataError, match="truncated"):
        formats.read_idx(short)


def test_cifar10_batches(tmp_path):
    (x, y), (tx, ty), names = formats.read_cifar10(make_cifar(tmp_path / "cifar"))
    assert x.shape == (50, 3, 32, 32) and tx.shape == (10, 3, 32, 32)
    assert names[:2] == ["c0", "c1"] and y.dtype == np.int64


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_batch_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = make_cifar(tmp_path / "cifar")
    with open(folder / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": _Exploit()}, handle)
    with pytest.raises(DataError, match="refusing to load"):
        formats.read_cifar10(folder)
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_table_through_ray_data(tmp_path, ray_local, suffix):
    import pandas as pd

    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1, 2, 3, 4],
                          "kind": ["x", "y", "x", "y"]})
    path = tmp_path / f"table.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    values, labels, names = formats.read_table(path, "auto", ["a", "b"], "kind")
    order = np.argsort(values[:, 0])  # Ray Data may reorder blocks
    assert values[order].tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert names == ["x", "y"] and labels[order].tolist() == [0, 1, 0, 1]
    with pytest.raises(DataError, match="no column.*nope"):
        formats.read_table(path, "auto", ["a", "nope"], "kind")


def test_a_table_job_splits_every_row_once_into_standardised_sequences(tmp_path, ray_local):
    """`data: {name: table}` as a job loads it (read whole through Ray Data): each feature
    column a step, every row in exactly one split, standardised on the training rows. The
    streamed path trains end to end in test_jobs_e2e."""
    import pandas as pd
    import torch

    from trainyard.supervised.data import load_dataset
    from trainyard.supervised.spec import SupervisedJob

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(5.0, 2.0, (400, 3)), columns=["f0", "f1", "f2"])
    frame["label"] = [f"c{i % 4}" for i in range(400)]
    frame["row"] = np.arange(400.0)
    frame.to_parquet(tmp_path / "t.parquet")
    spec = SupervisedJob.model_validate({
        "name": "t", "kind": "supervised", "model": {"arch": "gru", "hidden": 8},
        "data": {"name": "table", "path": str(tmp_path / "t.parquet"),
                 "features": ["f0", "f1", "f2", "row"], "label": "label"}})
    splits = load_dataset(spec.data, 0)
    sizes = [len(getattr(splits, name)) for name in ("train", "val", "test")]
    assert sum(sizes) == 400 and min(sizes) >= 40
    x_train = splits.train.tensors[0]
    assert x_train.shape[1:] == (4, 1)  # 4 columns = 4 steps of 1 feature
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1) < 1e-2
    # the row column, standardised back, tells which rows each split got: none twice
    ids = torch.cat([getattr(splits, name).tensors[0][:, 3, 0].double()
                     for name in ("train", "val", "test")])
    ids = (ids - ids.min()) / (ids.max() - ids.min()) * 399
    assert sorted(ids.round().long().tolist()) == list(range(400))
    assert splits.info.class_names == ["c0", "c1", "c2", "c3"]


def test_text(tmp_path):
    assert len(formats.read_text("pydoc_topics")) > 400_000
    path = tmp_path / "corpus.txt"
    path.write_text("héllo wörld", encoding="utf-8")
    assert formats.read_text(str(path)) == "héllo wörld"
    path.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DataError, match="not UTF-8"):
        formats.read_text(str(path))

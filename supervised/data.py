"""Datasets for supervised jobs, as train/val/test tensors with splits fixed by the seed.

The driver loads a dataset once and hands it to the Ray Train workers, which shard the
training split with a DistributedSampler. Images become (N, C, H, W) float tensors standardised
with the training split's per-channel statistics; sequences (N, T, F); text (N, T) token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from trainyard.supervised import formats


@dataclass
class DataInfo:
    """What a model needs to know about its data."""

    task: str  # image | sequence | lm
    num_classes: int = 0  # classifiers
    in_channels: int = 0  # images
    feature_dim: int = 0  # sequences: features per step
    seq_len: int = 0  # sequences and text
    vocab: list[str] = field(default_factory=list)  # text: index -> character
    class_names: list[str] = field(default_factory=list)
    # images: the training split's per-channel statistics of pixels scaled to [0, 1] (what a
    # classifier's inputs were standardised with: a generator's samples are fed to it so)
    pixel_mean: list[float] = field(default_factory=list)
    pixel_std: list[float] = field(default_factory=list)
    # sequence to sequence: `vocab` is the source's, this the target's; words or characters
    target_vocab: list[str] = field(default_factory=list)
    word_tokens: bool = False
    groups: list[str] = field(default_factory=list)  # names of the test split's groups


@dataclass
class StreamedTrain:
    """A training split the driver never holds: a lazy Ray Dataset (`dataset`, handed to the
    TorchTrainer) of which each Train worker reads its own shard (`ShardBatches`)."""

    rows: int
    dataset: Any = None  # stays in the driver: the workers get it through Ray Train

    def __len__(self) -> int:
        return self.rows


@dataclass
class Splits:
    train: TensorDataset | StreamedTrain
    val: TensorDataset
    test: TensorDataset
    info: DataInfo
    # the test images as loaded, where a task replaced them (the VAE scores binarised pixels):
    # sample measures (FID, memorisation) compare samples with the images themselves
    test_pixels: torch.Tensor | None = None


class EncodeRows:
    """Ray Data batch function (pandas in, numpy out): feature columns as a standardised
    (B, F, 1) sequence, labels as class indices."""

    def __init__(self, features: list[str], label: str, classes: list[str], mean: float,
                 std: float, where: str):
        self.features, self.label, self.classes = features, label, classes
        self.mean, self.std, self.where = mean, std, where

    def __call__(self, frame) -> dict[str, np.ndarray]:
        values, labels = formats.encode_table(frame, self.features, self.label, self.classes,
                                              self.where)
        return {"x": ((values - self.mean) / self.std)[:, :, None], "y": labels}


class ShardBatches:
    """This worker's shard of a streamed split as (inputs, targets) batches; every rank yields
    the same number (Ray Train splits the stream into equal shards; the last partial batch is
    dropped), so DDP's all-reduces pair up."""

    def __init__(self, shard, batch_size: int, rows: int, seed: int):
        self.shard, self.batch_size, self.rows, self.seed = shard, batch_size, rows, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.rows // self.batch_size

    def __iter__(self):
        self.epoch += 1
        for batch in self.shard.iter_torch_batches(
                batch_size=self.batch_size, drop_last=True,
                local_shuffle_buffer_size=8 * self.batch_size,
                local_shuffle_seed=self.seed * 1000 + self.epoch):
            yield batch["x"], batch["y"]


def split_indices(labels: np.ndarray, val: float, test: float, seed: int) -> dict:
    """Stratified train/val/test indices; the same for the same seed."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_val, n_test = round(len(index) * val), round(len(index) * test)
        parts["val"] += index[:n_val].tolist()
        parts["test"] += index[n_val:n_val + n_test].tolist()
        parts["train"] += index[n_val + n_test:].tolist()
    return {name: np.sort(np.array(idx, dtype=np.int64)) for name, idx in parts.items()}


def _standardise(images: np.ndarray, train_index: np.ndarray) -> np.ndarray:
    """Per-channel (x - mean) / std with the training split's statistics; float32."""
    images = images.astype(np.float32)
    axes = (0, 2, 3) if images.ndim == 4 else (0, 1)
    mean = images[train_index].mean(axis=axes, keepdims=True)
    std = images[train_index].std(axis=axes, keepdims=True) + 1e-6
    return (images - mean) / std


def _classification(x: np.ndarray, y: np.ndarray, split: dict, info: DataInfo) -> Splits:
    tensors = {name: TensorDataset(torch.from_numpy(np.ascontiguousarray(x[idx])),
                                   torch.from_numpy(y[idx])) for name, idx in split.items()}
    return Splits(tensors["train"], tensors["val"], tensors["test"], info)


def _with_official_test(train: tuple, test: tuple, val: float, seed: int):
    """Stack an official train/test pair; val comes out of train, test stays the official one."""
    (x_train, y_train), (x_test, y_test) = train, test
    inner = split_indices(y_train, val, 1e-9, seed)
    n = len(y_train)
    split = {"train": np.concatenate([inner["train"], inner["test"]]), "val": inner["val"],
             "test": np.arange(n, n + len(y_test))}
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]), split


def load_images(spec, seed: int, pixels: str = "standardised") -> Splits:
    """Image splits; pixels "standardised" (classifiers) or "unit": in [0, 1] (generators)."""
    name = spec.name
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = bunch.images[:, None].astype(np.float32), bunch.target.astype(np.int64)
        names = [str(c) for c in range(10)]
        split = split_indices(y, spec.val_fraction, spec.test_fraction, seed)
    elif name == "image_folder":
        x, y, names = formats.read_image_folder(spec.path, spec.image_size, spec.channels)
        split = split_indices(y, spec.val_fraction, spec.test_fraction, seed)
    elif name == "mnist_idx":
        train, test = formats.read_mnist_idx(spec.path)
        x, y, split = _with_official_test(train, test, spec.val_fraction, seed)
        names = [str(c) for c in range(10)]
    elif name == "cifar10":
        train, test, names = formats.read_cifar10(spec.path)
        x, y, split = _with_official_test(train, test, spec.val_fraction, seed)
    else:
        raise ValueError(f"not an image dataset: {name!r}")
    x = x.astype(np.float32) / (16.0 if name == "digits" else 255.0)  # [0, 1]
    train = x[split["train"]]
    info = DataInfo("image", num_classes=len(names), in_channels=x.shape[1], class_names=names,
                    pixel_mean=train.mean(axis=(0, 2, 3)).tolist(),
                    pixel_std=(train.std(axis=(0, 2, 3)) + 1e-6).tolist())
    if pixels == "standardised":
        x = _standardise(x, split["train"])
    return _classification(x, y, split, info)


def load_sequences(spec, seed: int) -> Splits:
    if spec.name == "digits_rows":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.images.astype(np.float32)  # (N, 8 rows = steps, 8 pixels = features)
        y = bunch.target.astype(np.int64)
        names = [str(c) for c in range(10)]
    elif spec.name == "table" and spec.stream:
        return _streamed_table(spec)
    elif spec.name == "table":
        values, y, names = formats.read_table(spec.path, spec.format, spec.features, spec.label)
        x = values[:, :, None]  # (N, columns = steps, 1)
    else:
        raise ValueError(f"not a sequence dataset: {spec.name!r}")
    split = split_indices(y, spec.val_fraction, spec.test_fraction, seed)
    x = _standardise(x, split["train"])
    info = DataInfo("sequence", num_classes=len(names), feature_dim=x.shape[2],
                    seq_len=x.shape[1], class_names=names)
    return _classification(x, y, split, info)


STATS_ROWS = 50_000  # rows of a streamed table its standardisation statistics come from


def _streamed_table(spec) -> Splits:
    """Validation and test read whole; training rows left in place, to stream (`StreamedTrain`).

    Classes come from the validation and test tables; the standardisation from the first
    STATS_ROWS training rows (one mean and deviation over all feature columns, as for a table
    loaded whole).
    """
    frames = {name: formats.table_dataset(path, spec.format, f"data.{name}_path").to_pandas()
              for name, path in (("val", spec.val_path), ("test", spec.test_path))}
    classes = sorted({str(v) for frame in frames.values() if spec.label in frame.columns
                      for v in frame[spec.label].unique()})
    sample = formats.table_dataset(spec.path, spec.format).limit(STATS_ROWS).to_pandas()
    values, _ = formats.encode_table(sample, spec.features, spec.label, classes, spec.path)
    encode = EncodeRows(spec.features, spec.label, classes, float(values.mean()),
                        float(values.std()) + 1e-6, spec.path)
    split = {}
    for name, frame in frames.items():
        encode.where = getattr(spec, f"{name}_path")
        rows = encode(frame)
        split[name] = TensorDataset(torch.from_numpy(rows["x"]), torch.from_numpy(rows["y"]))
    encode.where = spec.path
    train = formats.table_dataset(spec.path, spec.format)
    rows = train.count()  # Parquet: from the files' metadata
    info = DataInfo("sequence", num_classes=len(classes), feature_dim=1,
                    seq_len=len(spec.features), class_names=classes)
    return Splits(StreamedTrain(rows, train.map_batches(encode, batch_format="pandas")),
                  split["val"], split["test"], info)


def load_text(spec, seed: int) -> Splits:
    """Character LM: contiguous train | val | test blocks, cut into (context + 1)-char chunks.

    The blocks are contiguous (not shuffled characters) so that validation text is text the
    model has not seen; the seed only shuffles the order of training chunks, in the sampler.
    """
    text = formats.read_text(spec.source)
    vocab = sorted(set(text))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    ids = np.fromiter((lookup[ch] for ch in text), dtype=np.int64, count=len(text))
    n_val, n_test = int(len(ids) * spec.val_fraction), int(len(ids) * spec.test_fraction)
    n_train = len(ids) - n_val - n_test
    blocks = {"train": ids[:n_train], "val": ids[n_train:n_train + n_val],
              "test": ids[n_train + n_val:]}
    size = spec.context + 1
    if min(len(b) for b in blocks.values()) < size:
        raise formats.DataError(f"text {spec.source!r} is too short for context {spec.context}"
                                " in every split; lower data.context or use a longer text")

    def chunks(block: np.ndarray) -> TensorDataset:
        rows = torch.from_numpy(block[: len(block) // size * size].reshape(-1, size))
        return TensorDataset(rows[:, :-1].contiguous(), rows[:, 1:].contiguous())  # (N, T)

    info = DataInfo("lm", seq_len=spec.context, vocab=vocab)
    return Splits(chunks(blocks["train"]), chunks(blocks["val"]), chunks(blocks["test"]), info)


def unigram_bits_per_char(splits: Splits) -> float:
    """Bits per character of the best model that ignores context (training frequencies),
    measured on the validation split: the baseline an LM has to beat."""
    counts = torch.bincount(splits.train.tensors[1].flatten(),
                            minlength=len(splits.info.vocab)).double() + 1.0
    log_p = torch.log2(counts / counts.sum())
    return float(-log_p[splits.val.tensors[1].flatten()].mean())


def load_pairs(spec, seed: int) -> Splits:
    """Source/target pairs: generated dates or the user's parallel text (seq2seq_data)."""
    from trainyard.supervised import seq2seq_data as s2s

    if spec.name == "dates":
        splits, groups = s2s.date_pairs(seed, spec.train_size, spec.unseen_formats,
                                        spec.val_fraction, spec.test_fraction)
        names = ["seen formats", "unseen formats"]
        words = False
    else:
        pairs = s2s.read_parallel(spec.path)
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = max(1, int(len(pairs) * spec.val_fraction))
        n_test = max(1, int(len(pairs) * spec.test_fraction))
        pick = lambda index: [pairs[i] for i in index]  # noqa: E731
        splits = {"val": pick(order[:n_val]), "test": pick(order[n_val:n_val + n_test]),
                  "train": pick(order[n_val + n_test:])}
        groups, names, words = [0] * len(splits["test"]), ["all"], spec.tokens == "words"
    source = s2s.Vocab.build([a for a, _ in splits["train"]], words)
    target = s2s.Vocab.build([b for _, b in splits["train"]], words)
    info = DataInfo("seq2seq", vocab=source.tokens, target_vocab=target.tokens,
                    word_tokens=words, groups=names,
                    seq_len=max(len(source.encode(a)) for a, _ in splits["train"]))
    return Splits(s2s.pairs_to_tensors(splits["train"], source, target),
                  s2s.pairs_to_tensors(splits["val"], source, target),
                  s2s.pairs_to_tensors(splits["test"], source, target, groups), info)


def load_dataset(spec, seed: int, pixels: str = "standardised") -> Splits:
    """The splits the spec's `data` section describes (`pixels`: see load_images)."""
    from trainyard.supervised.spec_data import IMAGE_DATA, PAIR_DATA, TEXT_DATA

    if spec.name in PAIR_DATA:
        return load_pairs(spec, seed)
    if spec.name in IMAGE_DATA:
        return load_images(spec, seed, pixels)
    if spec.name in TEXT_DATA:
        return load_text(spec, seed)
    return load_sequences(spec, seed)

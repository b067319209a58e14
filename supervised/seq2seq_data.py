"""Data for sequence-to-sequence jobs: dates to normalise, generated from the seed, and the
user's parallel text (`source<TAB>target` lines).

Dates: every day from 1950 to 2049 written in one of several surface formats ("3rd of March
1998", "03/03/98", "March 3, 1998", "1998.3.3", ...) -> "1998-03-03". The *dates* are split
into train / val / test, so a held-out date was never seen in any format; the test split also
writes its dates in formats training never showed (`data.unseen_formats`), reported apart.

Tokens are characters (or whitespace-separated words for parallel text); ids 0-2 are PAD, BOS
and EOS in both vocabularies, which are saved with the run's model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import TensorDataset

from trainyard.supervised.dates import FORMATS
from trainyard.supervised.formats import DataError

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["<pad>", "<s>", "</s>"]



@dataclass
class Vocab:
    """Token <-> id, with PAD/BOS/EOS first."""

    tokens: list[str]
    words: bool = False  # whitespace tokens (else characters)
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts, words: bool = False) -> Vocab:
        seen = sorted({t for text in texts for t in (text.split() if words else text)})
        return cls(SPECIALS + seen, words)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; tokens the vocabulary lacks are dropped (none in training)."""
        return [self.index[t] for t in (text.split() if self.words else text) if t in self.index]

    def decode(self, ids) -> str:
        tokens = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i > EOS:
                tokens.append(self.tokens[i])
        return (" " if self.words else "").join(tokens)


def pad(rows: list[list[int]], length: int | None = None) -> torch.Tensor:
    length = length or max(len(r) for r in rows)
    out = torch.full((len(rows), length), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row[:length], dtype=torch.long)
    return out


def pairs_to_tensors(pairs, source: Vocab, target: Vocab, groups=None) -> TensorDataset:
    """(source ids, BOS target EOS ids[, group]) padded to each split's longest."""
    src = pad([source.encode(s) for s, _ in pairs])
    tgt = pad([[BOS, *target.encode(t), EOS] for _, t in pairs])
    if groups is None:
        return TensorDataset(src, tgt)
    return TensorDataset(src, tgt, torch.tensor(groups, dtype=torch.long))


def date_pairs(seed: int, train_size: int, unseen: list[str], val_fraction: float,
               test_fraction: float):
    """{split: [(source, target)]}, test groups (0: seen formats, 1: unseen), and texts."""
    seen = [name for name in FORMATS if name not in unseen]
    rng = np.random.default_rng(seed)
    first = dt.date(1950, 1, 1)
    days = [first + dt.timedelta(days=int(i)) for i in rng.permutation(36524)]
    n_val, n_test = int(len(days) * val_fraction), int(len(days) * test_fraction)
    held = {"val": days[:n_val], "test": days[n_val:n_val + n_test]}
    train_days = days[n_val + n_test:]

    def write(day, formats):
        name = formats[rng.integers(len(formats))]
        return FORMATS[name](day), day.isoformat()

    splits = {"train": [write(train_days[rng.integers(len(train_days))], seen)
                        for _ in range(train_size)],
              "val": [write(day, seen) for day in held["val"]]}
    test_seen = [write(day, seen) for day in held["test"]]
    test_unseen = [write(day, unseen) for day in held["test"]] if unseen else []
    splits["test"] = test_seen + test_unseen
    groups = [0] * len(test_seen) + [1] * len(test_unseen)
    return splits, groups


def read_parallel(path: str) -> list[tuple[str, str]]:
    """`source<TAB>target` lines of a UTF-8 file; a line without exactly one tab is an error
    naming it."""
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.path {path!r}: no such file (a UTF-8 text file of "
                        "source<TAB>target lines)")
    pairs = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataError(f"{file}:{number}: expected source<TAB>target, got {line[:60]!r}")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if len(pairs) < 10:
        raise DataError(f"{file}: {len(pairs)} pairs; a translation task needs at least 10")
    return pairs

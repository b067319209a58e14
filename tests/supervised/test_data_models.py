"""Splits, models, augmentation and fine-tuning: the pieces the loop is made of."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainyard.supervised.data import load_dataset, split_indices, unigram_bits_per_char
from trainyard.supervised.finetune import apply_init
from trainyard.supervised.models import RNNNet, build_model
from trainyard.supervised.spec import InitFrom, SupervisedJob
from trainyard.supervised.transformer import TransformerNet, sinusoidal
from trainyard.supervised.transforms import random_flip, random_shift


def job(**sections) -> SupervisedJob:
    return SupervisedJob.model_validate({"name": "t", "kind": "supervised", **sections})


def test_splits_are_stratified_disjoint_and_fixed_by_the_seed():
    labels = np.repeat(np.arange(5), 40)
    a, b, c = (split_indices(labels, 0.2, 0.1, seed) for seed in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], c["val"])
    together = np.concatenate(list(a.values()))
    assert len(together) == len(set(together.tolist())) == 200
    assert np.bincount(labels[a["val"]]).tolist() == [8] * 5


def test_digits_images_and_rows():
    images = load_dataset(job().data, seed=0)
    assert images.train.tensors[0].shape[1:] == (1, 8, 8) and images.info.num_classes == 10
    assert abs(float(images.train.tensors[0].mean())) < 1e-4  # standardised on train
    rows = load_dataset(job(data={"name": "digits_rows"}, model={"arch": "gru"}).data, 0)
    assert rows.train.tensors[0].shape[1:] == (8, 8) and rows.info.task == "sequence"
    assert len(rows.test) == len(images.test)


def test_text_splits_and_unigram_baseline():
    spec = job(data={"name": "text", "context": 64}, model={"arch": "lstm"})
    data = load_dataset(spec.data, 0)
    x, y = data.train.tensors
    assert x.shape[1] == 64 and torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert 60 < len(data.info.vocab) < 200
    bpc = unigram_bits_per_char(data)
    assert 4.0 < bpc < np.log2(len(data.info.vocab))  # better than uniform, far from good


@pytest.mark.parametrize("model,data,shape", [
    ({"arch": "resnet", "widths": [8, 16, 32], "blocks_per_stage": 2}, {"name": "digits"},
     (4, 10)),
    ({"arch": "lstm", "bidirectional": True, "hidden": 16}, {"name": "digits_rows"}, (4, 10)),
    ({"arch": "gru", "layers": 1, "hidden": 16}, {"name": "text", "context": 16}, (4, 16, None)),
    ({"arch": "transformer", "d_model": 32, "layers": 1, "positions": "sinusoidal"},
     {"name": "text", "context": 16}, (4, 16, None)),
    ({"arch": "transformer", "d_model": 32, "layers": 1}, {"name": "digits_rows"}, (4, 10)),
])
def test_models_fit_their_data(model, data, shape):
    spec = job(model=model, data=data)
    splits = load_dataset(spec.data, 0)
    net = build_model(spec.model, splits.info)
    out = net(splits.train.tensors[0][:4])
    expected = tuple(len(splits.info.vocab) if s is None else s for s in shape)
    assert out.shape == expected


def test_depth_and_width_come_from_the_spec():
    info = load_dataset(job().data, 0).info
    small = build_model(job(model={"arch": "resnet", "widths": [8]}).model, info)
    big = build_model(job(model={"arch": "resnet", "widths": [8, 16],
                                 "blocks_per_stage": 2}).model, info)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > 4 * count(small)


def test_causal_lm_does_not_see_the_future():
    torch.manual_seed(0)
    for net in (TransformerNet(20, 32, 4, 2, 2, 0.0, "learned", 12, vocab=20, causal=True),
                RNNNet("lstm", 20, 16, 1, False, 0.0, vocab=20, lm=True)):
        net.eval()
        x = torch.randint(0, 20, (1, 12))
        changed = x.clone()
        changed[0, 8:] = (changed[0, 8:] + 1) % 20
        assert torch.allclose(net(x)[0, :8], net(changed)[0, :8], atol=1e-5)
        assert not torch.allclose(net(x)[0, 8:], net(changed)[0, 8:])


def test_sinusoidal_table():
    table = sinusoidal(10, 8)
    assert table.shape == (1, 10, 8)
    assert torch.allclose(table[0, 0, 0::2], torch.zeros(4))
    assert torch.allclose(table[0, 0, 1::2], torch.ones(4))


def test_random_shift_and_flip():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    assert torch.equal(random_shift(images, 0), images)
    shifted = random_shift(images, 1, torch.Generator().manual_seed(3))
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    for original, out in zip(images, flipped, strict=True):
        assert torch.equal(out, original) or torch.equal(out, original.flip(-1))


def test_fine_tuning_replaces_the_head_and_freezes_the_backbone():
    info = load_dataset(job().data, 0).info
    spec = job(model={"arch": "resnet", "widths": [8]})
    source, target = build_model(spec.model, info), build_model(spec.model, info)
    trainable = apply_init(target, source.state_dict(),
                           InitFrom(source="x", freeze_backbone=True, new_head=True))
    assert trainable and all(name.startswith("head.") for name in trainable)
    assert torch.equal(target.stem[0].weight, source.stem[0].weight)
    assert not torch.equal(target.head[3].weight, source.head[3].weight)


def test_fine_tuning_from_another_architecture_is_a_clear_error():
    info = load_dataset(job().data, 0).info
    small = build_model(job(model={"arch": "resnet", "widths": [8]}).model, info)
    wide = build_model(job(model={"arch": "resnet", "widths": [16]}).model, info)
    with pytest.raises(ValueError, match="does not fit"):
        apply_init(wide, small.state_dict(), InitFrom(source="x"))

"""The training loop's arithmetic, outside Ray: accumulation, schedule, evaluation."""

from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainyard.supervised.spec import SupervisedJob
from trainyard.supervised.train_loop import evaluate, train_epoch, warmup_cosine


def _spec(accum: int) -> SupervisedJob:
    return SupervisedJob.model_validate({
        "name": "t", "kind": "supervised", "data": {"name": "digits_rows"},
        "model": {"arch": "gru"}, "train": {"grad_accum": accum, "grad_clip": None,
                                             "steps_per_epoch": 1}})


def _one_step(accum: int, data) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights before, weights after) one optimizer step over 8 samples in `accum` parts."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    before = model[1].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = DataLoader(data, batch_size=8 // accum, shuffle=False)
    stats = train_epoch(model, loader, optimizer, scheduler, _spec(accum),
                        torch.device("cpu"), torch.Generator(),
                        (contextlib.nullcontext(), None))
    assert stats["steps"] == 1 and stats["train/accuracy"] <= 1
    return before, model[1].weight.detach().clone()


def test_accumulating_two_half_batches_equals_one_full_batch():
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(8, 2, 3), torch.randint(0, 3, (8,)))
    before, full = _one_step(1, data)
    _, accumulated = _one_step(2, data)
    assert not torch.allclose(before, full)  # the step moved the weights
    assert torch.allclose(full, accumulated, atol=1e-6)


def test_warmup_then_cosine_to_zero():
    factor = warmup_cosine(10, 110)
    assert factor(0) == 0.1 and factor(9) == 1.0
    assert abs(factor(60) - 0.5) < 1e-9 and factor(110) == 0.0


def test_evaluate_counts_every_sample():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))  # always predicts class 0
    data = TensorDataset(torch.randn(300, 2, 2), torch.tensor([0] * 200 + [1] * 100))
    result = evaluate(model, data, torch.device("cpu"))
    assert abs(result["accuracy"] - 2 / 3) < 1e-9

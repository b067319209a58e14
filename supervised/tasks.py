"""What the one supervised training loop (train_loop.py) asks of each kind of model.

A `Task` owns what differs between image or sequence classification, character language
modelling, a VAE and a GAN: the networks and their optimizers, one training epoch's steps, the
validation and test metrics, and the artifacts a run leaves. The loop owns everything else:
Ray Train, DDP, the learning-rate schedule, checkpoints, resume, early stopping, the best
model by the task's monitored metric (`spec.monitor`), MLflow.

Single-network tasks only say how a batch becomes a loss (`loss`): `Task.train_epoch` does the
micro-batch accumulation, DDP's no_sync, mixed precision and clipping for all of them. A task
with several networks (the GAN) writes its own `train_epoch`.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

Nets = dict[str, nn.Module]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """The values summed over the DDP ranks (as they are on a single worker)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def make_optimizer(model: nn.Module, train, lr: float | None = None,
                   betas: tuple[float, float] | None = None) -> torch.optim.Optimizer:
    # No weight decay on biases, norm scales and embeddings' 1-d friends: decaying them hurts.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    lr = train.lr if lr is None else lr
    if train.optimizer == "sgd" and betas is None:
        return torch.optim.SGD(groups, lr=lr, momentum=train.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas or (0.9, 0.999))


def loss_and_hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Mean cross-entropy, correct predictions, predictions; (B, K) or (B, T, K) logits."""
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    loss = F.cross_entropy(logits.float(), targets)
    return loss, (logits.argmax(-1) == targets).sum(), targets.numel()


class Task:
    """Classification of images or sequences: the default task, and the base of the others."""

    #: how images reach the task: "standardised" per channel, or "unit" pixels in [0, 1]
    pixels = "standardised"
    #: networks that are a running average of another (name -> the network averaged): no
    #: optimizer and no DDP wrapper, the task updates them itself
    averaged: dict[str, str] = {}

    def __init__(self, spec, info=None):
        self.spec, self.info = spec, info

    # ----------------------------------------------------------------- driver side, before Ray
    def prepare(self, data):
        """The splits as this task trains on them (runs once, in the driver)."""
        return data

    # ----------------------------------------------------------------- every rank
    def build(self, sample: torch.Tensor) -> Nets:
        from trainyard.supervised.models import build_model

        return {"model": build_model(self.spec.model, self.info, sample)}

    def optimizers(self, nets: Nets) -> dict[str, torch.optim.Optimizer]:
        return {"model": make_optimizer(nets["model"], self.spec.train)}

    def base_lr(self, name: str) -> float:
        """The peak learning rate of net `name` (a PBT trial's new lr overrides a checkpoint's)."""
        return self.spec.train.lr

    def transform(self, inputs: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """A training batch before the step: random crops and flips for images."""
        if self.spec.task == "image":
            from trainyard.supervised.transforms import augment_batch

            return augment_batch(inputs, self.spec.data, rng)
        return inputs

    def loss(self, model: nn.Module, inputs, targets, step: int):
        """(mean loss to minimise, {name: sum over the batch}, examples)."""
        loss, hits, n = loss_and_hits(model(inputs), targets)
        return loss, {"loss": loss.detach() * n, "accuracy": hits}, n

    def train_epoch(self, nets: Nets, loader, optimizers, schedulers, device, rng, precision,
                    step: int) -> dict:
        """One pass (or `train.steps_per_epoch` optimizer steps) over the training split;
        metrics averaged over every rank's examples, and "steps" taken."""
        model, optimizer = nets["model"], optimizers["model"]
        scheduler = schedulers["model"]
        autocast, scaler = precision
        train = self.spec.train
        accum, cap = train.grad_accum, train.steps_per_epoch
        model.train()
        sums: dict[str, float] = {}
        count, steps = 0, 0
        start = time.perf_counter()
        for micro, (inputs, targets) in enumerate(loader):
            inputs = self.transform(inputs, rng)
            inputs, targets = inputs.to(device), targets.to(device)
            stepping = (micro + 1) % accum == 0
            # DDP averages gradients on every backward; between optimizer steps it need not.
            sync = contextlib.nullcontext() if stepping or not hasattr(model, "no_sync") \
                else model.no_sync()
            with sync:
                with autocast:
                    loss, batch_sums, n = self.loss(model, inputs, targets, step + steps)
                (scaler.scale(loss / accum) if scaler else loss / accum).backward()
            for name, value in batch_sums.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            count += n
            if not stepping:
                continue
            if scaler:
                scaler.unscale_(optimizer)
            if train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            steps += 1
            if cap and steps >= cap:
                break
        seconds = time.perf_counter() - start
        names = sorted(sums)
        totals = all_sum([sums[k] for k in names] + [count], device)
        count = totals[-1]
        return {**{f"train/{k}": v / count for k, v in zip(names, totals[:-1], strict=True)},
                "perf/samples_per_s": count / seconds, "perf/epoch_s": seconds, "steps": steps}

    @torch.no_grad()
    def evaluate(self, nets: Nets, dataset, device, autocast=None) -> dict[str, float]:
        """Metrics over a whole split, unprefixed (every rank computes them: no DDP inside)."""
        model = nets["model"]
        model.eval()
        sums: dict[str, float] = {}
        count = 0
        for inputs, targets in DataLoader(dataset, batch_size=256):
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast or contextlib.nullcontext():
                _, batch_sums, n = self.loss(model, inputs, targets, 0)
            for name, value in batch_sums.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            count += n
        return {name: value / count for name, value in sums.items()}

    def epoch_metrics(self, stats: dict, val: dict, lr: float, epoch: int) -> dict:
        return {**stats, **{f"val/{k}": v for k, v in val.items()}, "train/lr": lr,
                "train/epoch": epoch}

    def test_metrics(self, nets: Nets, data, device, autocast) -> dict[str, float]:
        """The best model's metrics on the test split (rank 0 logs them)."""
        return {f"test/{k}": v for k, v in self.evaluate(nets, data.test, device,
                                                         autocast).items()}

    def epoch_images(self, nets: Nets, data, records, step: int, epoch: int) -> None:
        """Rank 0, after an epoch: pictures of training so far (generative tasks)."""

    def final_artifacts(self, nets: Nets, data, records, device) -> None:
        """Rank 0, after the test: the best model and the task's end-of-run artifacts."""
        from trainyard.supervised import artifacts

        artifacts.log_run_artifacts(self.spec, records, nets["model"], data, device)


class LanguageModel(Task):
    """Next-character prediction: the classification loss at every step, in bits too."""

    def epoch_metrics(self, stats: dict, val: dict, lr: float, epoch: int) -> dict:
        metrics = super().epoch_metrics(stats, val, lr, epoch)
        for split in ("train", "val"):  # natural-log loss -> bits per character, perplexity
            metrics[f"{split}/bits_per_char"] = metrics[f"{split}/loss"] / math.log(2)
        metrics["val/perplexity"] = math.exp(min(val["loss"], 50.0))
        return metrics

    def test_metrics(self, nets: Nets, data, device, autocast) -> dict[str, float]:
        metrics = super().test_metrics(nets, data, device, autocast)
        metrics["test/bits_per_char"] = metrics["test/loss"] / math.log(2)
        return metrics

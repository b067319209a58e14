"""The supervised training loop: one function that Ray Train runs on every worker (DDP rank).

One worker or many, CPU or GPU, it is the same code: Ray Train sets up the process group, wraps
the model in DDP and moves batches to the worker's device. Rank 0 logs to MLflow and writes
the checkpoints; every rank calls `ray.train.report` each epoch (it is a barrier in Train V2).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from trainyard.checkpoints import load_state, save_state
from trainyard.supervised.data import load_dataset
from trainyard.supervised.models import build_model
from trainyard.supervised.spec import SupervisedJob
from trainyard.supervised.transforms import random_shift


def _make_optimizer(model: torch.nn.Module, train) -> torch.optim.Optimizer:
    # No weight decay on biases and norm scales: decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=train.lr)


def _warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, device: torch.device) -> dict[str, float]:
    """Loss and accuracy over a whole dataset (every rank computes it: the sets are small)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=512)
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
    return {"loss": loss_sum / count, "accuracy": correct / count}


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum values over the ranks (a no-op on one worker)."""
    if not dist.is_available() or not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _train_epoch(model, loader, optimizer, scheduler, spec, device, generator) -> dict:
    model.train()
    loss_sum, correct, count, steps = 0.0, 0, 0, 0
    start = time.perf_counter()
    for images, labels in loader:
        if spec.data.augment:
            images = random_shift(images, 1, generator)
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.grad_clip)
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
        steps += 1
    seconds = time.perf_counter() - start
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], device)
    return {"train/loss": loss_sum / count, "train/accuracy": correct / count,
            "perf/samples_per_s": count / seconds, "steps": steps}


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point. config: {'spec': resolved spec dict, 'ctx': RunContext}."""
    # Ray Train logs every report at INFO in the workers (through a logger named by its file
    # path, so only the root level reaches it); the driver's progress line says it once.
    logging.getLogger().setLevel(logging.WARNING)
    # DDP warns when a 1x1 strided conv's gradient layout differs from its bucket: harmless.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    spec = SupervisedJob.model_validate(config["spec"])
    ctx = config["ctx"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(ctx.seed)
    device = ray.train.torch.get_device()

    data = load_dataset(spec.data, ctx.seed)
    model = build_model(spec.model, data.in_channels, data.num_classes)
    sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True,
                                 seed=ctx.seed)
    loader = DataLoader(data.train, batch_size=max(1, spec.train.batch_size // world),
                        sampler=sampler)
    steps_per_epoch = len(loader)
    optimizer = _make_optimizer(model, spec.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(
        round(spec.train.warmup_epochs * steps_per_epoch), spec.stop.epochs * steps_per_epoch))
    augment_rng = torch.Generator().manual_seed(ctx.seed * 1000 + rank)

    state = {"epoch": 0, "global_step": 0, "best_val": -1.0, "best_epoch": 0, "stale": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resumed: by `trainyard resume` or after a worker failure
        with checkpoint.as_directory() as folder:
            saved = load_state(folder)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        augment_rng.set_state(saved["augment_rng"])
        state.update(saved["progress"])
        best_model = saved["best_model"]
    else:
        best_model = {k: v.clone() for k, v in model.state_dict().items()}
    model = ray.train.torch.prepare_model(model)  # DDP (and device) when world > 1
    plain = model.module if hasattr(model, "module") else model
    logger = ctx.logger() if rank == 0 else None
    if rank == 0:
        logger.log({"perf/startup_s": ctx.startup_seconds()}, step=state["global_step"])
    started = time.monotonic()

    for epoch in range(state["epoch"] + 1, spec.stop.epochs + 1):
        sampler.set_epoch(epoch)
        stats = _train_epoch(model, loader, optimizer, scheduler, spec, device, augment_rng)
        state["global_step"] += stats.pop("steps")
        val = evaluate(plain, data.val, device)
        state["epoch"] = epoch
        if val["accuracy"] > state["best_val"]:
            state.update(best_val=val["accuracy"], best_epoch=epoch, stale=0)
            best_model = {k: v.detach().clone() for k, v in plain.state_dict().items()}
        else:
            state["stale"] += 1
        metrics = {**stats, "val/loss": val["loss"], "val/accuracy": val["accuracy"],
                   "train/lr": scheduler.get_last_lr()[0], "train/epoch": epoch}
        out_of_time = spec.stop.minutes and time.monotonic() - started > 60 * spec.stop.minutes
        patience_out = spec.stop.patience and state["stale"] >= spec.stop.patience
        last = epoch == spec.stop.epochs or bool(out_of_time) or bool(patience_out)
        if rank == 0:
            logger.log(metrics, step=state["global_step"])
            ctx.emit(f"epoch {epoch}/{spec.stop.epochs}", metrics)
        _report(metrics, rank, last or epoch % spec.checkpoint.every_epochs == 0, {
            "model": plain.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "augment_rng": augment_rng.get_state(),
            "progress": dict(state), "best_model": best_model})
        if last:
            break

    plain.load_state_dict(best_model)  # test the weights that did best on validation
    test = evaluate(plain, data.test, device)
    final = {"test/loss": test["loss"], "test/accuracy": test["accuracy"],
             "val/best_accuracy": state["best_val"], "train/best_epoch": state["best_epoch"]}
    if rank == 0:
        logger.log(final, step=state["global_step"])
    ray.train.report(final)


def _report(metrics: dict, rank: int, with_checkpoint: bool, state: dict) -> None:
    """Report the epoch; rank 0 attaches a checkpoint when one is due."""
    if rank != 0 or not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_state(folder, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

"""The supervised training loop: one function that Ray Train runs on every worker (DDP rank).

One worker or many, CPU or GPU, it is the same code: Ray Train sets up the process group, wraps
the model in DDP and gives each worker its device. Rank 0 logs to MLflow and writes the
checkpoints; every rank calls `ray.train.report` each epoch (it is a barrier in Train V2).
"""

from __future__ import annotations

import contextlib
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
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trainyard import tracking
from trainyard.checkpoints import load_state, save_state
from trainyard.supervised import artifacts
from trainyard.supervised.data import ShardBatches, StreamedTrain
from trainyard.supervised.finetune import apply_init
from trainyard.supervised.models import build_model
from trainyard.supervised.spec import SupervisedJob
from trainyard.supervised.transforms import augment_batch


def make_optimizer(model: torch.nn.Module, train) -> torch.optim.Optimizer:
    # No weight decay on biases, norm scales and embeddings' 1-d friends: decaying them hurts.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=train.lr)


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def loss_and_hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Mean cross-entropy, correct predictions, predictions; (B, K) or (B, T, K) logits."""
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    loss = F.cross_entropy(logits.float(), targets)
    return loss, (logits.argmax(-1) == targets).sum(), targets.numel()


def precision_context(spec: SupervisedJob, device: torch.device):
    """(autocast context, GradScaler or None): mixed precision on GPU only."""
    if device.type != "cuda" or spec.train.precision == "fp32":
        return contextlib.nullcontext(), None
    choice = spec.train.precision
    if choice == "auto":
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if choice == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, device: torch.device, autocast=None) -> dict:
    """Loss and accuracy over a whole split (every rank computes it: it keeps DDP out)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for inputs, targets in DataLoader(dataset, batch_size=256):
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast or contextlib.nullcontext():
            loss, hits, n = loss_and_hits(model(inputs), targets)
        loss_sum, correct, count = loss_sum + loss.item() * n, correct + int(hits), count + n
    return {"loss": loss_sum / count, "accuracy": correct / count}


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _rank0_decides(flag: bool, rank: int, device: torch.device) -> bool:
    """Rank 0's value of `flag`, on every rank (one all-reduce; as is on a single worker)."""
    return _all_sum([float(flag and rank == 0)], device)[0] > 0


def train_epoch(model, loader, optimizer, scheduler, spec, device, rng, precision) -> dict:
    """One pass (or `train.steps_per_epoch` optimizer steps); returns summed-over-ranks stats."""
    autocast, scaler = precision
    accum, cap = spec.train.grad_accum, spec.train.steps_per_epoch
    model.train()
    loss_sum, correct, count, steps = 0.0, 0, 0, 0
    start = time.perf_counter()
    for micro, (inputs, targets) in enumerate(loader):
        if spec.task == "image":
            inputs = augment_batch(inputs, spec.data, rng)
        inputs, targets = inputs.to(device), targets.to(device)
        stepping = (micro + 1) % accum == 0
        # DDP averages gradients on every backward; between optimizer steps it need not.
        sync = contextlib.nullcontext() if stepping or not hasattr(model, "no_sync") \
            else model.no_sync()
        with sync:
            with autocast:
                loss, hits, n = loss_and_hits(model(inputs), targets)
            (scaler.scale(loss / accum) if scaler else loss / accum).backward()
        loss_sum, correct, count = loss_sum + loss.item() * n, correct + int(hits), count + n
        if not stepping:
            continue
        if scaler:
            scaler.unscale_(optimizer)
        if spec.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.grad_clip)
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
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], device)
    return {"train/loss": loss_sum / count, "train/accuracy": correct / count,
            "perf/samples_per_s": count / seconds, "perf/epoch_s": seconds, "steps": steps}


def _epoch_metrics(spec, stats: dict, val: dict, lr: float, epoch: int) -> dict:
    metrics = {**stats, "val/loss": val["loss"], "val/accuracy": val["accuracy"],
               "train/lr": lr, "train/epoch": epoch}
    if spec.task == "lm":  # natural-log loss -> bits per character and perplexity
        for split in ("train", "val"):
            metrics[f"{split}/bits_per_char"] = metrics[f"{split}/loss"] / math.log(2)
        metrics["val/perplexity"] = math.exp(min(val["loss"], 50.0))
    return metrics


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point. config: spec (dict), ctx (RunContext), data (Splits), init."""
    # Ray Train logs every report at INFO in the workers (through a logger named by its file
    # path, so only the root level reaches it); the driver's progress line says it once.
    logging.getLogger().setLevel(logging.WARNING)
    # DDP warns when a 1x1 strided conv's gradient layout differs from its bucket: harmless.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    spec = SupervisedJob.model_validate(config["spec"])
    ctx, data = config["ctx"], config["data"]
    streamed = isinstance(data.train, StreamedTrain)
    if not streamed:
        # The splits arrive as read-only views of Ray's shared memory; batches gathered from a
        # private copy train ~5% faster (measured: tests/benchmarks/bench_supervised.py).
        data.train = TensorDataset(*(t.clone() for t in data.train.tensors))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(ctx.seed)
    device = ray.train.torch.get_device()
    precision = precision_context(spec, device)

    model = build_model(spec.model, data.info, data.val.tensors[0][:2])
    if config.get("init") is not None:
        apply_init(model, config["init"], spec.init_from)
    micro_batch = max(1, spec.train.batch_size // (world * spec.train.grad_accum))
    if streamed:
        sampler = None
        loader = ShardBatches(ray.train.get_dataset_shard("train"), micro_batch,
                              data.train.rows // world, ctx.seed * 100 + rank)
    else:
        sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True,
                                     seed=ctx.seed)
        loader = DataLoader(data.train, batch_size=micro_batch, sampler=sampler,
                            drop_last=True)
    steps_per_epoch = max(1, len(loader) // spec.train.grad_accum)
    if spec.train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, spec.train.steps_per_epoch)
    optimizer = make_optimizer(model, spec.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        round(spec.train.warmup_epochs * steps_per_epoch), spec.stop.epochs * steps_per_epoch))
    rng = torch.Generator().manual_seed(ctx.seed * 1000 + rank)
    monitor, mode = spec.monitor
    state = {"epoch": 0, "global_step": 0, "best": None, "best_epoch": 0, "stale": 0}
    best_model = None

    # Train's own latest checkpoint (`trainyard resume`, a worker failure), else the one a sweep
    # trial starts from (Tune restoring the trial, or PBT handing over a better trial's).
    checkpoint = ray.train.get_checkpoint() or (
        ray.train.Checkpoint(ctx.restore_from) if ctx.restore_from else None)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = load_state(folder)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        # The spec's learning rate wins over the saved one: a PBT trial restarts from another
        # trial's checkpoint with a new lr (and resuming a run changes nothing).
        scheduler.base_lrs = [spec.train.lr] * len(scheduler.base_lrs)
        rng.set_state(saved["augment_rng"])
        state.update(saved["progress"])
        best_model = saved["best_model"]
    model = ray.train.torch.prepare_model(model)  # DDP (and device) when world > 1
    _tag_nodes(ctx, rank, world)
    plain = model.module if hasattr(model, "module") else model
    logger = _rank0_logger(ctx, config.get("fit_id"), state["global_step"]) if rank == 0 \
        else None
    started = time.monotonic()

    for epoch in range(state["epoch"] + 1, spec.stop.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        stats = train_epoch(model, loader, optimizer, scheduler, spec, device, rng, precision)
        state["global_step"] += stats.pop("steps")
        val = evaluate(plain, data.val, device, precision[0])
        metrics = _epoch_metrics(spec, stats, val, scheduler.get_last_lr()[0], epoch)
        state["epoch"] = epoch
        score = metrics[monitor]
        if state["best"] is None or (score > state["best"] if mode == "max"
                                     else score < state["best"]):
            state.update(best=score, best_epoch=epoch, stale=0)
            best_model = {k: v.detach().clone() for k, v in plain.state_dict().items()}
        else:
            state["stale"] += 1
        # rank 0's clock decides for all: ranks that disagreed at the boundary would leave
        # one waiting in the next epoch's all-reduce for a peer that had stopped
        out_of_time = _rank0_decides(
            bool(spec.stop.minutes) and time.monotonic() - started > 60 * spec.stop.minutes,
            rank, device)
        patience_out = spec.stop.patience and state["stale"] >= spec.stop.patience
        last = epoch == spec.stop.epochs or bool(out_of_time) or bool(patience_out)
        if rank == 0:
            logger.log(metrics, step=state["global_step"])
            ctx.emit(f"epoch {epoch}/{spec.stop.epochs}", metrics)
        _report(metrics, rank, last or epoch % spec.checkpoint.every_epochs == 0, {
            "model": plain.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "augment_rng": rng.get_state(),
            "progress": dict(state), "best_model": best_model})
        if last:
            break

    plain.load_state_dict(best_model)  # test the weights that did best on validation
    test = evaluate(plain, data.test, device, precision[0])
    final = {"test/loss": test["loss"], "test/accuracy": test["accuracy"],
             f"{monitor.replace('val/', 'val/best_')}": state["best"],
             "train/best_epoch": state["best_epoch"]}
    if spec.task == "lm":
        final["test/bits_per_char"] = test["loss"] / math.log(2)
    if rank == 0:
        logger.log(final, step=state["global_step"])
        artifacts.log_run_artifacts(spec, ctx.run, plain, data, device)
    ray.train.report(final)


def _tag_nodes(ctx, rank: int, world: int) -> None:
    """Which Ray node each rank runs on: tags `trainyard.node.rank<k>`, written by rank 0 (a
    restart after a lost node writes the new placement)."""
    nodes = [ray.get_runtime_context().get_node_id()]
    if world > 1 and dist.is_initialized():
        mine, nodes = nodes[0], [None] * world
        dist.all_gather_object(nodes, mine)
    if rank == 0:
        tracking.set_tags(ctx.run, {f"{tracking.TAG}node.rank{r}": node
                                    for r, node in enumerate(nodes)})


def _rank0_logger(ctx, fit_id: str | None, step: int) -> tracking.RunLogger:
    """Rank 0's MLflow logger, and the record of a restart.

    After a worker failure Ray Train starts this loop again on every rank, from the latest
    checkpoint: the epochs after it are trained again, and the logger drops their points that
    the failed attempt already logged (a metric's steps never repeat). The restart is counted in
    the tag `trainyard.faults.worker_restarts` and the metric `faults/worker_restarts`.
    """
    tags = tracking.get_tags(ctx.run)
    if fit_id is None or tags.get(f"{tracking.TAG}fit_id") != fit_id:  # this fit's first start
        # The threads torch computes with on each worker (Ray sets OMP_NUM_THREADS from the
        # worker's CPUs): what to look at first when samples/s disappoint.
        tracking.set_tags(ctx.run, {f"{tracking.TAG}fit_id": fit_id,
                                    f"{tracking.TAG}torch_threads": torch.get_num_threads()})
        logger = ctx.logger()
        logger.log({"perf/startup_s": ctx.startup_seconds()}, step=step)
        return logger
    restarts = int(tags.get(f"{tracking.TAG}faults.worker_restarts", 0)) + 1
    tracking.set_tags(ctx.run, {f"{tracking.TAG}faults.worker_restarts": restarts})
    tracking.RunLogger(ctx.run).log({"faults/worker_restarts": restarts}, step=step)
    return tracking.RunLogger(ctx.run, {**ctx.skip_through, **tracking.last_steps(ctx.run)})


def _report(metrics: dict, rank: int, with_checkpoint: bool, state: dict) -> None:
    """Report the epoch; rank 0 attaches a checkpoint when one is due."""
    if rank != 0 or not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_state(folder, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

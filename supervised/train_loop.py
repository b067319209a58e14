"""The supervised training loop: one function that Ray Train runs on every worker (DDP rank).

One worker or many, CPU or GPU, it is the same code: Ray Train sets up the process group, wraps
the model in DDP and gives each worker its device. Rank 0 records the run (`trainyard.records`)
and writes the checkpoints; every rank calls `ray.train.report` each epoch (it is a barrier in
Train V2).
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
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trainyard import tracking
from trainyard.checkpoints import load_state, save_state
from trainyard.records import for_rank0 as records_for_rank0
from trainyard.supervised.data import ShardBatches, StreamedTrain
from trainyard.supervised.finetune import apply_init
from trainyard.supervised.spec import SupervisedJob
from trainyard.supervised.task_kinds import make_task
from trainyard.supervised.tasks import Task, all_sum


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


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


def evaluate(model: torch.nn.Module, dataset, device: torch.device, autocast=None) -> dict:
    """A classifier's loss and accuracy over a whole split."""
    return Task(None).evaluate({"model": model}, dataset, device, autocast)


def train_epoch(model, loader, optimizer, scheduler, spec, device, rng, precision) -> dict:
    """One epoch of a single-network task (see Task.train_epoch)."""
    return make_task(spec).train_epoch({"model": model}, loader, {"model": optimizer},
                                       {"model": scheduler}, device, rng, precision, 0)


def _rank0_decides(flag: bool, rank: int, device: torch.device) -> bool:
    """Rank 0's value of `flag`, on every rank (one all-reduce; as is on a single worker)."""
    return all_sum([float(flag and rank == 0)], device)[0] > 0


def _restore(saved: dict, nets, optimizers, schedulers, task) -> dict:
    """Load a checkpoint into the networks, optimizers and schedulers (single-network
    checkpoints of earlier versions keep their "model"/"optimizer"/"scheduler" keys)."""
    if "nets" not in saved:
        saved = {"nets": {"model": saved["model"]}, "optimizers": {"model": saved["optimizer"]},
                 "schedulers": {"model": saved["scheduler"]},
                 "best_model": {"model": saved["best_model"]}}
    for name, net in nets.items():
        net.load_state_dict(saved["nets"][name])
        if name not in optimizers:  # a running average of another network
            continue
        optimizers[name].load_state_dict(saved["optimizers"][name])
        schedulers[name].load_state_dict(saved["schedulers"][name])
        # The spec's learning rate wins over the saved one: a PBT trial restarts from another
        # trial's checkpoint with a new lr (and resuming a run changes nothing).
        schedulers[name].base_lrs = [task.base_lr(name)] * len(schedulers[name].base_lrs)
    return saved["best_model"]


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

    task = make_task(spec, data.info)
    if config.get("features") is not None:  # a GAN's FID classifier, eval.feature_run
        from trainyard.supervised.gen_metrics import classifier_from_run

        task.use_features(classifier_from_run(config["features"],
                                              config["features"]["source"]))
    nets = task.build(data.val.tensors[0][:2])
    if config.get("init") is not None:
        apply_init(nets["model"], config["init"], spec.init_from,
                   getattr(task, "backbone", None))
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
    task.steps_per_epoch = steps_per_epoch
    optimizers = task.optimizers(nets)
    schedule = warmup_cosine(round(spec.train.warmup_epochs * steps_per_epoch),
                             spec.stop.epochs * steps_per_epoch)
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule)
                  for name, opt in optimizers.items()}
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
        best_model = _restore(saved, nets, optimizers, schedulers, task)
        rng.set_state(saved["augment_rng"])
        state.update(saved["progress"])
    nets = {name: net.to(device) if name in task.averaged else ray.train.torch.prepare_model(net)
            for name, net in nets.items()}  # DDP
    plain = {name: getattr(net, "module", net) for name, net in nets.items()}
    nodes = _nodes(world)
    records = records_for_rank0(ctx) if rank == 0 else None
    if records is not None:
        # The threads torch computes with on each worker (Ray sets OMP_NUM_THREADS from the
        # worker's CPUs): what to look at first when samples/s disappoint.
        records.begin(config.get("fit_id"), state["global_step"],
                      {**nodes, f"{tracking.TAG}torch_threads": torch.get_num_threads()},
                      ctx.startup_seconds())
    started = time.monotonic()

    for epoch in range(state["epoch"] + 1, spec.stop.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        stats = task.train_epoch(nets, loader, optimizers, schedulers, device, rng, precision,
                                 state["global_step"])
        state["global_step"] += stats.pop("steps")
        val = task.evaluate(plain, data.val, device, precision[0])
        lr = next(iter(schedulers.values())).get_last_lr()[0]
        metrics = task.epoch_metrics(stats, val, lr, epoch)
        state["epoch"] = epoch
        score = metrics[monitor]
        if state["best"] is None or (score > state["best"] if mode == "max"
                                     else score < state["best"]):
            state.update(best=score, best_epoch=epoch, stale=0)
            best_model = {name: {k: v.detach().clone() for k, v in net.state_dict().items()}
                          for name, net in plain.items()}
        else:
            state["stale"] += 1
        # rank 0's clock decides for all: ranks that disagreed at the boundary would leave
        # one waiting in the next epoch's all-reduce for a peer that had stopped
        out_of_time = _rank0_decides(
            bool(spec.stop.minutes) and time.monotonic() - started > 60 * spec.stop.minutes,
            rank, device)
        patience_out = spec.stop.patience and state["stale"] >= spec.stop.patience
        last = epoch == spec.stop.epochs or bool(out_of_time) or bool(patience_out)
        checkpoint_due = last or epoch % spec.checkpoint.every_epochs == 0
        if rank == 0:
            records.log(metrics, step=state["global_step"])
            task.epoch_images(plain, data, records, state["global_step"], epoch)
            ctx.emit(f"epoch {epoch}/{spec.stop.epochs}", metrics)
            if checkpoint_due:  # a resume starts after the checkpoint: its metrics first
                records.flush()
        _report(metrics, rank, checkpoint_due, {
            "nets": {name: net.state_dict() for name, net in plain.items()},
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "schedulers": {name: sch.state_dict() for name, sch in schedulers.items()},
            "augment_rng": rng.get_state(), "progress": dict(state), "best_model": best_model})
        if last:
            break

    for name, net in plain.items():  # test the weights that did best on validation
        net.load_state_dict(best_model[name])
    final = {**task.test_metrics(plain, data, device, precision[0]),
             f"{monitor.replace('val/', 'val/best_')}": state["best"],
             "train/best_epoch": state["best_epoch"]}
    if rank == 0:
        records.log(final, step=state["global_step"])
        task.final_artifacts(plain, data, records, device)
    ray.train.report(final)


def _nodes(world: int) -> dict[str, str]:
    """Which Ray node each rank runs on, as the tags `trainyard.node.rank<k>` (rank 0 writes
    them at each start of the loop, so a restart after a lost node records the new placement)."""
    nodes = [ray.get_runtime_context().get_node_id()]
    if world > 1 and dist.is_initialized():
        mine, nodes = nodes[0], [None] * world
        dist.all_gather_object(nodes, mine)
    return {f"{tracking.TAG}node.rank{r}": node for r, node in enumerate(nodes)}


def _report(metrics: dict, rank: int, with_checkpoint: bool, state: dict) -> None:
    """Report the epoch; rank 0 attaches a checkpoint when one is due."""
    if rank != 0 or not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_state(folder, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

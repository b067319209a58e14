"""Driver side of a supervised run: build Ray Train's TorchTrainer from the spec and fit it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainyard import tracking

if TYPE_CHECKING:
    from trainyard.runs import RunContext
    from trainyard.supervised.spec import SupervisedJob


def build_trainer(spec: "SupervisedJob", ctx: "RunContext"):
    """The TorchTrainer for a run; its name and storage are the run's, so a rerun resumes."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainyard.supervised.train_loop import train_loop

    res = spec.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "ctx": ctx},
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=ctx.storage_name, storage_path=ctx.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            failure_config=FailureConfig(max_failures=0),
            # Ray Train logs every report at INFO; our progress line says it once.
            logging_config=LoggingConfig(log_level="WARNING")),
    )


def train(spec: "SupervisedJob", ctx: "RunContext") -> dict[str, float]:
    """Fit the job; return the final metrics (test accuracy and friends)."""
    result = build_trainer(spec, ctx).fit()
    if result.checkpoint is not None:
        tracking.set_tags(ctx.run, {f"{tracking.TAG}latest_checkpoint": result.checkpoint.path})
    return tracking.latest_metrics(ctx.run)

"""Driver side of a supervised run: load the data once, build Ray Train's TorchTrainer from the
spec, fit it."""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from trainyard import launcher, tracking
from trainyard.spec import UserInputError

if TYPE_CHECKING:
    from trainyard.runs import RunContext
    from trainyard.supervised.spec import SupervisedJob


def build_trainer(spec: SupervisedJob, ctx: RunContext, data, init=None, callbacks=(),
                  features=None):
    """The TorchTrainer for a run; its name and storage are the run's, so a rerun resumes."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )

    from trainyard.supervised.data import StreamedTrain
    from trainyard.supervised.train_loop import train_loop

    datasets = {}
    # A streamed table is read by the workers through Ray Train; data is None when a caller only
    # wants the scaling config.
    if data is not None and isinstance(data.train, StreamedTrain):
        datasets["train"] = data.train.dataset
        data = dataclasses.replace(data, train=StreamedTrain(data.train.rows))
    res = spec.resources
    per_worker = {"CPU": res.cpus_per_worker, **res.custom}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    # A sweep trial's Train run can be stopped by Tune killing its controller, and only the
    # cleaner then frees the workers' placement group for the next trial.
    lean = _lean_trainer(keep_cleaner=not launcher.EMBEDDED or ctx.tune_metric is not None)
    return lean(
        train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "ctx": ctx, "data": data,
                           "init": init, "features": features, "fit_id": uuid.uuid4().hex},
        datasets=datasets or None,
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.use_gpu,
                                     resources_per_worker=per_worker,
                                     placement_strategy=res.placement.upper()),
        run_config=RunConfig(
            name=ctx.storage_name, storage_path=ctx.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            # A worker that dies or raises: Train restarts all of them from the latest
            # checkpoint (train_loop counts the restarts; _record_failures says why).
            failure_config=FailureConfig(max_failures=spec.fault_tolerance.max_failures),
            # Ray Train logs every report at INFO; our progress line says it once.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=[*callbacks, _record_failures(ctx)]),
    )


def _lean_trainer(keep_cleaner: bool):
    """TorchTrainer without the Train helpers a run does not use, each an actor process that
    imports Ray on a core the workers are starting on before the first step (README,
    "Start-up"):
    - the dataset manager, started even when no Ray Dataset is passed;
    - the placement-group cleaner, which frees the workers' reservation if the controller dies
      without doing so; in a Ray this process started (`launcher.EMBEDDED`) and that ends
      with it, nothing outlives the run to need it.
    Ray Train (2.60) has no option for either, so the trainer's private list of default
    callbacks is filtered; tests/test_launcher.py fails if the names move."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            unused = (() if self.datasets else (DatasetsCallback,)) + (
                () if keep_cleaner else (PlacementGroupCleanerCallback,))
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, unused)]

    return LeanTorchTrainer


def start_train_helpers() -> None:
    """Start Ray Train's autoscaling coordinator now rather than when the controller asks for
    it: the controller waits for this actor's process to start before it starts any worker, and
    started here it comes up while the driver opens the run and loads the data. The controller
    finds it by name (one per cluster, detached: Ray Train's own choice)."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    get_or_create_autoscaling_coordinator()


def _fit_reporting(trainer, queue, ctx: RunContext):
    """Fit in a thread while this one hands each report to the sweep (`ctx.report`).

    Tune's scheduler acts in `ctx.report` (ASHA ends the trial there), so reports must be
    made from the trial's own thread; the Train controller forwards them over `queue`.
    """
    import threading

    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # re-raised in the trial's thread below
            outcome["error"] = err
        finally:
            queue.put(None)

    threading.Thread(target=fit, name="trainyard-fit", daemon=True).start()
    controller = None
    try:
        while (item := queue.get()) is not None:
            metrics, checkpoint_path, controller = item
            ctx.report(metrics, checkpoint_path)
    except SystemExit:
        # Tune stopped the trial (ASHA) or paused it (PBT). The Train run must end now, not
        # outlive this trial holding its workers' CPUs: abort it the way Ctrl-C does.
        if controller is not None:
            import ray

            ray.get(controller.abort.remote(), timeout=30)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _record_failures(ctx: RunContext):
    """A Ray Train callback (in the Train controller) that tags the run with each worker failure
    it sees: `trainyard.faults.worker_failures` (how many) and `...last_worker_error`."""
    from ray.train import UserCallback

    class RecordFailures(UserCallback):
        def __init__(self) -> None:
            self.failures = 0

        def after_exception(self, run_context, worker_exceptions) -> None:
            self.failures += 1
            errors = "; ".join(f"rank {rank}: {type(err).__name__}: "
                               f"{(str(err).strip().splitlines() or [''])[0]}"
                               for rank, err in sorted(worker_exceptions.items()))
            try:
                tracking.set_tags(ctx.run, {
                    f"{tracking.TAG}faults.worker_failures": self.failures,
                    f"{tracking.TAG}faults.last_worker_error": errors[:4000]})
            except Exception as err:  # a store that is away must not fail the recovery
                print(f"warning: could not record the worker failure: {err}", flush=True)

    return RecordFailures()


def _report_forwarder(queue):
    """A Ray Train callback (it runs in the Train controller) that forwards rank 0's reports
    and the path of any checkpoint saved with them."""
    from ray.train import UserCallback

    class ForwardReports(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            import ray

            # with the controller's own handle, so the trial can abort the run if Tune stops it
            queue.put((metrics[0], checkpoint.path if checkpoint else None,
                       ray.get_runtime_context().current_actor))

    return ForwardReports()


def _init_weights(spec: SupervisedJob, ctx: RunContext):
    """The init_from weights, read safely here and shipped to the workers with the config."""
    from trainyard.supervised.finetune import load_init_state

    if spec.init_from is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        def download(run_id: str, path: str) -> str:
            return tracking.download(tracking.RunRef(ctx.run.uri, run_id), path, tmp)

        weights = load_init_state(spec.init_from.source, download)
    tracking.set_tags(ctx.run, {f"{tracking.TAG}init_from": spec.init_from.source})
    return weights


def _feature_run(spec: SupervisedJob, ctx: RunContext):
    """The FID classifier of a GAN or VAE named by `eval.feature_run` (its info.json and
    weights, read safely here and shipped to the workers), None for the pinned digits
    classifier (or, for a VAE of other images, for no FID)."""
    import json

    from trainyard.checkpoints import load_state

    source = spec.eval.feature_run
    if spec.task not in ("gan", "vae"):
        return None
    if source is None:
        if spec.data.name != "digits" and spec.task == "gan":  # (a VAE has its bounds)
            raise UserInputError(
                f"eval.feature_run: the FID of {spec.data.name} images needs a classifier of "
                "them; train one (e.g. a resnet on the same data) and name it here as "
                "runs:/RUN_ID (the pinned classifier is for 8x8 digits only)")
        return None
    if not source.startswith("runs:/"):
        raise UserInputError(f"eval.feature_run {source!r}: give runs:/RUN_ID of a classifier")
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracking.download(tracking.RunRef(ctx.run.uri, source.removeprefix("runs:/")),
                                   "best_model", tmp)
        saved = {"info": json.loads((Path(folder) / "info.json").read_text()),
                 "state": load_state(folder), "source": source}
    tracking.set_tags(ctx.run, {f"{tracking.TAG}feature_run": source})
    return saved


def train(spec: SupervisedJob, ctx: RunContext) -> dict[str, float]:
    """Fit the job; return the final metrics (test accuracy and friends)."""
    from trainyard.supervised.data import load_dataset, unigram_bits_per_char
    from trainyard.supervised.task_kinds import make_task

    start_train_helpers()
    data = load_dataset(spec.data, ctx.seed, make_task(spec).pixels)
    data = make_task(spec, data.info).prepare(data)
    if spec.train.batch_size > len(data.train):
        raise UserInputError(f"train.batch_size {spec.train.batch_size} is larger than the "
                             f"training split ({len(data.train)} examples of {spec.data.name}):"
                             " not one batch per epoch; use a smaller batch size")
    if ":" in spec.model.arch:  # the user's network, held to the data's shapes before Ray
        from trainyard.supervised.custom_model import check_output

        try:
            check_output(spec.model, data.info, data.val.tensors[0][:2])
        except ValueError as err:
            raise UserInputError(str(err)) from None
    sizes = {f"data.{name}_size": len(getattr(data, name)) for name in ("train", "val", "test")}
    if data.info.task == "lm":
        sizes["data.vocab_size"] = len(data.info.vocab)
    tracking.set_tags(ctx.run, sizes)
    if data.info.task == "lm" and not ctx.resume:
        ctx.logger().log({"baseline/unigram_bits_per_char": unigram_bits_per_char(data)}, 0)
    init = _init_weights(spec, ctx)
    features = _feature_run(spec, ctx)
    if ctx.tune_metric is None:
        result = build_trainer(spec, ctx, data, init, features=features).fit()
    else:  # a sweep trial: every epoch's report also goes to Tune
        from ray.util.queue import Queue

        queue = Queue(actor_options={"num_cpus": 0})
        trainer = build_trainer(spec, ctx, data, init, [_report_forwarder(queue)], features)
        result = _fit_reporting(trainer, queue, ctx)
    if ctx.progress is not None:  # rank 0's last writes, done by this process (records.py)
        ctx.progress.settle()
    if result.checkpoint is not None:
        tracking.set_tags(ctx.run, {f"{tracking.TAG}latest_checkpoint": result.checkpoint.path})
    return tracking.latest_metrics(ctx.run)

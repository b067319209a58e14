"""`trainyard sweep JOB.yaml`: tune a job with Ray Tune, one MLflow parent run per sweep.

Each trial is an ordinary trainyard run of the job with the swept fields set (and one seed): a
child run nested under the sweep's parent run, with its own params, curves and status. The
workload reports each epoch / training iteration through `RunContext.report`, which hands it to
Tune, so ASHA can stop a trial early and PBT can restart one from a better trial's checkpoint.

How configurations are drawn:
  search random   Tune's sampling of each range / choice (grid values are crossed with it)
  search grid     every combination of the listed values
  search optuna   Optuna's TPE through Tune's OptunaSearch (Repeater gives each point all seeds)
  scheduler pbt   a random initial population that PBT then mutates
With several seeds, random and grid search draw the configurations first and run each one once
per seed, so the summary can give mean +- std per configuration.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard import provenance, tracking
from trainyard.loader import LoadedSpec, dump_spec
from trainyard.spec import JobBase, UserInputError, flatten
from trainyard.sweep_space import SpaceExpr, parse_space_expr, to_tune
from trainyard.sweep_summary import (
    KEPT_RESULT_KEYS,
    SCHEDULER_STOPPED,
    close_children,
    log_summary,
    print_summary,
    summarise,
    trial_rows,
)
from trainyard.sweep_trial import RUN_ID_KEY, TrialSetup, run_trial, trial_name
from trainyard.tracking import TAG, RunRef


def _points(exprs: dict[str, SpaceExpr], sweep) -> list[dict[str, Any]]:
    """Configurations for random / grid search, drawn up front so every seed runs the same."""
    import numpy as np

    enumerate_all = sweep.search == "grid"
    grid = {p: e.args for p, e in exprs.items() if e.function == "grid" or enumerate_all}
    drawn = {p: to_tune(e) for p, e in exprs.items() if p not in grid}
    rng = np.random.RandomState(sweep.seed)
    points = []
    for _ in range(1 if enumerate_all else sweep.num_samples):
        for combo in itertools.product(*grid.values()):
            point = dict(zip(grid, combo, strict=True))
            for path, domain in drawn.items():
                value = domain.sample(random_state=rng)
                point[path] = value.item() if hasattr(value, "item") else value
            points.append({path: point[path] for path in exprs})
    return points


def _mutation(expr: SpaceExpr):
    return list(expr.args) if expr.function in ("grid", "choice") else to_tune(expr)


def _search(spec: JobBase, setup: TrialSetup):
    """(param_space, search_alg, scheduler, num_samples) for the spec's sweep section."""
    from ray import tune

    sweep = spec.sweep
    exprs = {path: parse_space_expr(e) for path, e in sweep.space.items()}
    search_alg = scheduler = None
    if sweep.search == "optuna":
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        space = {p: to_tune(SpaceExpr("choice", e.args) if e.function == "grid" else e)
                 for p, e in exprs.items()}
        search_alg = OptunaSearch(space, metric=sweep.metric, mode=sweep.mode, seed=sweep.seed)
        if len(setup.seeds) > 1:
            search_alg = Repeater(search_alg, repeat=len(setup.seeds))
        param_space, num_samples = {}, sweep.num_samples * len(setup.seeds)
    elif sweep.scheduler == "pbt":
        import numpy as np
        from ray.tune.search import BasicVariantGenerator

        param_space = {p: to_tune(e) for p, e in exprs.items()}
        param_space["seed"] = tune.grid_search(setup.seeds)
        num_samples = sweep.num_samples
        # sweep.seed draws the first population, as it draws random and grid points; PBT's
        # mutations draw from the driver's global `random` and NumPy generators (Ray's PBT
        # takes no seed), so those start from it too
        search_alg = BasicVariantGenerator(random_state=sweep.seed)
        random.seed(sweep.seed)
        np.random.seed(sweep.seed)
    else:
        param_space = {"point": tune.grid_search(_points(exprs, sweep)),
                       "seed": tune.grid_search(setup.seeds)}
        num_samples = 1
    if sweep.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=sweep.grace_period,
                                  reduction_factor=sweep.reduction_factor, max_t=10**9)
    elif sweep.scheduler == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        scheduler = PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=sweep.perturbation_interval,
            hyperparam_mutations={p: _mutation(e) for p, e in exprs.items()},
            synch=sweep.pbt_synch)
    return param_space, search_alg, scheduler, num_samples


def _trainable(spec: JobBase, setup: TrialSetup):
    from ray import tune

    demand = {k: v for k, v in spec.driver_demand().items() if v > 0}
    # A trial that only waits on its Train workers holds no CPU; Tune needs its placement
    # group to hold something, so it reserves a little memory instead.
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                               tune.PlacementGroupFactory([demand or {"memory": 2**20}]))


def _max_concurrent(spec: JobBase) -> int:
    """How many trials fit on the cluster at once (each needs the job's whole demand)."""
    import ray

    have = ray.cluster_resources()
    fits = [math.floor(have.get(name, 0) / need + 1e-9)
            for name, need in spec.resource_demand().items() if need > 0]
    limit = max(1, min(fits, default=1))
    return min(limit, spec.sweep.max_concurrent or limit)


@dataclass
class SweepMonitor:
    """Tune callback: one progress line whenever the trial counts or the best value change."""

    label: str
    metric: str
    mode: str
    total: int
    best: float | None = None
    best_trial: str = ""
    #: trials the scheduler stopped early
    stopped: set = field(default_factory=set)
    last_line: str = ""
    last_print: float = 0.0
    started: float = field(default_factory=time.monotonic)
    #: the MLflow store of the child runs, where a scheduler's stop is also written down
    uri: str = ""
    #: every result each trial reported in this process, in order: trial id -> results
    results: dict = field(default_factory=dict)

    def as_callback(self):
        from ray.tune import Callback

        monitor = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                # A result marked done reaches callbacks only when the scheduler (or a stopper)
                # ends the trial: a trial that finishes on its own ends with a duplicate result.
                if result.get("done"):
                    monitor.stopped.add(trial.trial_id)
                    monitor.mark_stopped(result)
                monitor.results.setdefault(trial.trial_id, []).append(
                    {k: v for k, v in result.items() if k in KEPT_RESULT_KEYS
                     or k == monitor.metric})
                value = result.get(monitor.metric)
                if isinstance(value, (int, float)) and not math.isnan(value) and (
                        monitor.best is None or (value > monitor.best if monitor.mode == "max"
                                                 else value < monitor.best)):
                    monitor.best, monitor.best_trial = float(value), trial_name(trial.trial_id)
                monitor.show(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                monitor.show(trials)

            def on_trial_error(self, iteration, trials, trial, **info):
                monitor.show(trials)

        return _Callback()

    def mark_stopped(self, result: dict) -> None:
        """Tag the trial's run as stopped by the scheduler: a sweep killed and resumed
        reads it back (this process's memory of it does not outlive the kill)."""
        run_id = result.get(RUN_ID_KEY)
        if self.uri and run_id:
            tracking.set_tags(RunRef(self.uri, run_id), {SCHEDULER_STOPPED: "1"})

    def show(self, trials) -> None:
        counts = {"running": 0, "pending": 0, "completed": 0, "stopped early": 0, "failed": 0}
        for trial in trials:
            counts[_trial_state(trial.status, trial.trial_id in self.stopped)] += 1
        best = (f"best {self.metric} {self.best:.4g} ({self.best_trial})"
                if self.best is not None else f"best {self.metric}: -")
        line = (f"[{self.label}] {time.monotonic() - self.started:5.0f}s  trials "
                + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
                + (f" of {self.total}" if self.total else "")
                + f" | {best}")
        if line.split("s  ", 1)[1] != self.last_line.split("s  ", 1)[-1] or (
                time.monotonic() - self.last_print > 30):
            print(line, flush=True)
            self.last_line, self.last_print = line, time.monotonic()


def _trial_state(status: str, stopped: bool) -> str:
    if status == "ERROR":
        return "failed"
    if status == "TERMINATED":
        return "stopped early" if stopped else "completed"
    return {"RUNNING": "running"}.get(status, "pending")


def _tune_run_config(spec: JobBase, parent: RunRef, storage: str, monitor: SweepMonitor):
    from ray import tune

    return tune.RunConfig(
        name=parent.run_id, storage_path=storage, verbose=0,
        callbacks=[monitor.as_callback()],
        # PBT hands a trial's checkpoint to another trial some time after choosing it: keep all
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=None if spec.sweep.scheduler == "pbt" else 2),
        failure_config=tune.FailureConfig(max_failures=0))


def _setup(spec: JobBase, uri: str, experiment: str, parent: RunRef, storage: str) -> TrialSetup:
    base = spec.model_dump(mode="json")
    base.pop("sweep")
    sweep = spec.sweep
    return TrialSetup(
        base=base, paths=list(sweep.space), seeds=list(spec.seeds), uri=uri,
        experiment=experiment, parent_id=parent.run_id, metric=sweep.metric,
        storage=_join(storage, parent.run_id, "trials"),
        checkpoint_every=sweep.perturbation_interval if sweep.scheduler == "pbt" else None,
        command=provenance.command_line())


def _storage(spec: JobBase) -> str:
    path = spec.checkpoint.path
    return _join(path, "sweeps") if "://" in path else str(Path(path, "sweeps").resolve())


def _join(root: str, *parts: str) -> str:
    """A folder under `root`, which may be a local path or a URI such as s3://bucket/x."""
    return "/".join([root.rstrip("/"), *parts]) if "://" in root else str(Path(root, *parts))


def run_sweep(loaded: LoadedSpec) -> int:
    """Start a sweep (Ray must be up): open the parent run, tune, summarise."""
    from ray import tune

    spec = loaded.spec
    uri = tracking.resolve_uri(spec.tracking.uri)
    experiment = spec.tracking.experiment or spec.name
    storage = _storage(spec)
    sweep = spec.sweep
    tags = {f"{TAG}kind": spec.kind, f"{TAG}job": spec.name, f"{TAG}sweep": "parent",
            f"{TAG}source": str(Path(loaded.source).resolve()),
            f"{TAG}overrides": " ".join(loaded.overrides), f"{TAG}storage_path": storage}
    params = flatten(spec.model_dump(mode="json"))
    parent = tracking.open_run(uri, experiment, f"{spec.name}-sweep", tags, params,
                               dump_spec(spec), spec.description)
    tracking.set_tags(parent, {f"{TAG}sweep_id": parent.run_id})
    setup = _setup(spec, uri, experiment, parent, storage)
    param_space, search_alg, scheduler, num_samples = _search(spec, setup)
    concurrent = _max_concurrent(spec)
    total = _trial_count(spec, param_space, num_samples)
    print(f"[{spec.name}-sweep] MLflow parent run {parent.run_id} in experiment "
          f"'{experiment}' ({uri}): {total} trials ({sweep.search} search, {sweep.scheduler} "
          f"scheduler), {concurrent} at a time", flush=True)
    monitor = SweepMonitor(f"{spec.name}-sweep", sweep.metric, sweep.mode, total, uri=uri)
    tuner = tune.Tuner(
        _trainable(spec, setup), param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, num_samples=num_samples,
            search_alg=search_alg, scheduler=scheduler, max_concurrent_trials=concurrent,
            time_budget_s=60 * sweep.minutes if sweep.minutes else None, reuse_actors=False,
            trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=_tune_run_config(spec, parent, storage, monitor))
    tracking.set_tags(parent, {f"{TAG}max_concurrent": str(concurrent)})
    return _fit_and_summarise(tuner, spec, setup, parent, monitor, concurrent,
                              _join(storage, parent.run_id))


def _trial_count(spec: JobBase, param_space: dict, num_samples: int) -> int:
    points = param_space.get("point")
    if isinstance(points, dict) and "grid_search" in points:
        return len(points["grid_search"]) * len(spec.seeds)
    seeds = param_space.get("seed")
    return num_samples * (len(seeds["grid_search"]) if isinstance(seeds, dict) else 1)


def tune_folder(parent: RunRef, info: dict) -> str:
    """Where Tune keeps a sweep's state: the sweep's storage, under the parent run's id."""
    return _join(info["tags"][f"{TAG}storage_path"], parent.run_id)


def resume_sweep(loaded: LoadedSpec, parent: RunRef, info: dict) -> int:
    """Continue an interrupted sweep from Tune's saved state, into the same parent run. Tune
    unpickles that state: the caller checks its seal first (`trainyard resume` does, with
    `seal.verify(tune_folder(...))`, before Ray starts)."""
    from ray import tune

    spec = loaded.spec
    storage = info["tags"][f"{TAG}storage_path"]
    path = tune_folder(parent, info)
    if not tune.Tuner.can_restore(path):  # (looks for tuner.pkl; reads nothing)
        raise UserInputError(f"sweep {parent.run_id} has no saved Tune state in {path}; "
                             "start it again with trainyard sweep")
    experiment = spec.tracking.experiment or spec.name
    setup = _setup(spec, parent.uri, experiment, parent, storage)
    # trials started now belong to the sweep the user ran: they carry its command, as the
    # ones started before the interruption do (the parent records who resumed it)
    setup.command = info["tags"].get(f"{TAG}command", setup.command)
    tracking.reopen_run(parent)
    tracking.set_tags(parent, {f"{TAG}resumed_by": provenance.command_line()})
    concurrent = int(info["tags"].get(f"{TAG}max_concurrent", "1"))
    print(f"[{info['name']}] resuming sweep {parent.run_id} from {path}", flush=True)
    tuner = tune.Tuner.restore(path, _trainable(spec, setup), resume_unfinished=True,
                               resume_errored=False, restart_errored=False)
    monitor = SweepMonitor(info["name"], spec.sweep.metric, spec.sweep.mode, 0,
                           uri=parent.uri)
    # The restored run config carries the callbacks pickled with it: a copy of the first
    # session's monitor, which nothing here reads. This session's monitor takes its place
    # (Tune has no public setter; `_local_tuner` is Ray 2.x's Tuner internals, and a Ray
    # that moves it fails here, at resume, not silently later).
    tuner._local_tuner.get_run_config().callbacks = [monitor.as_callback()]
    return _fit_and_summarise(tuner, spec, setup, parent, monitor, concurrent, path)


def _fit_and_summarise(tuner, spec: JobBase, setup: TrialSetup, parent: RunRef,
                       monitor: SweepMonitor, concurrent: int, tune_folder: str) -> int:
    # Results without the metric are fine (an RL iteration before the first episode ends);
    # Tune's own progress table gives way to the sweep's one-line progress.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = time.monotonic()
    status = "FAILED"
    try:
        grid = tuner.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"\nsweep interrupted; continue it with: trainyard resume {parent.run_id}",
              file=sys.stderr, flush=True)
        raise
    finally:
        from trainyard import seal

        seal.seal(tune_folder)  # however it stopped: `trainyard resume` checks this first
        if status != "FINISHED":
            tracking.close_run(parent, status)
    wall = time.monotonic() - started
    rows = trial_rows(grid, setup, spec, monitor.stopped, monitor.results)
    close_children(rows, setup, spec.sweep.scheduler, monitor.stopped)
    summary = summarise(rows, setup, spec, wall, concurrent)
    log_summary(parent, summary, rows, setup, spec)
    tracking.close_run(parent, "FINISHED")
    print_summary(summary, rows, spec)
    return 0 if summary["best"] is not None else 1

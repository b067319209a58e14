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

import csv
import itertools
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainyard import tracking
from trainyard.loader import LoadedSpec, dump_spec, validate_data
from trainyard.spec import JobBase, UserInputError, flatten, with_values
from trainyard.sweep_space import SpaceExpr, parse_space_expr, to_tune
from trainyard.tracking import TAG, RunRef

RUN_ID_KEY = "trainyard_run_id"  # carried in every result, so the driver finds the child run
COMPLETED = "completed"


@dataclass
class TrialSetup:
    """Everything a trial needs besides its config; picklable (it travels to trial actors)."""

    base: dict  # the resolved job spec (JSON types) without its sweep section
    paths: list[str]
    seeds: list[int]
    uri: str
    experiment: str
    parent_id: str
    metric: str
    storage: str
    checkpoint_every: int | None = None  # PBT: trials checkpoint at every perturbation
    # the user's command: in a trial's Ray worker, sys.argv is Ray's default_worker.py line
    command: str = ""


# ---------------------------------------------------------------- inside a trial (Tune actor)


def point_of(config: dict, setup: TrialSetup) -> dict[str, Any]:
    """The swept values of a trial's config, by dotted path."""
    if "point" in config:
        return dict(config["point"])
    return {path: config[path] for path in setup.paths}


def seed_of(config: dict, setup: TrialSetup) -> int:
    if "seed" in config:
        return int(config["seed"])
    return setup.seeds[int(config.get("__trial_index__", 0)) % len(setup.seeds)]


def trial_spec(setup: TrialSetup, values: dict[str, Any], seed: int, source: str) -> JobBase:
    """The job one trial runs: the base spec with the swept values and a single seed."""
    data = with_values(setup.base, values)
    data["seeds"] = [seed]
    if setup.checkpoint_every:
        for key in data["checkpoint"]:
            if key.startswith("every_"):  # every_epochs, every_iterations
                data["checkpoint"][key] = setup.checkpoint_every
    return validate_data(data, source).spec


def _child_run(setup: TrialSetup, spec: JobBase, trial_id: str, values: dict, seed: int):
    """This trial's MLflow run: reopened when Tune restarts the trial, else created."""
    found = tracking.find_runs(setup.uri, setup.experiment,
                               {f"{TAG}trial_id": trial_id, f"{TAG}sweep_id": setup.parent_id})
    if found:
        ref = found[0]
        skip = tracking.last_steps(ref)
        tracking.reopen_run(ref)
        return ref, skip
    tags = {"mlflow.parentRunId": setup.parent_id, f"{TAG}sweep_id": setup.parent_id,
            f"{TAG}trial_id": trial_id, f"{TAG}kind": spec.kind, f"{TAG}job": spec.name,
            f"{TAG}seed": str(seed), **({f"{TAG}command": setup.command} if setup.command else {})}
    params = {**flatten(spec.model_dump(mode="json")), "seed": seed}
    name = f"{spec.name}-{_trial_name(trial_id)}-seed{seed}"
    ref = tracking.open_run(setup.uri, setup.experiment, name, tags, params, dump_spec(spec),
                            "sweep trial: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return ref, {}


def run_trial(config: dict, setup: TrialSetup) -> None:
    """Tune's function trainable: one configuration, one seed, one child run."""
    from ray import tune

    from trainyard.runs import RunContext, curve_keys
    from trainyard.workloads import get_workload

    # Tune logs each checkpoint it copies at INFO: the sweep's progress line is enough.
    logging.getLogger().setLevel(logging.WARNING)
    trial_id = tune.get_context().get_trial_id()
    values, seed = point_of(config, setup), seed_of(config, setup)
    spec = trial_spec(setup, values, seed, f"trial {trial_id} ({values})")
    ref, skip = _child_run(setup, spec, trial_id, values, seed)
    checkpoint = tune.get_checkpoint()
    # What this (re)start trains with: PBT changes the values and hands over another trial's
    # checkpoint, so the run says so (its params keep the values it started with).
    tracking.set_tags(ref, {f"{TAG}trial_values": json.dumps(values),
                            **({f"{TAG}restored_from": checkpoint.path} if checkpoint else {})})
    status = "FAILED"
    try:
        with checkpoint.as_directory() if checkpoint else nullcontext(None) as folder:
            ctx = RunContext(ref, seed, setup.storage, f"{trial_id}-{time.time_ns()}",
                             skip_through=skip, tune_metric=setup.metric, restore_from=folder,
                             reporter=report_to_tune)
            get_workload(spec.kind).train(spec, ctx)
        if ctx.tune_reports == 0 and checkpoint is None:  # (a restored trial may have been
            # handed a checkpoint of a finished trial: then it has nothing left to report)
            raise UserInputError(
                f"sweep.metric {setup.metric!r} is not a metric this job logs (it logs: "
                f"{', '.join(sorted(tracking.latest_metrics(ref)))}); set sweep.metric to one")
        status = "FINISHED"
        # Written before the trial returns, so the driver can tell it from a stopped one.
        tracking.set_tags(ref, {f"{TAG}stop_reason": COMPLETED})
    except SystemExit:  # Tune ends a trial its scheduler stopped this way
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            tracking.set_tags(ref, {f"{TAG}stop_reason": "stopped early" if status == "KILLED"
                                    else "failed"})
        tracking.close_run(ref, status, curves_of=curve_keys(ref))


def report_to_tune(ctx, metrics: dict[str, float], checkpoint_folder: str | None) -> None:
    """Hand one result (and its checkpoint) to Tune; see RunContext.report."""
    from ray import tune

    if ctx.tune_metric not in metrics and checkpoint_folder is None:
        return  # e.g. an RL iteration before the first episode ended: nothing to judge yet
    if ctx.tune_metric in metrics:
        ctx.tune_reports += 1
    result = {**metrics, RUN_ID_KEY: ctx.run.run_id}
    checkpoint = tune.Checkpoint.from_directory(checkpoint_folder) if checkpoint_folder else None
    tune.report(result, checkpoint=checkpoint)


# ---------------------------------------------------------------- the driver


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
        param_space = {p: to_tune(e) for p, e in exprs.items()}
        param_space["seed"] = tune.grid_search(setup.seeds)
        num_samples = sweep.num_samples
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

    def as_callback(self):
        from ray.tune import Callback

        monitor = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                # A result marked done reaches callbacks only when the scheduler (or a stopper)
                # ends the trial: a trial that finishes on its own ends with a duplicate result.
                if result.get("done"):
                    monitor.stopped.add(trial.trial_id)
                value = result.get(monitor.metric)
                if isinstance(value, (int, float)) and not math.isnan(value) and (
                        monitor.best is None or (value > monitor.best if monitor.mode == "max"
                                                 else value < monitor.best)):
                    monitor.best, monitor.best_trial = float(value), _trial_name(trial.trial_id)
                monitor.show(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                monitor.show(trials)

            def on_trial_error(self, iteration, trials, trial, **info):
                monitor.show(trials)

        return _Callback()

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


def _trial_name(trial_id: str) -> str:
    """'7f3f2_00003' -> 'trial3' (the child run is named <job>-trial3-seed<N>)."""
    return "trial" + (trial_id.rsplit("_", 1)[-1].lstrip("0") or "0")


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
        command=tracking.command_line())


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
    monitor = SweepMonitor(f"{spec.name}-sweep", sweep.metric, sweep.mode, total)
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
    tracking.reopen_run(parent)
    tracking.set_tags(parent, {f"{TAG}resumed_by": tracking.command_line()})
    concurrent = int(info["tags"].get(f"{TAG}max_concurrent", "1"))
    print(f"[{info['name']}] resuming sweep {parent.run_id} from {path}", flush=True)
    tuner = tune.Tuner.restore(path, _trainable(spec, setup), resume_unfinished=True,
                               resume_errored=False, restart_errored=False)
    monitor = SweepMonitor(info["name"], spec.sweep.metric, spec.sweep.mode, 0)
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
    rows = _rows(grid, setup, spec, monitor.stopped)
    _close_children(rows, setup, spec.sweep.scheduler, monitor.stopped)
    summary = summarise(rows, setup, spec, wall, concurrent)
    _log_summary(parent, summary, rows, setup, spec)
    tracking.close_run(parent, "FINISHED")
    _print_summary(summary, rows, spec)
    return 0 if summary["best"] is not None else 1


# ---------------------------------------------------------------- the summary


def _rows(grid, setup: TrialSetup, spec: JobBase, stopped: set) -> list[dict[str, Any]]:
    """One row per trial: its point, seed, how it ended, its final and best metric."""
    metric, mode = spec.sweep.metric, spec.sweep.mode
    rows = []
    for result in grid:
        config = result.config or {}
        last = result.metrics or {}
        frame = result.metrics_dataframe
        history = (frame[metric].dropna().tolist()
                   if frame is not None and metric in frame.columns else [])
        train_s = 0.0
        for column in ("perf/epoch_s", "perf/iteration_s"):
            if frame is not None and column in frame.columns:
                train_s += float(frame[column].dropna().sum())
        trial_id = Path(result.path).name if result.path else last.get("trial_id", "")
        # A trial that ended on its own tagged its run "completed" (see `_close_children`).
        state = "failed" if result.error else "stopped early" if trial_id in stopped else ""
        rows.append({
            "trial_id": trial_id,
            "run_id": last.get(RUN_ID_KEY, ""),
            **{path: value for path, value in point_of(config, setup).items()},
            "seed": seed_of(config, setup),
            "state": state,
            "reports": int(last.get("training_iteration", 0) or 0),
            "final": history[-1] if history else None,
            "best": (max(history) if mode == "max" else min(history)) if history else None,
            "train_s": round(train_s, 2),
            "wall_s": round(float(last.get("time_total_s", 0.0) or 0.0), 2),
            "error": str(result.error).strip().splitlines()[-1][:500] if result.error else "",
        })
    return rows


def _close_children(rows: list[dict], setup: TrialSetup, scheduler: str,
                    stopped: set) -> None:
    """Settle how each trial ended, and set its child run's status and why it stopped (a
    stopped trial's own process may be ended before it can say so)."""
    statuses = {"completed": "FINISHED", "stopped early": "KILLED", "failed": "FAILED"}
    for row in rows:
        refs = ([RunRef(setup.uri, row["run_id"])] if row["run_id"] else
                tracking.find_runs(setup.uri, setup.experiment,
                                   {f"{TAG}trial_id": row["trial_id"],
                                    f"{TAG}sweep_id": setup.parent_id}))
        if not refs:
            row["state"] = row["state"] or "failed"
            continue
        row["run_id"] = refs[0].run_id
        if not row["state"]:
            tag = tracking.get_tags(refs[0]).get(f"{TAG}stop_reason")
            row["state"] = "completed" if tag == COMPLETED else "stopped early"
        reason = {"completed": COMPLETED,
                  "stopped early": f"stopped early by {scheduler} after {row['reports']} reports"
                  if row["trial_id"] in stopped else "stopped before it finished (the sweep's "
                  "time budget ran out, or the sweep was interrupted)",
                  "failed": f"failed: {row['error']}"}[row["state"]]
        tracking.set_tags(refs[0], {f"{TAG}stop_reason": reason[:5000]})
        tracking.set_status(refs[0], statuses[row["state"]])


def summarise(rows: list[dict], setup: TrialSetup, spec: JobBase, wall: float,
              concurrent: int) -> dict[str, Any]:
    """Per-configuration mean +- std over seeds; the best configuration; the time split."""
    sweep = spec.sweep
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[p] for p in setup.paths), []).append(row)
    configs = []
    for key, members in groups.items():
        finals = [m["final"] for m in members if m["final"] is not None and m["state"] != "failed"]
        configs.append({
            **dict(zip(setup.paths, key, strict=True)),
            "seeds": len(members), "scored": len(finals),
            "mean": statistics.fmean(finals) if finals else None,
            "std": statistics.stdev(finals) if len(finals) > 1 else 0.0 if finals else None,
            "states": ", ".join(sorted({m["state"] for m in members})),
        })
    scored = [c for c in configs if c["mean"] is not None]
    best = (max if sweep.mode == "max" else min)(scored, key=lambda c: c["mean"]) \
        if scored else None
    count = {state: sum(r["state"] == state for r in rows)
             for state in ("completed", "stopped early", "failed")}
    train_s = sum(r["train_s"] for r in rows)
    return {"configs": configs, "best": best, "count": count, "wall_s": wall,
            "train_s": train_s, "trial_wall_s": sum(r["wall_s"] for r in rows),
            "concurrent": concurrent,
            "busy_fraction": train_s / (wall * concurrent) if wall > 0 else 0.0}


def best_job_yaml(setup: TrialSetup, spec: JobBase, best: dict) -> str:
    """The best configuration as a job file: `trainyard run best.yaml` reproduces it."""
    data = with_values(setup.base, {path: best[path] for path in setup.paths})
    header = (f"# Best configuration of sweep {setup.parent_id} ({spec.sweep.metric} "
              f"{best['mean']:.6g} +- {best['std']:.2g} over {best['scored']} seed(s)).\n"
              f"#   trainyard run best.yaml\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _log_summary(parent: RunRef, summary: dict, rows: list[dict], setup: TrialSetup,
                 spec: JobBase) -> None:
    sweep = spec.sweep
    metrics = {"sweep/trials": len(rows), "sweep/trials_completed": summary["count"]["completed"],
               "sweep/trials_stopped_early": summary["count"]["stopped early"],
               "sweep/trials_failed": summary["count"]["failed"],
               "perf/sweep_wall_s": summary["wall_s"], "perf/trials_train_s": summary["train_s"],
               "perf/trials_wall_s": summary["trial_wall_s"],
               "perf/sweep_busy_fraction": summary["busy_fraction"]}
    if summary["best"] is not None:
        metrics[f"sweep/best_{sweep.metric}"] = summary["best"]["mean"]
    tracking.RunLogger(parent).log(metrics, step=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write_csv(folder / "trials.csv", rows)
        _write_csv(folder / "configs.csv", summary["configs"])
        if summary["best"] is not None:
            (folder / "best.yaml").write_text(best_job_yaml(setup, spec, summary["best"]))
        _plot(folder / "metric_vs_params.png", rows, setup, spec)
        tracking.log_artifacts(parent, folder, "sweep")
    if summary["best"] is None:
        return
    summary["best_yaml"] = f"runs:/{parent.run_id}/sweep/best.yaml"
    if "://" not in setup.storage:  # also beside the sweep's checkpoints, ready to run
        local = Path(setup.storage).parent / "best.yaml"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(best_job_yaml(setup, spec, summary["best"]))
        summary["best_yaml"] = str(local)
    tracking.set_tags(parent, {f"{TAG}best_yaml": summary["best_yaml"], **{
        f"{TAG}best.{p}": str(summary["best"][p]) for p in setup.paths}})


def _plot(path: Path, rows: list[dict], setup: TrialSetup, spec: JobBase) -> None:
    """The final metric of each trial against each swept value, coloured by how it ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"completed": "tab:blue", "stopped early": "tab:orange", "failed": "tab:red"}
    exprs = {p: parse_space_expr(e) for p, e in spec.sweep.space.items()}
    fig, axes = plt.subplots(1, len(setup.paths), figsize=(4.5 * len(setup.paths), 3.6),
                             squeeze=False)
    for axis, swept in zip(axes[0], setup.paths, strict=True):
        numeric = exprs[swept].function in ("uniform", "loguniform", "randint") or all(
            isinstance(r[swept], (int, float)) and not isinstance(r[swept], bool) for r in rows)
        labels = sorted({str(r[swept]) for r in rows})
        for state, colour in colours.items():
            xs, ys = [], []
            for row in rows:
                if row["state"] == state and row["final"] is not None:
                    xs.append(row[swept] if numeric else labels.index(str(row[swept])))
                    ys.append(row["final"])
            if xs:
                axis.scatter(xs, ys, c=colour, label=state, alpha=0.8)
        if exprs[swept].function == "loguniform":
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(range(len(labels)), labels)
        axis.set_xlabel(swept)
        axis.set_ylabel(f"final {spec.sweep.metric}")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_summary(summary: dict, rows: list[dict], spec: JobBase) -> None:
    sweep, count = spec.sweep, summary["count"]
    print(f"\nsweep done in {summary['wall_s']:.0f}s: {len(rows)} trials, "
          f"{count['completed']} completed, {count['stopped early']} stopped early, "
          f"{count['failed']} failed")
    paths = list(sweep.space)
    ordered = sorted((c for c in summary["configs"] if c["mean"] is not None),
                     key=lambda c: c["mean"], reverse=sweep.mode == "max")
    for config in ordered[:10]:
        values = "  ".join(f"{p}={_short(config[p])}" for p in paths)
        print(f"  {sweep.metric} {config['mean']:.4g} +- {config['std']:.2g} "
              f"(n={config['scored']})  {values}  [{config['states']}]")
    for row in rows:
        if row["state"] == "failed":
            print(f"  trial {row['trial_id']} failed: {row['error']}", file=sys.stderr)
    print(f"training filled {100 * summary['busy_fraction']:.0f}% of {summary['concurrent']} "
          f"trial slot(s) x {summary['wall_s']:.0f}s (trials trained {summary['train_s']:.0f}s "
          f"in all; the rest is Ray/Tune/trainer start-up, evaluation and checkpoints)")
    if summary["best"] is not None:
        print(f"best configuration: {summary['best_yaml']}   (trainyard run "
              f"{summary['best_yaml']})")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

"""Inside a sweep's trial (a Tune actor): the trial's job spec from the sweep's point and
seed, its MLflow child run under the sweep's parent, and the bridge that hands each reported
epoch or iteration to Tune (`report_to_tune`, given to the run as `RunContext.reporter`)."""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from trainyard import tracking
from trainyard.loader import dump_spec, validate_data
from trainyard.spec import JobBase, UserInputError, flatten, with_values
from trainyard.tracking import TAG

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


def trial_name(trial_id: str) -> str:
    """'7f3f2_00003' -> 'trial3' (the child run is named <job>-trial3-seed<N>)."""
    return "trial" + (trial_id.rsplit("_", 1)[-1].lstrip("0") or "0")


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
    name = f"{spec.name}-{trial_name(trial_id)}-seed{seed}"
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
        # A stopped trial's process can outlive the sweep's end by a moment, and the sweep
        # (close_children) may already have said why, in more words ("stopped early by asha
        # after 2 reports"): a plain "stopped early" must not overwrite that.
        if status == "FAILED" or (status == "KILLED" and not tracking.get_tags(ref).get(
                f"{TAG}stop_reason")):
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

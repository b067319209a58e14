"""A run killed mid-training (SIGKILL of the whole process group) resumes in the same MLflow
run, from its latest checkpoint, with metric steps that never repeat or go backwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from conftest import CARTPOLE, DIGITS, env_without_tracking
from trainyard.cli import main


def _start(job, overrides, cwd):
    argv = [sys.executable, "-m", "trainyard.cli", "run", str(job)]
    for override in overrides:
        argv += ["-o", override]
    return subprocess.Popen(argv, cwd=cwd, env=env_without_tracking(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill:\n{proc.stdout.read()}")
        result = predicate()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError("timed out waiting for the run to make progress")


def _kill_group(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _single_run(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id])
    return runs[0] if runs else None


def _checkpointed_run(client, experiment, workdir):
    """The experiment's run once it has at least one checkpoint folder, else None."""
    run = _single_run(client, experiment)
    if run is None:
        return None
    folder = workdir / "trainyard-runs" / "checkpoints" / run.info.run_id
    done = folder.is_dir() and any(p.is_dir() and p.name.startswith("checkpoint_")
                                   for p in folder.iterdir())
    return run if done else None


def _steps(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key),
                                   key=lambda m: (m.step, m.timestamp))]


def test_killed_supervised_run_resumes_in_the_same_mlflow_run(workdir, store_uri, capsys):
    proc = _start(DIGITS, ["stop.epochs=10", "checkpoint.every_epochs=2",
                           "tracking.experiment=resume"], workdir)
    client = MlflowClient(store_uri)

    def progressed():
        run = _checkpointed_run(client, "resume", workdir)
        logged = len(_steps(client, run.info.run_id, "val/accuracy")) if run else 0
        return run if logged >= 3 else None

    run = _wait_for(progressed, proc)
    _kill_group(proc)
    run_id = run.info.run_id
    before = _steps(client, run_id, "val/accuracy")
    assert 3 <= len(before) < 10
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody closed it

    assert main(["resume", run_id]) == 0
    assert "resuming MLflow run " + run_id in capsys.readouterr().out

    after = client.get_run(run_id)
    assert after.info.status == "FINISHED"
    assert len(client.search_runs([after.info.experiment_id])) == 1  # no new run
    steps = _steps(client, run_id, "val/accuracy")
    assert steps == sorted(set(steps)), f"steps repeat or go backwards: {steps}"
    per_epoch = before[0]
    assert steps[:len(before)] == before  # what was logged before the kill stays
    assert steps[-1] == 10 * per_epoch  # continued to the last epoch at the right step
    assert len(steps) == 10
    assert after.data.metrics["test/accuracy"] > 0.9
    assert after.data.tags["trainyard.resumed_by"]


def test_resume_of_unknown_run_is_a_clear_error(workdir, capsys):
    assert main(["resume", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume run '0123456789abcdef'" in err and "Traceback" not in err


def test_rl_run_resumes_from_its_checkpoint(workdir, store_uri):
    """RL: the killed run's env-step axis continues from the checkpoint's step count."""
    proc = _start(CARTPOLE, ["stop.env_steps=8k", "checkpoint.every_iterations=2",
                             "tracking.experiment=rl-resume"], workdir)
    client = MlflowClient(store_uri)

    run = _wait_for(lambda: _checkpointed_run(client, "rl-resume", workdir), proc)
    _kill_group(proc)
    run_id = run.info.run_id
    before = _steps(client, run_id, "train/iteration")
    assert 2 <= len(before) and before[-1] < 8000

    assert main(["resume", run_id, "--tracking-uri", store_uri]) == 0
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED"
    steps = _steps(client, run_id, "train/iteration")
    assert steps == sorted(set(steps)), f"steps repeat or go backwards: {steps}"
    assert steps[:len(before)] == before and steps[-1] >= 8000
    iterations = [m.value for m in sorted(client.get_metric_history(run_id, "train/iteration"),
                                          key=lambda m: m.step)]
    assert iterations[-1] == len(steps)  # the iteration counter came back from the checkpoint


def test_selfplay_run_resumes_with_its_league(workdir, store_uri):
    """Self-play: the league (snapshots, win rates, games) comes back from the checkpoint,
    the snapshot modules with their frozen weights, and the run goes on adding to it."""
    import json

    from conftest import REPO

    proc = _start(REPO / "agents/configs/selfplay_tictactoe.yaml",
                  ["stop.env_steps=9k", "checkpoint.every_iterations=1",
                   "agent.learning_starts=500", "selfplay.snapshot_min_games=60",
                   "selfplay.snapshot_win_rate=0.05", "selfplay.elo_games=2",
                   "evaluation.episodes=4", "tracking.experiment=sp-resume",
                   "tracking.system_metrics=false"], workdir)
    client = MlflowClient(store_uri)

    def snapshots_saved(run):
        folder = workdir / "trainyard-runs" / "checkpoints" / run.info.run_id
        leagues = sorted(folder.glob("checkpoint_*/league.json"))
        return len(json.loads(leagues[-1].read_text())["snapshots"]) if leagues else 0

    def league_saved():
        run = _checkpointed_run(client, "sp-resume", workdir)
        return run if run is not None and snapshots_saved(run) else None

    run = _wait_for(league_saved, proc)
    _kill_group(proc)
    run_id = run.info.run_id
    before = snapshots_saved(run)  # in the latest checkpoint, the one resume starts from
    assert before >= 1

    assert main(["resume", run_id, "--tracking-uri", store_uri]) == 0
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED"
    snapshots = [m.value for m in sorted(client.get_metric_history(run_id, "league/snapshots"),
                                         key=lambda m: (m.step, m.timestamp))]
    assert snapshots == sorted(snapshots) and snapshots[-1] > before  # none lost, more added
    steps = _steps(client, run_id, "train/iteration")
    assert steps == sorted(set(steps)) and steps[-1] >= 9000

"""A Ray Train worker killed mid-run: Train restarts the workers from the latest checkpoint and
the run finishes in the same MLflow run, as accurate, with metric steps that never repeat."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import ray
from mlflow.tracking import MlflowClient

from conftest import DIGITS, runs_of
from trainyard.cli import main


def _kill_a_worker_after_the_first_checkpoint(store_uri, workdir, killed: list) -> None:
    """Thread: once the run has a checkpoint, SIGKILL one Train worker's process."""
    from ray.util.state import list_actors

    client = MlflowClient(store_uri)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and not killed:
        time.sleep(0.1)
        experiment = client.get_experiment_by_name("worker-faults")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        folder = workdir / "trainyard-runs" / "checkpoints" / runs[0].info.run_id if runs \
            else None
        if folder is None or not folder.is_dir() or not any(
                p.name.startswith("checkpoint_") for p in folder.iterdir()):
            continue
        # This process's Ray (another may run on the machine): the one `main` started.
        workers = list_actors(address=ray.get_runtime_context().gcs_address, filters=[
            ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        if workers:
            os.kill(workers[-1].pid, signal.SIGKILL)
            killed.append(workers[-1].pid)


@pytest.mark.slow
def test_killed_train_worker_is_restarted_from_the_checkpoint(workdir, store_uri):
    started, killed = time.monotonic(), []
    killer = threading.Thread(target=_kill_a_worker_after_the_first_checkpoint,
                              args=(store_uri, workdir, killed), daemon=True)
    killer.start()
    overrides = ["stop.epochs=15", "checkpoint.every_epochs=1", "resources.workers=2",
                 "tracking.experiment=worker-faults", "tracking.system_metrics=false"]
    assert main(["run", str(DIGITS), *[a for o in overrides for a in ("-o", o)]]) == 0
    killer.join(timeout=5)
    assert killed, "no Train worker was killed"

    client, runs = runs_of(store_uri, "worker-faults")
    assert len(runs) == 1  # recovered inside the same run
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/accuracy"] > 0.9
    history = sorted(client.get_metric_history(run.info.run_id, "train/epoch"),
                     key=lambda m: (m.step, m.timestamp))
    steps = [m.step for m in history]
    assert steps == sorted(set(steps)), f"steps repeat or go backwards: {steps}"
    assert [m.value for m in history] == list(range(1, 16))  # every epoch, once
    tags = run.data.tags
    assert tags["trainyard.faults.worker_restarts"] == "1"
    assert int(tags["trainyard.faults.worker_failures"]) >= 1
    assert tags["trainyard.faults.last_worker_error"]
    assert [m.value for m in client.get_metric_history(run.info.run_id,
                                                       "faults/worker_restarts")] == [1]
    print(f"killed worker run: {time.monotonic() - started:.0f} s; "
          f"error: {tags['trainyard.faults.last_worker_error'][:200]}")

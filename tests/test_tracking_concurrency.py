"""Four processes logging to one local sqlite store at once lose no metric point.

A sweep runs trials side by side, and a user may run two jobs in one working directory: each
writes to the same `trainyard-runs/mlflow.db`. SQLite lets one writer in at a time; a writer
that finds the file locked must wait and retry, never drop the batch.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import env_without_tracking

WRITERS, STEPS, KEYS = 4, 200, ("loss", "accuracy", "lr")

# Each writer opens its own run (all four race to create the experiment in a fresh store),
# waits for the common start time, then logs STEPS steps of 3 metrics, one batch per step.
WRITER = """
import sys, time
from trainyard import tracking
uri, index, start_at, steps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ref = tracking.open_run(uri, "concurrency", f"writer-{index}", {"writer": str(index)}, {},
                        "name: concurrency\\n")
while time.time() < start_at:
    time.sleep(0.01)
logger = tracking.RunLogger(ref)
for step in range(steps):
    logger.log({"loss": 1.0 / (step + 1), "accuracy": step / steps, "lr": 0.1 * index}, step)
print(ref.run_id)
"""


@pytest.mark.slow
def test_four_writers_at_once_lose_no_metric_point(workdir, store_uri):
    start_at = time.time() + 12  # after all four have imported mlflow and opened their run
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, store_uri, str(i), str(start_at),
                               str(STEPS)], cwd=workdir, env=env_without_tracking(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(WRITERS)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert "database is locked" not in err, err[-3000:]
    run_ids = [out.strip().splitlines()[-1] for out, _ in outputs]
    assert len(set(run_ids)) == WRITERS

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name("concurrency")
    assert len(client.search_runs([experiment.experiment_id])) == WRITERS
    for run_id in run_ids:
        for key in KEYS:
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            assert steps == list(range(STEPS)), f"run {run_id} {key}: {len(steps)} points"

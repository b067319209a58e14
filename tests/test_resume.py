"""A run killed mid-training (SIGKILL of the whole process group) resumes in the same MLflow
run, from its latest checkpoint, with metric steps that never repeat or go backwards; the
finished run is then the source a fine-tuned run starts from.

RL runs are resumed in tests/test_multinode.py (a killed driver on a 3-node cluster) and
self-play with its league in tests/agents/test_selfplay_league.py (the one tic-tac-toe run)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from conftest import (
    DIGITS,
    checkpointed_run,
    kill_group,
    metric_steps,
    start_run,
    wait_for,
)
from trainyard.cli import main


@pytest.mark.slow
def test_killed_supervised_run_resumes_in_the_same_mlflow_run_and_seeds_a_fine_tuned_one(
        workdir, store_uri, capsys):
    proc = start_run(DIGITS, ["stop.epochs=10", "checkpoint.every_epochs=2",
                           "tracking.experiment=resume"], workdir)
    client = MlflowClient(store_uri)

    def progressed():
        run = checkpointed_run(client, "resume", workdir)
        logged = len(metric_steps(client, run.info.run_id, "val/accuracy")) if run else 0
        return run if logged >= 3 else None

    run = wait_for(progressed, proc)
    kill_group(proc)
    run_id = run.info.run_id
    before = metric_steps(client, run_id, "val/accuracy")
    assert 3 <= len(before) < 10
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody closed it

    assert main(["resume", run_id]) == 0
    out = capsys.readouterr().out
    assert "resuming MLflow run " + run_id in out
    assert "pid=" not in out  # Ray's workers print to the run's logs/ray/, not the terminal
    kept = [f.path for f in client.list_artifacts(run_id, "logs/ray")]
    assert any(path.startswith("logs/ray/worker-") for path in kept), kept

    after = client.get_run(run_id)
    assert after.info.status == "FINISHED"
    assert len(client.search_runs([after.info.experiment_id])) == 1  # no new run
    steps = metric_steps(client, run_id, "val/accuracy")
    assert steps == sorted(set(steps)), f"steps repeat or go backwards: {steps}"
    per_epoch = before[0]
    assert steps[:len(before)] == before  # what was logged before the kill stays
    assert steps[-1] == 10 * per_epoch  # continued to the last epoch at the right step
    assert len(steps) == 10
    assert after.data.metrics["test/accuracy"] > 0.9
    assert after.data.tags["trainyard.resumed_by"]

    # The finished run is a trained source to fine-tune from: a new head on its frozen
    # backbone beats a network trained from nothing, one epoch each; the source's own first
    # epoch (the same job and seed) is that network.
    assert main(["run", str(DIGITS), "-o", "stop.epochs=1", "-o", "tracking.experiment=tuned",
                 "-o", f"init_from.source=runs:/{run_id}",
                 "-o", "init_from.freeze_backbone=true"]) == 0
    [tuned] = client.search_runs([client.get_experiment_by_name("tuned").experiment_id])
    assert tuned.data.tags["trainyard.init_from"] == f"runs:/{run_id}"
    first = min(client.get_metric_history(run_id, "val/accuracy"), key=lambda m: m.step)
    assert tuned.data.metrics["val/accuracy"] > first.value + 0.1, first.value


def test_resume_of_unknown_run_is_a_clear_error(workdir, capsys):
    assert main(["resume", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume run '0123456789abcdef'" in err and "Traceback" not in err

"""A run whose training raises: one line naming the run and the error, exit 1, the MLflow run
FAILED with the traceback as an artifact; --verbose prints the traceback."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import CARTPOLE, runs_of
from trainyard import runs
from trainyard.cli import main


@pytest.mark.slow
def test_a_failing_run_is_one_line_exit_1_and_a_failed_mlflow_run(workdir, store_uri, capsys,
                                                                 monkeypatch):
    real = runs.get_workload

    def boom(spec, ctx):
        raise RuntimeError("the learner fell over\nsecond line of detail")

    monkeypatch.setattr(runs, "get_workload",
                        lambda kind: dataclasses.replace(real(kind), train=boom))
    assert main(["run", str(CARTPOLE), "-o", "tracking.system_metrics=false"]) == 1
    err = capsys.readouterr().err
    client, found = runs_of(store_uri, "cartpole")
    run = found[0]
    line = [x for x in err.splitlines() if x.startswith("error: ")]
    assert line == [f"error: run dqn-cartpole (MLflow run {run.info.run_id}) failed: "
                    "RuntimeError: the learner fell over; the traceback is the run's artifact "
                    "logs/traceback.txt (or rerun with --verbose)"]
    assert "Traceback" not in err
    assert run.info.status == "FAILED"
    saved = client.download_artifacts(run.info.run_id, "logs/traceback.txt", str(workdir))
    text = open(saved).read()
    assert "Traceback (most recent call last)" in text and "second line of detail" in text

    assert main(["--verbose", "run", str(CARTPOLE), "-o", "tracking.system_metrics=false"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err

"""The demo job end to end: CLI -> Ray Train (2 DDP workers) -> MLflow, checked in the store."""

from __future__ import annotations

import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import DIGITS, runs_of
from trainyard.cli import main


def _only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_demo_job_reaches_97_percent_and_lands_in_mlflow(ray_once, workdir, store_uri,
                                                        capsys):
    """The README's demo as shipped (the override names the experiment it already has, so
    the override tag has something to show) must reach >= 97% on the test split, in at most 2
    minutes from the command to the result, and land in MLflow whole."""
    start = time.monotonic()
    code = main(["run", str(DIGITS), "-o", "tracking.experiment=digits"])
    assert code == 0 and time.monotonic() - start < 120
    out = capsys.readouterr().out
    assert "[digits-cnn] epoch 20/20" in out and "samples_per_s" in out
    assert "trainyard ui" in out

    client, run = _only_run(store_uri, "digits")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/accuracy"] >= 0.97
    # params: the flattened resolved spec, overrides applied
    assert run.data.params["stop.epochs"] == "20"
    assert run.data.params["resources.workers"] == "2"
    assert run.data.params["model.arch"] == "resnet"
    # tags: provenance
    tags = run.data.tags
    assert tags["trainyard.kind"] == "supervised"
    assert tags["trainyard.overrides"] == "tracking.experiment=digits"
    assert tags["trainyard.version.torch"].startswith("2.13")
    assert tags["trainyard.git_commit"] and tags["trainyard.host"]
    # each worker computes with the threads of its CPUs (Ray's OMP_NUM_THREADS)
    cpus = float(run.data.params["resources.cpus_per_worker"])
    assert tags["trainyard.torch_threads"] == str(max(1, int(cpus)))
    # metric history: one point per epoch, steps = optimizer steps, strictly increasing
    history = client.get_metric_history(run.info.run_id, "val/accuracy")
    steps = [m.step for m in sorted(history, key=lambda m: m.step)]
    assert len(steps) == 20 and steps == sorted(set(steps)) and steps[0] > 0
    assert steps[1] == 2 * steps[0]  # same number of optimizer steps per epoch
    assert "test/accuracy" in run.data.metrics
    assert 0 < run.data.metrics["perf/startup_s"] < 120  # command start -> first step
    assert "system/cpu_utilization_percentage" in run.data.metrics  # MLflow system metrics
    # artifacts: the resolved job.yaml (enough to re-run) and the learning curves
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"job.yaml", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/learning_curves.png" in plots
    local = client.download_artifacts(run.info.run_id, "job.yaml", str(workdir))
    saved = yaml.safe_load(open(local))
    assert saved["stop"]["epochs"] == 20 and saved["train"]["lr"] == pytest.approx(3e-3)
    # checkpoints: Ray Train kept the spec's `keep` newest under the run's folder
    assert tags["trainyard.latest_checkpoint"].startswith(str(workdir))
    folder = workdir / "trainyard-runs" / "checkpoints" / run.info.run_id
    kept = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))
    assert len(kept) == 2


@pytest.mark.slow
def test_one_mlflow_run_per_seed_and_a_time_budget_ends_both_ranks_together(
        ray_once, workdir, store_uri):
    """Two seeds, two MLflow runs named by seed. stop.minutes is decided on rank 0 and shared:
    with a budget shorter than an epoch, both DDP workers stop after the first epoch together
    and each run finishes (ranks that decided apart would leave one waiting in an
    all-reduce)."""
    assert main(["run", str(DIGITS), "-o", "stop.epochs=50", "-o", "stop.minutes=0.001",
                 "-o", "seeds=[3, 4]", "-o", "output.log_model=false",
                 "-o", "tracking.experiment=seeds", "-o", "tracking.system_metrics=false"]) == 0
    client, runs = runs_of(store_uri, "seeds")
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == {"digits-cnn-seed3", "digits-cnn-seed4"}
    assert {r.data.tags["trainyard.seed"] for r in runs} == {"3", "4"}
    assert {r.data.params["seed"] for r in runs} == {"3", "4"}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["resources.workers"] == "2"
        epochs = client.get_metric_history(run.info.run_id, "val/accuracy")
        assert len(epochs) == 1 and "test/accuracy" in run.data.metrics
    # the seed fixes the split and the initialisation: the two runs differ
    first, second = (by_name[n].data.metrics["val/loss"] for n in sorted(by_name))
    assert first != second

"""What a run carries to be found and filtered in MLflow: name, tags, description, hardware."""

from __future__ import annotations

import sys
from importlib.metadata import version

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import CARTPOLE, DIGITS
from trainyard import provenance, runs, tracking
from trainyard.loader import load_spec


def _open_without_training(monkeypatch, job, overrides=()):
    """run_job up to the open MLflow runs (training replaced by nothing); their ids."""
    opened = []

    def no_training(spec, ctx, label):
        opened.append(ctx.run.run_id)
        tracking.close_run(ctx.run, "FINISHED")
        return runs.RunOutcome(ctx.run.run_id, label, "FINISHED", {}, 0.0)

    monkeypatch.setattr(runs, "_execute", no_training)
    monkeypatch.setattr(sys, "argv", ["/somewhere/.venv/bin/trainyard", "run", str(job),
                                      *(x for o in overrides for x in ("-o", o))])
    runs.run_job(load_spec(job, list(overrides)))
    return opened


@pytest.mark.parametrize("job, expected", [
    (DIGITS, {"trainyard.kind": "supervised", "trainyard.model": "resnet",
              "trainyard.dataset": "digits"}),
    (CARTPOLE, {"trainyard.kind": "rl", "trainyard.algo": "dqn",
                "trainyard.env": "CartPole-v1"}),
])
def test_runs_are_tagged_with_what_trained_on_what(workdir, store_uri, monkeypatch, job,
                                                   expected):
    overrides = ["seeds=[3,4]", f"tracking.uri={store_uri}", "description=a trial"]
    run_ids = _open_without_training(monkeypatch, job, overrides)
    client = MlflowClient(store_uri)
    names = []
    for run_id, seed in zip(run_ids, (3, 4), strict=True):
        run = client.get_run(run_id)
        names.append(run.info.run_name)
        tags = run.data.tags
        assert {k: tags.get(k) for k in expected} == expected
        assert tags["trainyard.seed"] == str(seed)
        assert tags["trainyard.version"] == version("trainyard")
        assert tags["trainyard.hardware"].startswith(f"{tracking.os.cpu_count()} CPUs (")
        note = tags["mlflow.note.content"]
        assert note.startswith("a trial\n\nCommand: `trainyard run ")
        assert "-o 'seeds=[3,4]'" in note  # quoted as a shell needs it
    job_name = load_spec(job).spec.name
    assert names == [f"{job_name}-seed3", f"{job_name}-seed4"]


def test_hardware_names_cpu_and_gpu_models_and_counts(monkeypatch):
    monkeypatch.setattr(provenance, "cpu_model", lambda: "Some CPU")
    monkeypatch.setattr(tracking.os, "cpu_count", lambda: 96)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert provenance.hardware() == "96 CPUs (Some CPU)"
    gpus = ["NVIDIA A100-SXM4-80GB"] * 3 + ["Tesla T4"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: gpus[i])
    assert provenance.hardware() == "96 CPUs (Some CPU); 3x NVIDIA A100-SXM4-80GB, 1x Tesla T4"


def test_real_cpu_model_is_named():
    from pathlib import Path

    named = [line.split(":", 1)[1].strip() for line in
             Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    if not named:
        pytest.skip("no 'model name' line in /proc/cpuinfo (not x86 Linux)")
    assert provenance.cpu_model() == " ".join(named[0].split()) != "cpu"

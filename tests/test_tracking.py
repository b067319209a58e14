"""The tracking module: where runs go, how metrics are logged, the UI on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port, listening_addresses
from trainyard import tracking


def test_uri_precedence(workdir, monkeypatch):
    default = tracking.resolve_uri(None)
    assert default == f"sqlite:///{workdir / 'trainyard-runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.resolve_uri(None) == f"sqlite:///{workdir / 'env.db'}"  # made absolute
    assert tracking.resolve_uri("http://mlflow:5000") == "http://mlflow:5000"  # spec wins


def test_resumed_logger_never_repeats_a_step(store_uri):
    ref = tracking.open_run(store_uri, "logger", "r", {}, {"a": 1}, "name: r\n")
    tracking.RunLogger(ref).log({"loss": 1.0}, step=10)
    tracking.RunLogger(ref).log({"loss": 0.9}, step=20)
    resumed = tracking.RunLogger(ref, tracking.last_steps(ref))
    resumed.log({"loss": 0.95}, step=15)  # recomputed after the checkpoint: already covered
    resumed.log({"loss": 0.8}, step=30)
    assert tracking.metric_history(ref, "loss") == [(10, 1.0), (20, 0.9), (30, 0.8)]


def test_run_gets_provenance_and_job_yaml(store_uri):
    ref = tracking.open_run(store_uri, "prov", "r", {"trainyard.kind": "supervised"},
                            {"train.lr": 0.1}, "name: r\nkind: supervised\n", "a description")
    run = MlflowClient(store_uri).get_run(ref.run_id)
    assert run.data.params == {"train.lr": "0.1"}
    assert run.data.tags["mlflow.note.content"] == "a description"
    for key in ("git_commit", "host", "command", "hardware", "version.ray", "version.mlflow"):
        assert run.data.tags[f"trainyard.{key}"]
    assert tracking.run_info(ref)["job_yaml"] == "name: r\nkind: supervised\n"
    artifact_uri = run.info.artifact_uri
    assert artifact_uri.startswith("file://") and "trainyard-runs/artifacts" in artifact_uri


@pytest.mark.slow
def test_ui_serves_the_store_on_loopback_only(store_uri):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "trainyard.cli", "ui", "--port", str(port),
                             "--tracking-uri", store_uri], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, "the UI exited"
                assert time.monotonic() < deadline, "the UI did not answer in 90 s"
                time.sleep(1)
        addresses = listening_addresses(port)
        assert addresses == {"0100007F"}, addresses  # 127.0.0.1, nothing else
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

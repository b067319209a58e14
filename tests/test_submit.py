"""`trainyard submit` against a real Ray head node started here (127.0.0.1, free ports).

The head runs from this virtualenv; the job gets trainyard only through the wheel shipped in
its runtime_env. Only the processes this test started are stopped afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import DIGITS, env_without_tracking, free_port, runs_of
from trainyard.cli import main


def _our_processes(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="ignore"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def head():
    """A Ray head node on 127.0.0.1; yields its Jobs API address."""
    temp = tempfile.mkdtemp(prefix="tyr", dir="/tmp")  # short: Ray's socket paths are limited
    port, dashboard = free_port(), free_port()
    # Ray 2.60 heads require a token by default. Ray reads the auth mode once per process and
    # this suite's local runs disable it, so this head does without (a real cluster's token
    # reaches `trainyard submit` through ~/.ray/auth_token or $RAY_AUTH_TOKEN, Ray's own way).
    env = {**env_without_tracking(), "RAY_AUTH_MODE": "disabled"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head",
                    "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--temp-dir={temp}", "--include-dashboard=true",
                    # free ports for every agent: the defaults (52365, ...) clash with any
                    # other Ray on this machine, a local `trainyard run` included
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--dashboard-agent-grpc-port={free_port()}",
                    f"--runtime-env-agent-port={free_port()}",
                    f"--metrics-export-port={free_port()}",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # this process: the head has no token
    address = f"http://127.0.0.1:{dashboard}"
    try:
        yield address
    finally:
        for pid in _our_processes(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait(address: str, job_id: str, timeout_s: float = 420) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


def _submitted_id(out: str) -> str:
    return out.split(" as Ray job ")[1].split()[0]


@pytest.mark.slow
def test_submit_runs_the_job_on_the_cluster_into_mlflow(head, workdir, capsys, monkeypatch):
    uri = f"sqlite:///{workdir / 'shared' / 'mlflow.db'}"  # stands in for a shared server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["submit", str(DIGITS), "-o", "stop.epochs=2", "-o", "resources.workers=1",
                 "-o", "output.log_model=false", "-o", "tracking.experiment=cluster",
                 "--allow-local-storage", "--address", head]) == 0
    captured = capsys.readouterr()
    job_id = _submitted_id(captured.out)
    assert f"trainyard logs {job_id} --follow" in captured.out
    assert "tracking.uri (sqlite:" in captured.err  # allowed, and still warned about
    assert _wait(head, job_id) == "SUCCEEDED"

    client, runs = runs_of(uri, "cluster")
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["test/accuracy"] > 0.5
    assert len(client.get_metric_history(run.info.run_id, "val/accuracy")) == 2

    assert main(["logs", job_id, "--address", head]) == 0
    logs = capsys.readouterr().out
    assert "[digits-cnn] epoch 2/2" in logs and "FINISHED" in logs
    assert main(["jobs", "--address", head]) == 0
    assert job_id in capsys.readouterr().out


@pytest.mark.slow
def test_a_job_whose_code_fails_is_failed_with_its_error_in_the_logs(head, workdir, capsys):
    assert main(["submit", str(DIGITS), "-o", "data={name: mnist_idx, path: /nowhere/mnist}",
                 "--allow-local-storage", "--address", head]) == 0
    job_id = _submitted_id(capsys.readouterr().out)
    assert _wait(head, job_id) == "FAILED"
    assert main(["logs", job_id, "--address", head]) == 0
    assert "MNIST folder not found: /nowhere/mnist" in capsys.readouterr().out


def test_submit_without_an_address_says_how_to_give_one(workdir, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["submit", str(DIGITS), "--allow-local-storage"]) == 2
    assert "pass --address" in capsys.readouterr().err


@pytest.mark.slow
def test_stop_ends_a_running_job(head, workdir, capsys):
    from ray.job_submission import JobSubmissionClient

    assert main(["submit", str(DIGITS), "-o", "stop.epochs=500", "-o", "resources.workers=1",
                 "--allow-local-storage", "--address", head]) == 0
    job_id = _submitted_id(capsys.readouterr().out)
    client = JobSubmissionClient(head)
    deadline = time.monotonic() + 120
    while str(client.get_job_status(job_id)).split(".")[-1] != "RUNNING":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(1)
    assert main(["stop", job_id, "--address", head]) == 0
    assert "stop requested" in capsys.readouterr().out
    assert _wait(head, job_id, timeout_s=60) == "STOPPED"


@pytest.mark.slow
def test_logs_of_an_unknown_job_is_a_clear_error(head, capsys):
    assert main(["logs", "raysubmit_nope", "--address", head]) == 2
    err = capsys.readouterr().err
    assert "job raysubmit_nope:" in err and "Traceback" not in err


def test_submit_refuses_node_local_storage_naming_each_field(workdir, capsys):
    assert main(["submit", str(DIGITS), "-o", "tracking.uri=sqlite:///runs.db",
                 "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cnn_digits.yaml: trainyard submit needs storage every node shares" in err
    assert "tracking.uri (sqlite:///runs.db)" in err and "http://HOST:5000" in err
    assert "checkpoint.path (trainyard-runs/checkpoints)" in err and "s3://" in err
    assert "--allow-local-storage" in err and "Traceback" not in err


def test_submit_ships_the_users_env_module_and_code_paths(workdir, capsys, monkeypatch):
    # What reaches the Jobs API, without a cluster: the working folder holds job.yaml, the
    # module a module:EnvId env names, and each --code path.
    from trainyard import submit

    (workdir / "shipped_envs.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('Shipped-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv')\n")
    (workdir / "helpers").mkdir()
    (workdir / "helpers" / "__init__.py").write_text("X = 1\n")
    (workdir / "job.yaml").write_text(
        "name: mine\nkind: rl\nagent: {env: 'shipped_envs:Shipped-v0'}\n")
    seen = {}

    class Jobs:
        def submit_job(self, entrypoint, runtime_env, metadata):
            folder = Path(runtime_env["working_dir"])
            seen["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
            return "raysubmit_1"

    monkeypatch.setattr(submit, "client", lambda address: Jobs())
    monkeypatch.setattr(submit, "build_wheel", lambda folder: folder)
    assert main(["submit", "job.yaml", "--address", "http://127.0.0.1:9",
                 "--allow-local-storage", "--code", "helpers"]) == 0
    assert seen["files"] == ["helpers", "helpers/__init__.py", "job.yaml", "shipped_envs.py"]
    # a supervised job's own network (model.arch: module:factory) travels the same way
    (workdir / "shipped_nets.py").write_text("def make(num_classes):\n    pass\n")
    (workdir / "net.yaml").write_text(
        "name: mine\nkind: supervised\nmodel: {arch: 'shipped_nets:make'}\n")
    assert main(["submit", "net.yaml", "--address", "http://127.0.0.1:9",
                 "--allow-local-storage"]) == 0
    assert seen["files"] == ["job.yaml", "shipped_nets.py"]
    assert main(["submit", "job.yaml", "--address", "http://127.0.0.1:9",
                 "--allow-local-storage", "--code", "nowhere"]) == 2
    assert "--code nowhere: no such file or folder" in capsys.readouterr().err

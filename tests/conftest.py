"""Shared fixtures: every test runs in its own working directory with its own MLflow store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# The first local `ray.init()` that finds RAY_AUTH_MODE unset turns token authentication on
# for the whole process (Ray writes RAY_AUTH_MODE=token into os.environ). A test that starts Ray
# itself, or through RLlib, before anything imported trainyard.launcher (which sets "disabled"
# for trainyard's local sessions) left every later local dashboard in this process answering
# HTTP 401. The suite's local clusters run as trainyard's do.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# What trainyard keeps across runs (the pinned FID classifier): one cache for the session's
# runs, Ray workers included (they inherit this environment), none in the developer's home.
os.environ.setdefault("TRAINYARD_CACHE", tempfile.mkdtemp(prefix="trainyard-cache-"))

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "supervised" / "configs" / "cnn_digits.yaml"
CARTPOLE = REPO / "agents" / "configs" / "dqn_cartpole.yaml"


@pytest.fixture(scope="module")
def ray_once():
    """One embedded Ray for a module of end-to-end tests (the CLI joins a running one instead
    of starting its own), so each job costs its training, not Ray's start-up."""
    import ray

    from trainyard import launcher  # noqa: F401  (sets Ray's environment before init)

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def runs_of(uri: str, experiment: str):
    """An MLflow client on the store `uri`, and the runs of `experiment` in it, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A clean cwd; the default tracking store (./trainyard-runs/mlflow.db) lands in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # the per-user key that seals sweep state: the test's own, not the developer's
    monkeypatch.setenv("TRAINYARD_STATE_KEY", str(tmp_path / "trainyard-state.key"))
    return tmp_path


@pytest.fixture
def store_uri(workdir) -> str:
    return f"sqlite:///{workdir / 'trainyard-runs' / 'mlflow.db'}"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def env_without_tracking() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on a TCP port:
    {'0100007F'} is 127.0.0.1 only."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def pytest_runtest_logreport(report):
    """Name each test that takes over 20 s as it ends, with its time: a CI run stopped at its
    limit prints no --durations table, and this is how the log still says where the time went."""
    if report.when == "call" and report.duration > 20:
        sys.stderr.write(f"\n[{report.duration:6.0f} s] {report.nodeid}\n")


def pytest_sessionfinish(session, exitstatus):
    session.config._trainyard_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process once pytest has reported, without the interpreter's teardown.

    CI on 1 December: 258 passed, then the pytest process died of SIGSEGV while Python tore
    itself down (exit 139), with C++ threads of the in-process Ray, gloo and OpenMP still
    alive. That teardown is not what the suite tests (every product path it checks runs to its
    end inside the tests, most in subprocesses whose exit codes are asserted), so the process
    stops an in-process Ray with `ray.shutdown` and leaves with pytest's own exit status.
    """
    status = getattr(config, "_trainyard_exitstatus", None)
    if status is None:  # pytest stopped before a session ran (--help, usage errors)
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# ---- a run in its own process group, killed mid-training (resume tests) -----------------

def start_run(job, overrides, cwd):
    argv = [sys.executable, "-m", "trainyard.cli", "run", str(job)]
    for override in overrides:
        argv += ["-o", override]
    return subprocess.Popen(argv, cwd=cwd, env=env_without_tracking(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, proc, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill:\n{proc.stdout.read()}")
        result = predicate()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError("timed out waiting for the run to make progress")


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had ended (and wait_for said so)
        pass
    proc.wait(timeout=30)


def single_run(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id])
    return runs[0] if runs else None


def checkpointed_run(client, experiment, workdir):
    """The experiment's run once it has at least one checkpoint folder, else None."""
    run = single_run(client, experiment)
    if run is None:
        return None
    folder = workdir / "trainyard-runs" / "checkpoints" / run.info.run_id
    done = folder.is_dir() and any(p.is_dir() and p.name.startswith("checkpoint_")
                                   for p in folder.iterdir())
    return run if done else None


def metric_steps(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key),
                                   key=lambda m: (m.step, m.timestamp))]

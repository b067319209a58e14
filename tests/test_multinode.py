"""Three Ray nodes on this machine: jobs placed across them, and a whole node lost mid-run.

The head has no CPUs (as in clusters/aws-gpu.yaml: it schedules, serves the Jobs API and trains
nothing); each worker node has one CPU, so a 2-worker DDP job or 2 env runners need both. The
nodes are separate Ray nodes (own raylet, object store and workers) started with Ray's
`cluster_utils.Cluster`, on free ports and a small object store each. A node is lost the way
a machine is: SIGKILL to its raylet and every process of that node at once. Only processes
these tests started are ever stopped (never `ray stop`).
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
from mlflow.tracking import MlflowClient

from conftest import CARTPOLE, DIGITS, env_without_tracking, free_port

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

BIN = Path(sys.executable).parent
STORE_MB = 120 * 1024 * 1024


def _processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="ignore"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class LocalCluster:
    """A head and worker nodes, each a Ray node of its own; all processes under one temp dir."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        self.temp = tempfile.mkdtemp(prefix="tym", dir="/tmp")  # Ray's socket paths are short
        self.dashboard = free_port()
        # the head inherits this environment: jobs find `python` and `trainyard` in the venv
        os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
        self.cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args=dict(
            num_cpus=0, object_store_memory=STORE_MB, temp_dir=self.temp,
            gcs_server_port=free_port(), include_dashboard=True,
            dashboard_host="127.0.0.1", dashboard_port=self.dashboard,
            dashboard_agent_listen_port=free_port(), metrics_export_port=free_port(),
            runtime_env_agent_port=free_port(), runtime_env_dir_name="runtime_env_head"))
        self.head_id = self.cluster.head_node.node_id
        self.added = 0
        self.workers = [self.add_node() for _ in range(2)]

    @property
    def address(self) -> str:  # for `trainyard run --address`
        return self.cluster.address

    @property
    def jobs_address(self) -> str:  # for `trainyard submit --address`
        return f"http://127.0.0.1:{self.dashboard}"

    def add_node(self):
        # Each node its own runtime-env folder, as on separate machines: in the shared session
        # folder one node's agent deleted the job's working_dir while another still used it.
        self.added += 1
        return self.cluster.add_node(num_cpus=1, object_store_memory=STORE_MB,
                                     metrics_export_port=free_port(),
                                     runtime_env_agent_port=free_port(),
                                     runtime_env_dir_name=f"runtime_env_{self.added}")

    def kill_node(self, node_id: str) -> None:
        """SIGKILL the node's raylet, its agents and every worker process it started."""
        node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
        for pid in _processes_with(f"--raylet-name={node.raylet_socket_name}"):
            os.kill(pid, signal.SIGKILL)
        self.cluster.remove_node(node, allow_graceful=False)

    def close(self) -> None:
        from ray._common.utils import reset_ray_address

        for pid in _processes_with(self.temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reset_ray_address()  # the head wrote its address for `ray.init()` on this machine


@pytest.fixture(scope="module")
def cluster():
    path = os.environ["PATH"]
    local = LocalCluster()
    try:
        yield local
    finally:
        local.close()
        os.environ["PATH"] = path


def _env(uri: str) -> dict[str, str]:
    return {**env_without_tracking(), "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}


def _the_run(uri: str, experiment: str, timeout_s: float = 240,
             process: subprocess.Popen | None = None):
    client = MlflowClient(uri)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exit {process.returncode} before the run started:\n"
                                 f"{process.stdout.read()[-3000:]}")
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs:
            return client, runs[0].info.run_id
        time.sleep(1)
    raise AssertionError(f"no run in experiment {experiment} after {timeout_s} s")


def _wait_for(client, run_id: str, metric: str, count: int, timeout_s: float = 240,
              process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while len(client.get_metric_history(run_id, metric)) < count:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {count} "
                                 f"points of {metric}:\n{process.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{metric} did not reach {count} points"
        time.sleep(0.5)


def _steps(client, run_id: str, metric: str) -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, metric),
                                   key=lambda m: (m.step, m.timestamp))]


def _tags(client, run_id: str, prefix: str) -> dict[str, str]:
    return {k[len(prefix):]: v for k, v in client.get_run(run_id).data.tags.items()
            if k.startswith(prefix)}


def test_ddp_job_spreads_over_two_nodes_and_survives_losing_one(cluster, workdir, capsys):
    """`trainyard submit`: two DDP ranks on two nodes; one node dies after epoch 3; Train
    restarts both ranks from the last checkpoint on the node left and one added back."""
    from trainyard.cli import main

    uri = f"sqlite:///{workdir / 'shared' / 'mlflow.db'}"  # one filesystem: shared storage
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        assert main(["submit", str(DIGITS), "-o", "resources.workers=2",
                     "-o", "resources.placement=spread", "-o", "stop.epochs=12",
                     "-o", "checkpoint.every_epochs=1", "-o", "output.log_model=false",
                     "-o", "tracking.experiment=multinode-ddp",
                     "-o", f"checkpoint.path={workdir / 'shared' / 'checkpoints'}",
                     "--allow-local-storage", "--address", cluster.jobs_address]) == 0
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    job_id = capsys.readouterr().out.split(" as Ray job ")[1].split()[0]
    client, run_id = _the_run(uri, "multinode-ddp")
    _wait_for(client, run_id, "val/accuracy", 3)
    placed = _tags(client, run_id, "trainyard.node.")
    assert placed["rank0"] != placed["rank1"], placed
    assert cluster.head_id not in placed.values()  # the head has no CPUs to train on
    killed_at = len(client.get_metric_history(run_id, "val/accuracy"))
    lost = placed["rank1"]
    cluster.kill_node(lost)
    started = time.monotonic()
    cluster.add_node()

    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(cluster.jobs_address)
    deadline = time.monotonic() + 300
    while (status := str(jobs.get_job_status(job_id)).split(".")[-1]) not in (
            "SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(2)
    assert status == "SUCCEEDED", jobs.get_job_logs(job_id)[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/accuracy"] >= 0.95
    epochs = sorted(client.get_metric_history(run_id, "train/epoch"),
                    key=lambda m: (m.step, m.timestamp))
    assert [m.value for m in epochs] == list(range(1, 13))  # each epoch logged once
    assert _steps(client, run_id, "val/accuracy") == sorted(set(_steps(client, run_id,
                                                                       "val/accuracy")))
    tags = run.data.tags
    assert tags["trainyard.faults.worker_restarts"] == "1"
    assert int(tags["trainyard.faults.worker_failures"]) >= 1
    assert "rank" in tags["trainyard.faults.last_worker_error"]
    assert [m.value for m in client.get_metric_history(run_id, "faults/worker_restarts")] == [1]
    now = _tags(client, run_id, "trainyard.node.")
    assert lost not in now.values() and now["rank0"] != now["rank1"], now
    print(f"ddp over 2 nodes: node lost after epoch {killed_at}, job done "
          f"{time.monotonic() - started:.0f} s later; test accuracy "
          f"{run.data.metrics['test/accuracy']:.4f}")


def test_rl_runners_on_worker_nodes_survive_a_lost_node_and_a_killed_driver(cluster, workdir):
    """`trainyard run --address`: the learner in the driver on the head, two env runners on the
    worker nodes; one node dies (the runner comes back on a node added back), then the driver
    is killed and `trainyard resume` finishes the run."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = _env(uri)
    overrides = ["resources.env_runners=2", "stop.env_steps=8k", "agent.training_intensity=16",
                 "checkpoint.every_iterations=1", "tracking.experiment=multinode-rl",
                 "tracking.system_metrics=false", "evaluation.every_iterations=100",
                 "fault_tolerance.restart_delay_s=0"]
    command = [str(BIN / "trainyard"), "run", str(CARTPOLE), "--address", cluster.address,
               *[a for o in overrides for a in ("-o", o)]]
    refused = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True)
    assert refused.returncode == 2 and "storage every node shares" in refused.stderr, \
        refused.stderr[-2000:]  # a sqlite store and a local folder, on 3 nodes
    command.append("--allow-local-storage")  # one machine: every node shares its disk
    driver = subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        client, run_id = _the_run(uri, "multinode-rl", process=driver)
        _wait_for(client, run_id, "train/iteration", 2, process=driver)
        placed = _tags(client, run_id, "trainyard.node.")
        assert placed["driver"] == cluster.head_id, placed  # the learner: local to the driver
        runners = {placed["env_runner_1"], placed["env_runner_2"]}
        assert len(runners) == 2 and cluster.head_id not in runners, placed

        cluster.kill_node(placed["env_runner_1"])
        cluster.add_node()
        deadline = time.monotonic() + 180
        while "trainyard.faults.env_runner_restarts" not in client.get_run(run_id).data.tags:
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the lost env runner was never replaced"
            time.sleep(1)
        moved = _tags(client, run_id, "trainyard.node.")
        assert moved["env_runner_1"] not in (placed["env_runner_1"], cluster.head_id), moved
        done = len(client.get_metric_history(run_id, "train/iteration"))
        _wait_for(client, run_id, "train/iteration", done + 1, process=driver)
    finally:
        driver.kill()  # the head's driver dies mid-run
        driver.wait()
    before = _steps(client, run_id, "train/iteration")
    killed_after = len(before)
    assert killed_after < 8, "the run ended before its driver could be killed"

    resumed = subprocess.run([str(BIN / "trainyard"), "resume", run_id, "--address",
                              cluster.address, "--allow-local-storage"], env=env, cwd=workdir,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = _steps(client, run_id, "train/iteration")
    assert steps == sorted(set(steps)) and steps[-1] >= 8_000, steps
    assert steps[:killed_after] == before  # what the killed driver logged stays as it was
    iterations = [m.value for m in sorted(client.get_metric_history(run_id, "train/iteration"),
                                          key=lambda m: m.step)]
    assert iterations[-1] == len(steps)  # the iteration counter came back from the checkpoint
    restarts = client.get_metric_history(run_id, "faults/env_runner_restarts")
    assert restarts and max(m.value for m in restarts) >= 1
    print(f"rl over 3 nodes: node lost at iteration {done}, driver killed after "
          f"{killed_after} iterations, resumed to {steps[-1]} env steps")

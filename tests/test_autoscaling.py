"""clusters/local-fake.yaml brought up for real: Ray's autoscaler, with its fake multi-node
provider, launches the worker nodes a job asks for and takes them away once they are idle.

The head is started the way Ray documents for this provider (`RAY_FAKE_CLUSTER=1 ray start
--head --autoscaling-config=...`), on free ports and its own temp dir; it and the nodes the
autoscaler started are stopped by their own processes afterwards (never `ray stop`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import DIGITS, REPO, env_without_tracking, free_port

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

BIN = Path(sys.executable).parent


def _pids(marker: str, also: str = "") -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().decode(errors="ignore")
            except OSError:
                continue
            if marker in line and also in line:
                found.append(int(entry.name))
    return found


def test_fake_cluster_scales_up_for_a_job_and_back_down_when_idle(workdir):
    import ray

    temp = tempfile.mkdtemp(prefix="tya", dir="/tmp")  # short: Ray's socket paths are limited
    port = free_port()
    ip = ray.util.get_node_ip_address()
    config = yaml.safe_load((REPO / "clusters" / "local-fake.yaml").read_text())
    config["provider"]["gcs_address"] = f"{ip}:{port}"
    config["idle_timeout_minutes"] = 0.25  # 15 s: the test waits for the scale-down
    fake = workdir / "local-fake.yaml"
    fake.write_text(yaml.safe_dump(config))
    env = {**env_without_tracking(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "PATH": f"{BIN}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    counts: list[tuple[float, int]] = []
    stop = threading.Event()

    def count_nodes() -> None:  # raylets under our temp dir: the head and what was launched
        start = time.monotonic()
        while not stop.wait(1.0):
            counts.append((time.monotonic() - start, len(_pids(temp, "raylet/raylet"))))

    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=0",
                        f"--autoscaling-config={fake}", f"--temp-dir={temp}",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                        f"--dashboard-agent-listen-port={free_port()}",
                        f"--dashboard-agent-grpc-port={free_port()}",
                        f"--runtime-env-agent-port={free_port()}",
                        f"--metrics-export-port={free_port()}", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=120)
        threading.Thread(target=count_nodes, daemon=True).start()
        run = subprocess.run(
            [str(BIN / "trainyard"), "run", str(DIGITS), "--address", f"{ip}:{port}",
             "-o", "resources.workers=2", "-o", "resources.custom={accelerator: 1}",
             "-o", "resources.placement=spread", "-o", "stop.epochs=2",
             "-o", "output.log_model=false", "-o", "tracking.experiment=autoscaled",
             "-o", "tracking.system_metrics=false", "--allow-local-storage"],
            env=env, cwd=workdir, capture_output=True, text=True, timeout=420)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "an autoscaling cluster is adding nodes" in run.stdout
        finished = counts[-1][0] if counts else 0.0
        deadline = time.monotonic() + 120
        while len(_pids(temp, "raylet/raylet")) > 1:  # idle nodes are given back
            assert time.monotonic() < deadline, f"idle nodes stayed: {counts[-5:]}"
            time.sleep(1)
        time.sleep(1.5)
    finally:
        stop.set()
        for pid in _pids(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("autoscaled")
    record = client.search_runs([experiment.experiment_id])[0]
    assert record.info.status == "FINISHED"
    ranks = {v for k, v in record.data.tags.items() if k.startswith("trainyard.node.rank")}
    assert len(ranks) == 2, counts  # two launched nodes, one rank each
    peak = max(n for _, n in counts)
    assert peak == 3, counts  # the head and two accel_1x nodes, never the accel_8x
    changes = [(round(t), n) for i, (t, n) in enumerate(counts) if i == 0 or
               n != counts[i - 1][1]]
    print(f"autoscaler node counts (s, raylets): {changes}; job done at {finished:.0f} s")

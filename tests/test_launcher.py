"""Asking for resources the cluster lacks fails fast, naming the resource, never hangs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import DIGITS
from trainyard.cli import main


def test_gpu_job_on_a_cpu_machine_fails_at_once_naming_gpu(workdir, capsys):
    start = time.monotonic()
    code = main(["run", str(DIGITS), "-o", "resources.gpus_per_worker=1"])
    elapsed = time.monotonic() - start
    assert code == 3
    err = capsys.readouterr().err
    assert "GPU: the job needs 2, the cluster has 0" in err
    assert "resources." in err  # says which spec field to change
    assert elapsed < 25  # Ray's start-up: a Ray started here never grows, nothing to wait for


def test_more_workers_than_cores_names_cpu(workdir, capsys):
    code = main(["run", str(DIGITS), "-o", "resources.workers=8", "-o", "resources.cpus=2"])
    assert code == 3
    assert "CPU: the job needs 8, the cluster has 2" in capsys.readouterr().err


def test_embedded_ray_dashboard_listens_on_loopback_only(workdir):
    """The dashboard (and the Jobs and state APIs it serves) is reachable from this machine
    only when trainyard starts Ray itself."""
    import urllib.request

    from conftest import free_port, listening_addresses
    from trainyard.launcher import ray_session

    port = free_port()
    with ray_session(cpus=1, dashboard_port=port):
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not answer in 60 s"
                time.sleep(1)
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else


@pytest.mark.slow
def test_cluster_code_finds_its_own_ray_when_another_runs_on_the_machine(workdir):
    """Ray Train's placement-group cleaner asks Ray's state API about its controller without
    an address; with a second Ray instance on the machine (another trainyard job) that raised
    "Found multiple active Ray instances", the cleaner died and a PBT sweep hung on the
    placement group it should have freed."""
    import subprocess
    import sys

    import ray

    from trainyard.launcher import ray_session

    other = subprocess.Popen(
        [sys.executable, "-c", "import ray, time; ray.init(num_cpus=1, "
         "include_dashboard=False); print('up', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "up"

        @ray.remote(num_cpus=0)
        def state_api_nodes() -> list[str]:
            from ray.util.state import list_nodes  # resolves the cluster as the cleaner does

            return [node.node_id for node in list_nodes()]

        with ray_session(cpus=1):
            ours = ray.get_runtime_context().get_node_id()
            assert ray.get(state_api_nodes.remote(), timeout=120) == [ours]
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow
def test_a_ray_started_with_ray_start_on_the_machine_is_left_alone(workdir):
    """`ray start --head` (or any cluster started from Ray's cluster utilities) writes its
    address to /tmp/ray/ray_current_cluster, and a plain `ray.init(num_cpus=...)` joins it and
    refuses: "When connecting to an existing cluster, num_cpus and num_gpus must not be
    provided". `trainyard run` must start its own Ray anyway."""
    import subprocess
    import sys
    import tempfile

    import ray
    from ray._common.utils import get_ray_address_file, reset_ray_address

    from trainyard.launcher import ray_session

    temp = tempfile.mkdtemp(prefix="tyl", dir="/tmp")
    other = subprocess.Popen(
        [sys.executable, "-c", "from ray.cluster_utils import Cluster; import time; "
         f"Cluster(initialize_head=True, head_node_args={{'num_cpus': 1, 'temp_dir': {temp!r},"
         " 'include_dashboard': False}); print('up', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        theirs = Path(get_ray_address_file(None)).read_text().strip()
        with ray_session(cpus=1):
            assert ray.get_runtime_context().gcs_address != theirs
    finally:
        other.kill()
        other.wait()
        subprocess.run(["pkill", "-9", "-f", temp], check=False)
        reset_ray_address()


def test_local_session_runs_ray_train_without_the_services_a_cluster_needs(workdir,
                                                                          monkeypatch):
    """An embedded Ray never gets a cloud node's shutdown notice, and nothing scrapes Ray
    Train's metrics or reads its JSON logs: the job's processes (Ray Train's controller among
    them) see those switched off; a setting the user made is kept."""
    import ray

    from trainyard.launcher import LOCAL_OFF, ray_session

    names = ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", *LOCAL_OFF)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TRAIN_METRICS_ENABLED", "1")  # the user wants Train's metrics

    @ray.remote(num_cpus=0)
    def settings() -> dict:
        import os

        return {name: os.environ.get(name) for name in names}

    with ray_session(cpus=1):
        seen = ray.get(settings.remote())
    assert seen == {**{name: "0" for name in names}, "RAY_TRAIN_METRICS_ENABLED": "1"}


def test_token_auth_is_turned_off_only_for_embedded_sessions():
    """Importing trainyard leaves Ray's authentication alone, so `--address` to a cluster with
    token auth (RAY_AUTH_MODE unset, a token Ray finds by itself) keeps it; only an embedded
    local session turns it off, and puts the variable back when it ends."""
    import subprocess
    import sys

    code = ("import os; os.environ.pop('RAY_AUTH_MODE', None); import trainyard.cli, "
            "trainyard.launcher, trainyard.runs; print(os.environ.get('RAY_AUTH_MODE'))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "None"


@pytest.mark.slow
def test_run_on_a_token_auth_cluster_keeps_auth_on(workdir):
    """Token auth is turned off for embedded sessions only: `trainyard run --address` to a head
    that requires a token works with the user's token, and is refused without one."""
    import secrets
    import subprocess
    import sys
    import tempfile

    import ray

    from conftest import CARTPOLE, env_without_tracking, free_port

    temp = tempfile.mkdtemp(prefix="tyt", dir="/tmp")
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**env_without_tracking(), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), "HOME": str(workdir),  # no ~/.ray token
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    address = f"{ray.util.get_node_ip_address()}:{port}"
    job = [str(bin_dir / "trainyard"), "run", str(CARTPOLE), "--address", address,
           "-o", "stop.env_steps=1500", "-o", "tracking.system_metrics=false"]
    try:
        subprocess.run([str(bin_dir / "ray"), "start", "--head", f"--port={port}",
                        "--num-cpus=1", f"--temp-dir={temp}", "--include-dashboard=false",
                        f"--dashboard-agent-listen-port={free_port()}",
                        f"--dashboard-agent-grpc-port={free_port()}",
                        f"--runtime-env-agent-port={free_port()}",
                        f"--metrics-export-port={free_port()}", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=120)
        stranger = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        refused = subprocess.run(job, env=stranger, cwd=workdir, capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert f"cannot join the Ray cluster at {address}: Token authentication is enabled " \
            "but no authentication token was found" in refused.stderr
        assert "RAY_AUTH_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
        ran = subprocess.run(job, env=env, cwd=workdir, capture_output=True, text=True,
                             timeout=300)
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
        assert "FINISHED" in ran.stdout
    finally:
        subprocess.run(["pkill", "-9", "-f", temp], check=False)


def test_embedded_run_starts_only_the_train_helpers_it_uses(workdir, store_uri):
    """Each Ray Train helper is an actor process that costs start-up on a small machine. A run
    in a Ray of its own passes no Ray Dataset and outlives nothing, so it starts neither the
    dataset manager nor the placement-group cleaner; the run's kept worker logs name every
    actor that ran."""
    from conftest import runs_of

    assert main(["run", str(DIGITS), "-o", "stop.epochs=1"]) == 0
    client, (run,) = runs_of(store_uri, "digits")
    assert run.info.status == "FINISHED" and run.data.metrics["perf/startup_s"] > 0
    folder = Path(client.download_artifacts(run.info.run_id, "logs/ray", str(workdir)))
    actors = {line.removeprefix(":actor_name:").strip()
              for log in folder.iterdir() for line in log.read_text().splitlines()[:5]
              if line.startswith(":actor_name:")}
    assert {"TrainController", "RayTrainWorker", "_AutoscalingCoordinatorActor"} <= actors
    assert not actors & {"DatasetManager", "PlacementGroupCleaner"}


@pytest.mark.parametrize("embedded, sweep, datasets", [
    (True, False, False), (False, False, False), (True, True, False), (True, False, True)])
def test_lean_trainer_keeps_the_helpers_a_run_needs(monkeypatch, tmp_path, embedded, sweep,
                                                    datasets):
    """Ray Train's default callbacks by class name, as the lean trainer filters them: the
    cleaner stays for a sweep trial (Tune may kill its controller) and for a Ray that outlives
    the run (a cluster, a notebook's); the dataset manager stays when a Ray Dataset is passed.
    Fails if Ray Train renames what is filtered."""
    from types import SimpleNamespace

    from trainyard import launcher
    from trainyard.loader import load_spec
    from trainyard.supervised.trainer import build_trainer

    monkeypatch.setattr(launcher, "EMBEDDED", embedded)
    ctx = SimpleNamespace(storage_name="lean", storage_path=str(tmp_path), run=None,
                          tune_metric="val/accuracy" if sweep else None)
    built = build_trainer(load_spec(str(DIGITS), []).spec, ctx, None)
    if datasets:
        built.datasets = {"train": object()}
    names = {type(c).__name__ for c in built._create_default_callbacks()}
    assert "BackendSetupCallback" in names
    assert ("PlacementGroupCleanerCallback" in names) == (not embedded or sweep)
    assert ("DatasetsCallback" in names) == datasets


def test_preload_imports_and_calls_in_order():
    """Ray's start is mostly waiting: what the run needs next is readied beside it, modules
    imported and functions (opening MLflow's store) called, one after another."""
    from trainyard.launcher import _preload

    seen = []
    loading = _preload(("json", lambda: seen.append(1), lambda: 1 / 0, lambda: seen.append(2)))
    loading.join(10)
    assert not loading.is_alive()
    assert seen == [1]  # a failure stops the rest: the main thread's own call reports it


def test_each_job_readies_the_modules_it_will_import():
    """scikit-learn's datasets module (~0.9 s of a core) is readied for a digits job only; an
    RL job's list is its workload's."""
    from conftest import CARTPOLE, REPO
    from trainyard.loader import load_spec
    from trainyard.workloads import get_workload

    def modules(path):
        spec = load_spec(str(path), []).spec
        return get_workload(spec.kind).preloads(spec)

    assert "sklearn.datasets" in modules(DIGITS)
    text = modules(REPO / "supervised" / "configs" / "gru_charlm.yaml")
    assert "torch" in text and "sklearn.datasets" not in text
    assert "ray.rllib.algorithms.dqn" in modules(CARTPOLE)

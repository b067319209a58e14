"""Asking for resources the cluster lacks fails fast, naming the resource, never hangs."""

from __future__ import annotations

import time

from conftest import DIGITS
from trainyard.cli import main


def test_gpu_job_on_a_cpu_machine_fails_within_30s_naming_gpu(workdir, capsys):
    start = time.monotonic()
    code = main(["run", str(DIGITS), "-o", "resources.gpus_per_worker=1"])
    elapsed = time.monotonic() - start
    assert code == 3
    err = capsys.readouterr().err
    assert "GPU: the job needs 2, the cluster has 0" in err
    assert "resources." in err  # says which spec field to change
    assert elapsed < 30 + 20  # 30 s of waiting for an autoscaler, plus Ray's start-up


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

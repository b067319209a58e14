"""The RL path learns: DQN on CartPole through `trainyard run`, checked in MLflow."""

from __future__ import annotations

import pytest

from conftest import CARTPOLE, runs_of
from trainyard.cli import main


@pytest.mark.slow
def test_dqn_learns_cartpole_in_20k_steps(workdir, store_uri):
    assert main(["run", str(CARTPOLE), "-o", "stop.env_steps=20k"]) == 0
    client, runs = runs_of(store_uri, "cartpole")
    run = runs[0]
    history = sorted(client.get_metric_history(run.info.run_id, "train/return_mean"),
                     key=lambda m: m.step)
    assert history[0].value < 50  # a random policy balances ~20 steps
    assert max(m.value for m in history) >= 150  # measured: ~200 after 10k steps
    assert history[-1].step >= 20_000
    assert run.data.metrics["perf/env_steps_per_s"] > 50
    # evaluated greedily every 10 iterations and at the end, with a GIF of the last episode
    evals = client.get_metric_history(run.info.run_id, "eval/return_mean")
    assert len(evals) >= 2 and max(m.value for m in evals) >= 150
    videos = [a.path for a in client.list_artifacts(run.info.run_id, "videos")]
    assert videos and all(v.endswith(".gif") for v in videos)

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


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_learner_builds_the_optimizer_the_spec_names(name):
    """agent.optimizer picks the learner's optimizer and its settings: Adam with torch's fused
    kernel (a third of the multi-tensor step time on the Nature CNN), or the Nature paper's
    centered RMSProp."""
    import ray
    import torch

    from trainyard.agents.rl_config import build_config
    from trainyard.loader import load_spec

    spec = load_spec(CARTPOLE, [f"agent.optimizer={name}", "agent.optimizer_eps=0.01",
                                "agent.rmsprop_decay=0.9", "agent.lr=0.003"]).spec
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:  # Ray is shut down at the end: later tests start their own
        algo = build_config(spec, 0).build_algo()
        learner = algo.learner_group._learner
        optimizer = learner.get_optimizer(next(iter(learner.module.keys())))
        group = optimizer.param_groups[0]
        assert group["eps"] == 0.01 and group["lr"] == pytest.approx(0.003)
        if name == "adam":
            assert isinstance(optimizer, torch.optim.Adam) and group["fused"]
        else:
            assert isinstance(optimizer, torch.optim.RMSprop)
            assert group["centered"] and group["alpha"] == 0.9
        # and it trains: updates through RLlib's loop change the weights
        before = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
        algo.train()
        algo.train()
        after = optimizer.param_groups[0]["params"]
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
        algo.stop()
    finally:
        ray.shutdown()

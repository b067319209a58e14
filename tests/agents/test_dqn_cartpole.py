"""The RL path learns: DQN on CartPole through `trainyard run`, checked in MLflow."""

from __future__ import annotations

import pytest

from conftest import CARTPOLE, runs_of
from trainyard.cli import main


@pytest.mark.slow
def test_the_shipped_config_solves_cartpole_within_its_step_budget(workdir, store_uri, capsys):
    """As a user runs it, no overrides: a greedy 10-episode evaluation reaches 475 within the
    config's 50k env steps, the run stops there, and its last checkpoint is the one that
    scored (measured 4 December: seeds 0, 1, 2 solved at 24k, 24k and 36k steps), and
    `trainyard eval` replays that checkpoint with a video of its own. (The stop on an
    evaluation target is checked here rather than by a run of its own.)"""
    assert main(["run", str(CARTPOLE)]) == 0
    client, runs = runs_of(store_uri, "cartpole")
    run = runs[0]
    assert run.data.tags["trainyard.dqn_step"] == "lean"
    assert int(run.data.tags["trainyard.torch_threads"]) >= 1
    assert run.data.tags["trainyard.stop_reason"] == "eval/return_mean reached 475"
    evals = sorted(client.get_metric_history(run.info.run_id, "eval/return_mean"),
                   key=lambda m: m.step)
    assert evals[-1].value >= 475 and evals[-1].step <= 50_000
    assert all(m.value < 475 for m in evals[:-1])  # it stopped at the first that scored
    history = sorted(client.get_metric_history(run.info.run_id, "train/return_mean"),
                     key=lambda m: m.step)
    assert history[0].value < 50  # a random policy balances ~20 steps
    # the checkpoint the run ends on is the evaluated one: `trainyard eval` replays it
    folders = sorted((workdir / "trainyard-runs" / "checkpoints" / run.info.run_id).glob(
        "checkpoint_*"))
    assert folders and folders[-1].name == f"checkpoint_{evals[-1].step // 1000:06d}"
    assert run.info.status == "FINISHED"
    videos = [a.path for a in client.list_artifacts(run.info.run_id, "videos")]
    assert videos == [f"videos/eval_{evals[-1].step:010d}_steps.gif"]  # the final one only
    capsys.readouterr()
    video = workdir / "replay.gif"
    assert main(["eval", run.info.run_id, "--episodes", "3", "--epsilon", "0",
                 "--video", str(video)]) == 0
    out = capsys.readouterr().out
    assert (f"CartPole-v1, checkpoint at {evals[-1].step:,} env steps: 3 episodes, epsilon 0: "
            "return") in out
    assert video.read_bytes()[:6] == b"GIF89a"


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_learner_builds_the_optimizer_the_spec_names(name):
    """agent.optimizer picks the learner's optimizer and its settings: Adam with torch's fused
    kernel (a third of the multi-tensor step time on the Nature CNN), or the Nature paper's
    centered RMSProp. The learner is built as the run's learner group builds it, without a
    Ray session (40 s each that way, for the same object)."""
    import gymnasium as gym
    import torch

    from trainyard.agents.lean_dqn import LeanUpdate
    from trainyard.agents.rl_config import build_config
    from trainyard.loader import load_spec

    spec = load_spec(CARTPOLE, [f"agent.optimizer={name}", "agent.optimizer_eps=0.01",
                                "agent.rmsprop_decay=0.9", "agent.lr=0.003"]).spec
    config = build_config(spec, 0)
    learner = config.build_learner(env=gym.make("CartPole-v1"))
    optimizer = learner.get_optimizer(next(iter(learner.module.keys())))
    group = optimizer.param_groups[0]
    assert group["eps"] == 0.01 and group["lr"] == pytest.approx(0.003)
    if name == "adam":
        assert isinstance(optimizer, torch.optim.Adam) and group["fused"]
    else:
        assert isinstance(optimizer, torch.optim.RMSprop)
        assert group["centered"] and group["alpha"] == 0.9
    # and the training step uses it: one update moves the weights it holds
    before = [p.detach().clone() for p in group["params"]]
    batch = {"obs": torch.randn(32, 4), "next_obs": torch.randn(32, 4),
             "actions": torch.randint(0, 2, (32,)), "rewards": torch.ones(32),
             "discounts": torch.full((32,), 0.99)}
    LeanUpdate(learner, config)(batch, env_steps=32)
    assert any(not torch.equal(a, b) for a, b in zip(group["params"], before, strict=True))
    # the seeded learner keeps torch's deterministic algorithms (RLlib turns them on) without
    # their NaN fill of every new tensor (a debugging aid, ~2% of a Nature-CNN update)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.utils.deterministic.fill_uninitialized_memory


def test_a_job_given_fewer_cores_computes_with_that_many_threads(monkeypatch):
    """Two runs side by side each took every core for torch and ran 7x slower, not 2x
    (README "Running jobs side by side"): `resources.cpus` caps the driver's threads."""
    import torch

    from trainyard.agents.runner import _share_cores
    from trainyard.agents.spec import RLJob

    threads = torch.get_num_threads()
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    try:
        _share_cores(RLJob.model_validate({"name": "x", "kind": "rl",
                                           "agent": {"env": "CartPole-v1"}}))
        assert torch.get_num_threads() == threads  # not asked: torch's own default
        _share_cores(RLJob.model_validate({"name": "x", "kind": "rl", "resources": {"cpus": 1},
                                           "agent": {"env": "CartPole-v1"}}))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)

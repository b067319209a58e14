"""The lean DQN step: its frame replay stacks and sums what RLlib's episodes hold, its loss and
gradients are RLlib's learner's on the same batch, and the private RLlib attributes it needs
are where it expects them."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from trainyard.agents.atari import stack_indices
from trainyard.agents.frame_replay import FrameReplay
from trainyard.agents.lean_dqn import MERGE_EVERY_STEPS, LeanUpdate, dqn_loss

SPACE = gym.spaces.Box(0, 255, (84, 84), np.uint8)


def _chunks(episode_id: str, code: int, length: int, cuts: list[int], *,
            terminated: bool = False, truncated: bool = False):
    """An episode of `length` steps played as chunks ending at `cuts`, the way an env runner
    returns them; frame t holds code * 32 + t (decodable), reward of step t is t + 1."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    frames = [np.full((84, 84), code * 32 + t, np.uint8) for t in range(length + 1)]
    out, start = [], 0
    for end in [*cuts, length]:
        last = end == length
        out.append(SingleAgentEpisode(
            id_=episode_id, observations=frames[start:end + 1],
            actions=list(range(start, end)), rewards=[float(t + 1) for t in range(start, end)],
            observation_space=SPACE, action_space=gym.spaces.Discrete(6), t_started=start,
            terminated=last and terminated, truncated=last and truncated,
            len_lookback_buffer=0))
        start = end
    return out


def test_frame_replay_stacks_frames_and_sums_n_step_returns_like_the_episodes():
    gamma, n = 0.5, 3
    replay = FrameReplay(1000, lanes=2, num_frames=4, n_step=n, gamma=gamma, seed=0)
    a = _chunks("a", 1, 12, [5, 9], terminated=True)
    b = _chunks("b", 2, 7, [3], truncated=True)
    c = _chunks("c", 3, 9, [4])  # still running: its last n steps cannot be sampled yet
    # as a runner with two games returns them: a and b side by side, then c in b's place
    for chunk in ([a[0], b[0]], [a[1], b[1]], [a[2], c[0]], [c[1]]):
        replay.add(chunk)
    lengths, ends = {1: 12, 2: 7, 3: 9}, {1: "terminated", 2: "truncated", 3: None}
    seen = set()
    batch = replay.sample(512)
    for i in range(512):
        obs, nxt = batch["obs"][i].numpy(), batch["next_obs"][i].numpy()
        assert obs.shape == (84, 84, 4)
        code, t = divmod(int(obs[0, 0, -1]), 32)
        seen.add((code, t))
        steps = min(n, lengths[code] - t)
        assert code != 3 or t + n <= 9  # c's newest steps wait for their n-step return
        assert list(obs[0, 0] - code * 32) == stack_indices(t, 4)
        assert list(nxt[0, 0] - code * 32) == stack_indices(t + steps, 4)
        assert int(batch["actions"][i]) == t
        assert int(batch["n_step"][i]) == steps
        assert batch["rewards"][i] == pytest.approx(
            sum(gamma ** d * (t + d + 1) for d in range(steps)))
        ended = t + steps == lengths[code]
        expected = 0.0 if ended and ends[code] == "terminated" else gamma ** steps
        assert batch["discounts"][i] == pytest.approx(expected)
    # every complete transition is drawn, and none from an episode's last frame
    assert seen == ({(1, t) for t in range(12)} | {(2, t) for t in range(7)}
                    | {(3, t) for t in range(9 - n + 1)})


def test_precision_auto_reaches_the_lean_update_as_the_learner_resolved_it(monkeypatch):
    """`precision: auto` on hardware with native bf16: the learner's decision (not the spec's
    literal "auto") sets the lean update's autocast, so its loss is bf16-rounded, close to
    fp32's but not equal; on this CPU's real answer (no native bf16) it stays fp32."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    from trainyard.agents import learner as learner_module
    from trainyard.agents.rl_config import build_config
    from trainyard.agents.spec import RLJob

    frames = torch.randint(0, 256, (2, 8, 84, 84, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    batch = {"obs": frames[0], "next_obs": frames[1], "actions": torch.arange(8) % 6,
             "rewards": torch.ones(8), "discounts": torch.full((8,), 0.9)}

    def lean_loss(precision: str, native: bool) -> float:
        monkeypatch.setattr(learner_module, "native_bf16", lambda device: native)
        spec = RLJob.model_validate({"name": "x", "kind": "rl", "agent": {
            "env": "ALE/Pong-v5", "hidden": [32], "conv_filters": [[8, 8, 4], [8, 4, 2]],
            "precision": precision}})
        config = build_config(spec, 0)
        torch.manual_seed(0)
        learner = config.build_learner(spaces={DEFAULT_MODULE_ID: (
            gym.spaces.Box(0, 255, (84, 84, 4), np.uint8), gym.spaces.Discrete(6))})
        bf16 = precision == "bf16" or (precision == "auto" and native)
        assert learner.precision == ("bf16" if bf16 else "fp32")
        return LeanUpdate(learner, config).losses(batch)[0].item()

    fp32 = lean_loss("fp32", native=True)
    assert lean_loss("auto", native=False) == fp32
    auto = lean_loss("auto", native=True)
    assert auto != fp32 and auto == pytest.approx(fp32, rel=0.05)


def test_replay_of_vector_observations_returns_them_unstacked():
    """CartPole-like episodes (float vectors, num_frames 1): obs and next_obs are the
    episode's own observations t and t + n."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    space = gym.spaces.Box(-10, 10, (4,), np.float32)
    observations = [np.array([t, t + 0.5, -t, 1.0], np.float32) for t in range(11)]
    episode = SingleAgentEpisode(
        id_="v", observations=observations, actions=[t % 2 for t in range(10)],
        rewards=[1.0] * 10, observation_space=space, action_space=gym.spaces.Discrete(2),
        terminated=True, len_lookback_buffer=0)
    replay = FrameReplay(100, lanes=1, num_frames=1, n_step=2, gamma=0.9, seed=0)
    replay.add([episode])
    batch = replay.sample(64)
    assert batch["obs"].shape == (64, 4) and batch["obs"].dtype == torch.float32
    for obs, nxt, steps, discount in zip(batch["obs"], batch["next_obs"], batch["n_step"],
                                         batch["discounts"], strict=True):
        t = int(obs[0])
        assert torch.equal(obs, torch.from_numpy(observations[t]))
        assert torch.equal(nxt, torch.from_numpy(observations[t + int(steps)]))
        assert float(discount) == pytest.approx(0.0 if t + int(steps) == 10 else 0.81)


def test_a_lost_runners_game_is_ended_as_truncated_when_its_lane_is_needed():
    """Two lanes, a runner lost mid-game (its game `a` never sends another chunk) and its
    restarted self starting game `c`: `a` gives up its lane, cut as truncated; no n-step
    return of `a` runs into `c`'s frames."""
    replay = FrameReplay(1000, lanes=2, num_frames=1, n_step=3, gamma=0.5, seed=0)
    a, b, c = _chunks("a", 1, 10, [4]), _chunks("b", 2, 12, [3, 8]), _chunks("c", 3, 6, [])
    replay.add([a[0], b[0]])
    replay.add([b[1]])  # a's runner is gone: only b goes on
    replay.add([c[0], b[2]])
    assert replay.abandoned == 1
    batch = replay.sample(512)
    for obs, nxt, steps in zip(batch["obs"], batch["next_obs"], batch["n_step"], strict=True):
        code, t = divmod(int(obs[0, 0]), 32)
        after, t_next = divmod(int(nxt[0, 0]), 32)
        assert after == code  # never into another game
        assert t_next == t + int(steps)
        if code == 1:  # a: 4 steps written, cut after the 4th
            assert t + int(steps) <= 4


def test_frame_replay_forgets_the_oldest_frames_when_full():
    replay = FrameReplay(40, lanes=1, num_frames=4, n_step=1, gamma=0.9, seed=0)
    for k in range(5):  # 5 games of 15 steps, 80 frames into a ring of 40
        replay.add(_chunks(f"g{k}", k, 15, [], terminated=True))
    batch = replay.sample(256)
    codes = {int(v) // 32 for v in batch["obs"][:, 0, 0, -1]}
    assert codes <= {2, 3, 4} and 4 in codes
    for obs in batch["obs"]:  # no stack reaches into overwritten frames
        assert len({int(v) // 32 for v in obs[0, 0]}) == 1


def test_dqn_loss_is_the_huber_loss_to_the_bootstrapped_target():
    q = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    target_next = torch.tensor([[3.0, 1.0], [2.0, 4.0]])
    online_next = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    actions, rewards = torch.tensor([1, 0]), torch.tensor([1.0, -1.0])
    discounts = torch.tensor([0.5, 0.0])  # the second transition ended in a terminal
    loss, td, chosen = dqn_loss(q, target_next, None, actions, rewards, discounts)
    # plain: max of the target net; y = (1 + 0.5 * 3, -1); q(s, a) = (2, 0.5)
    assert chosen.tolist() == [2.0, 0.5]
    assert td.tolist() == pytest.approx([0.5, 1.5])
    assert loss.item() == pytest.approx((0.5 * 0.5 ** 2 + (1.5 - 0.5)) / 2)
    _, td_double, _ = dqn_loss(q, target_next, online_next, actions, rewards, discounts)
    assert td_double.tolist() == pytest.approx([abs(2 - (1 + 0.5 * 1.0)), 1.5])


@pytest.mark.parametrize("double_q,dueling", [(True, True), (False, False)])
def test_lean_update_gives_rllibs_dqn_loss_and_gradients(double_q, dueling):
    """One fixed batch: the lean step's loss and gradients against RLlib's own DQN learner
    (`compute_loss_for_module` on the module's training forward), fp32."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.core.columns import Columns

    from trainyard.agents.rl_config import build_config
    from trainyard.agents.spec import RLJob

    spec = RLJob.model_validate({"name": "x", "kind": "rl", "agent": {
        "env": "ALE/Pong-v5", "hidden": [32], "conv_filters": [[8, 8, 4], [8, 4, 2]],
        "double_q": double_q, "dueling": dueling, "n_step": 3, "precision": "fp32"}})
    config = build_config(spec, 0)
    torch.manual_seed(0)
    learner = config.build_learner(spaces={DEFAULT_MODULE_ID: (
        gym.spaces.Box(0, 255, (84, 84, 4), np.uint8), gym.spaces.Discrete(6))})
    module = learner.module[DEFAULT_MODULE_ID].unwrapped()
    with torch.no_grad():  # a target net that differs from the online one
        for _, target in module.get_target_network_pairs():
            for p in target.parameters():
                p.add_(0.05 * torch.randn_like(p))
    frames = torch.randint(0, 256, (2, 32, 84, 84, 4), dtype=torch.uint8)
    n_step = torch.randint(1, 4, (32,))
    terminated = torch.rand(32) < 0.3
    actions, rewards = torch.randint(0, 6, (32,)), torch.randn(32)
    ours = {"obs": frames[0], "next_obs": frames[1], "actions": actions, "rewards": rewards,
            "discounts": torch.where(terminated, 0.0, config.gamma ** n_step.float())}
    theirs = {Columns.OBS: frames[0], Columns.NEXT_OBS: frames[1], Columns.ACTIONS: actions,
              Columns.REWARDS: rewards, Columns.TERMINATEDS: terminated, "n_step": n_step,
              "weights": torch.ones(32)}

    def grads(loss):
        module.zero_grad()
        loss.backward()
        return {name: p.grad.clone() for name, p in module.named_parameters()
                if p.grad is not None}

    lean_loss = LeanUpdate(learner, config).losses(ours)[0]
    lean_grads = grads(lean_loss)
    rllib_loss = learner.compute_loss_for_module(
        module_id=DEFAULT_MODULE_ID, config=config, batch=theirs,
        fwd_out=module.forward_train(theirs))
    rllib_grads = grads(rllib_loss)
    assert lean_loss.item() == pytest.approx(rllib_loss.item(), rel=1e-5)
    assert lean_grads.keys() == rllib_grads.keys() and len(lean_grads) >= 4
    for name, grad in lean_grads.items():
        assert torch.allclose(grad, rllib_grads[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_the_one_pass_clip_scales_gradients_as_rllibs_and_flags_nan(scale):
    from ray.rllib.utils.torch_utils import clip_gradients

    from trainyard.agents.learner import DQNLearner

    grads = {i: torch.randn(5, 3) * scale for i in range(4)}
    theirs = {k: v.clone() for k, v in grads.items()}
    learner = DQNLearner.__new__(DQNLearner)  # the clip and the check need no built learner
    ours = learner._get_clip_function()(grads, grad_clip=1.0, grad_clip_by="global_norm")
    expected = clip_gradients(theirs, grad_clip=1.0, grad_clip_by="global_norm")
    assert torch.allclose(ours, expected)
    assert all(torch.allclose(grads[k], theirs[k], atol=1e-7) for k in grads)
    assert learner._finite and learner._checked == {id(g) for g in grads.values()}
    grads[0][0, 0] = float("nan")
    learner._get_clip_function()(grads, grad_clip=1.0, grad_clip_by="global_norm")
    assert not learner._finite


def test_private_rllib_attributes_are_where_trainyard_reads_them():
    """Fails loudly, naming the attribute, when a Ray upgrade moves one (see
    trainyard.agents.rllib_private)."""
    from ray.rllib.core.learner.learner_group import LearnerGroup
    from ray.rllib.env.env_runner_group import EnvRunnerGroup

    from trainyard.agents import rllib_private

    assert "_learner" in LearnerGroup.__init__.__code__.co_names, "LearnerGroup._learner"
    # the lean runners' overrides are still what RLlib's runners call, and their pipelines
    # are where the runners keep them
    from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    for runner in (SingleAgentEnvRunner, MultiAgentEnvRunner):
        for name in ("_increase_sampled_metrics", "_log_env_steps"):
            assert name in runner._sample.__code__.co_names, f"{runner.__name__}.{name}"
        for name in ("_env_to_module", "_module_to_env"):
            assert name in runner.__init__.__code__.co_names, f"{runner.__name__}.{name}"
    assert "_worker_manager" in EnvRunnerGroup.__init__.__code__.co_names or hasattr(
        EnvRunnerGroup, "_worker_manager"), "EnvRunnerGroup._worker_manager"
    remote = SimpleNamespace(learner_group=SimpleNamespace(_learner=None))
    with pytest.raises(RuntimeError, match="learners: 0"):
        rllib_private.local_learner(remote)
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    rllib_private.WeightCopier(source, target).copy()
    assert torch.equal(source.weight, target.weight) and torch.equal(source.bias, target.bias)
    # shared instead of copied: the learner's next optimizer step is what the acting
    # module holds, with no copy; a module of another shape is left alone
    assert rllib_private.WeightCopier(source, target).share()
    source.weight.grad = torch.ones_like(source.weight)
    torch.optim.SGD(source.parameters(), lr=0.5).step()
    assert torch.equal(target.weight, source.weight)
    assert target.weight.data_ptr() == source.weight.data_ptr()
    other = torch.nn.Linear(3, 4)
    kept = other.weight.clone()
    assert not rllib_private.WeightCopier(source, other).share()
    assert torch.equal(other.weight, kept)


@pytest.mark.slow
def test_async_sampling_holds_the_replay_ratio_and_learns(workdir, store_uri):
    """A remote env runner samples while the learner updates; updates are granted per
    sampled step, so the run's replay ratio is the configured one (within 2%), and the agent
    still learns CartPole."""
    from conftest import CARTPOLE, runs_of
    from trainyard.cli import main

    assert main(["run", str(CARTPOLE), "-o", "resources.env_runners=1",
                 "-o", "agent.async_sampling=true", "-o", "agent.prioritized_replay=false",
                 "-o", "agent.training_intensity=8", "-o", "stop.env_steps=8k",
                 "-o", "evaluation.every_iterations=1000", "-o", "evaluation.video=false",
                 "-o", "tracking.system_metrics=false"]) == 0
    client, runs = runs_of(store_uri, "cartpole")
    run = runs[0]
    assert run.data.tags["trainyard.dqn_step"] == "lean"
    ratios = client.get_metric_history(run.info.run_id, "train/replay_ratio")
    assert len(ratios) >= 5
    assert all(m.value == pytest.approx(8.0, rel=0.02) for m in ratios[len(ratios) // 2:])
    assert run.data.metrics["eval/return_mean"] > 40  # random play: ~22


def test_async_sampling_without_remote_runners_is_refused(workdir):
    from conftest import CARTPOLE
    from trainyard.loader import SpecError, load_spec

    with pytest.raises(SpecError, match="resources.env_runners to 1 or more"):
        load_spec(CARTPOLE, ["agent.async_sampling=true", "agent.prioritized_replay=false"])
    with pytest.raises(SpecError, match="uniform replay"):
        load_spec(CARTPOLE, ["agent.async_sampling=true", "resources.env_runners=1",
                             "agent.prioritized_replay=true"])


def test_the_drivers_runner_reports_its_metrics_in_a_few_merges_and_loses_no_step(ray_once):
    """With the runner in the driver, its metrics are merged every ~256 env steps and at the
    iteration's end instead of after every 4-step chunk, and nothing is lost or shifted: each
    iteration still ends at its 1,000 env steps, the merged step count is the runner's own,
    the replay ratio is the configured one and finished episodes are reported. The runner's
    timers, connector pipelines' among them, are sampled and still reported, and its step
    counts, summed before they are logged, are exact."""
    from ray.tune.registry import register_env

    from conftest import CARTPOLE
    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.rl_config import build_config
    from trainyard.loader import load_spec

    spec = load_spec(CARTPOLE, ["agent.training_intensity=8", "agent.learning_starts=500",
                                "agent.prioritized_replay=false"]).spec
    register_env(spec.agent.env, make_env_creator(spec.agent))
    algo = build_config(spec, 0).build_algo()
    try:
        runner, merges = algo.env_runner, []
        get_metrics = runner.get_metrics
        runner.get_metrics = lambda: merges.append(1) or get_metrics()
        chunk = spec.agent.rollout_fragment_length
        lifetimes = []
        for _ in range(3):
            result = algo.train()
            lifetimes.append(result["env_runners"]["num_env_steps_sampled_lifetime"])
        grown = [b - a for a, b in zip([0, *lifetimes[:-1]], lifetimes, strict=True)]
        assert all(1000 <= n < 1000 + chunk for n in grown), grown
        assert lifetimes[-1] == runner.num_env_steps_sampled_lifetime
        assert 3 <= len(merges) <= 3 * (1000 // MERGE_EVERY_STEPS + 2)  # was one per chunk: 750
        learner = result["learners"]["default_policy"]
        assert learner["replay_ratio"] == pytest.approx(8.0, rel=0.02)
        assert np.isfinite(result["env_runners"]["episode_return_mean"])
        # the runner's per-step timers are sampled, and still reported
        assert type(runner).__name__ == "LeanEnvRunner"
        assert result["env_runners"]["env_step_timer"] > 0
        runners = result["env_runners"]
        assert runners["env_to_module_connector"]["timers"]["connectors"][
            "latest_observation"] > 0  # from the sampled pipeline calls
        assert runners["module_to_env_connector"]["connector_pipeline_timer"] > 0
        # the step counts, added up in the runner and logged when merged, are exact
        assert runners["num_agent_steps_sampled_lifetime"]["default_agent"] == lifetimes[-1]
        assert runners["num_module_steps_sampled_lifetime"]["default_policy"] == lifetimes[-1]
        assert runners["num_env_steps_sampled"] == grown[-1]
        assert 0 < runners["num_episodes"] < runners["num_episodes_lifetime"]
        assert runners["num_env_steps_sampled_lifetime_throughput"][
            "throughput_since_last_reduce"] > 0
    finally:
        algo.stop()


def test_sampled_timers_time_one_call_in_sixteen_and_log_every_count(monkeypatch):
    """The lean runner's logger times a key's first call and then one in TIME_EVERY (the
    rest return a context that does nothing), samples the per-step length means alike, and
    logs every other value as given."""
    from ray.rllib.utils.metrics import ENV_TO_MODULE_SUM_EPISODES_LENGTH_IN
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    from trainyard.agents.lean_runner import TIME_EVERY, sample_timers

    timed = []
    real = MetricsLogger.log_time
    monkeypatch.setattr(MetricsLogger, "log_time",
                        lambda self, key, **kw: timed.append(key) or real(self, key, **kw))
    logger = MetricsLogger(root=False)
    logger.log_value("before", 1, reduce="sum")  # what was logged before the swap stays
    sample_timers(logger)
    calls = 2 * TIME_EVERY + 1
    for _ in range(calls):
        with logger.log_time(("timers", "env_step")):
            pass
        logger.log_value("env_steps", 1, reduce="sum")
        logger.log_value(ENV_TO_MODULE_SUM_EPISODES_LENGTH_IN, 5.0)
    assert timed == [("timers", "env_step")] * 3  # calls 0, 16 and 32
    results = logger.reduce()
    assert results["env_steps"] == calls and results["before"] == 1
    assert results["timers"]["env_step"] >= 0
    assert results[ENV_TO_MODULE_SUM_EPISODES_LENGTH_IN] == 5.0


def test_every_dqn_run_samples_with_the_lean_runners_whichever_step_trains():
    """The lean runners change only what the runner logs and when, so RLlib's own step
    (prioritized replay here), recurrent and Doom runs get them too; self-play the
    multi-agent one."""
    from conftest import CARTPOLE, REPO
    from trainyard.agents.lean_runner import LeanEnvRunner, LeanMultiAgentEnvRunner
    from trainyard.agents.rl_config import build_config, uses_lean_step
    from trainyard.loader import load_spec

    rllib_step = load_spec(CARTPOLE, ["agent.prioritized_replay=true"]).spec
    assert not uses_lean_step(rllib_step)
    assert build_config(rllib_step, 0).env_runner_cls is LeanEnvRunner
    league = load_spec(REPO / "agents" / "configs" / "selfplay_tictactoe.yaml").spec
    assert build_config(league, 0).env_runner_cls is LeanMultiAgentEnvRunner

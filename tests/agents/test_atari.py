"""Atari with each frame stored once: ale-py's vector env hands out single uint8 frames, the
env-to-module connector and the replay buffer stack them, and the stacks match what a
frame-stacking env would have given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainyard.agents import atari
from trainyard.agents.env_factory import make_eval_env
from trainyard.agents.envs import AtariSettings, rom_name
from trainyard.agents.spec import DQNAgent


def test_rom_names():
    assert rom_name("ALE/Pong-v5") == "pong"
    assert rom_name("ALE/SpaceInvaders-v5") == "space_invaders"


def test_vector_env_gives_single_uint8_frames_and_no_infos():
    env = atari.make_vector_env("ALE/Pong-v5", AtariSettings(), num_envs=2)
    obs, info = env.reset(seed=0)
    assert obs.shape == (2, 84, 84) and obs.dtype == np.uint8 and info == {}
    assert env.single_observation_space.shape == (84, 84)
    obs, reward, terminated, truncated, info = env.step(np.array([0, 1]))
    assert obs.shape == (2, 84, 84) and set(np.unique(reward)) <= {-1.0, 0.0, 1.0}
    env.close()


def test_stack_indices_repeat_the_first_frame_before_the_episode():
    assert atari.stack_indices(0, 4) == [0, 0, 0, 0]
    assert atari.stack_indices(2, 4) == [0, 0, 1, 2]
    assert atari.stack_indices(9, 4) == [6, 7, 8, 9]


def _episode(frames: int, terminated: bool = True):
    """A stored episode whose frame i is filled with the value i; rewards 1, 2, 3, ..."""
    import gymnasium as gym
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    obs = [np.full((84, 84), i % 256, np.uint8) for i in range(frames + 1)]
    episode = SingleAgentEpisode(observations=obs, actions=list(range(frames)),
                                 rewards=[float(i + 1) for i in range(frames)],
                                 observation_space=space, action_space=gym.spaces.Discrete(6),
                                 terminated=terminated, len_lookback_buffer=0)
    return episode.to_numpy()


def test_replay_stacks_frames_and_sums_n_step_rewards():
    buffer = atari.FrameStackEpisodeReplayBuffer(capacity=1000, num_frames=4)
    buffer.add([_episode(10)])
    gamma = 0.5
    for sample in buffer.sample(64, n_step=3, gamma=gamma):
        t, n = sample.t_started, int(sample.extra_model_outputs["n_step"][0])
        first, last = sample.get_observations(0), sample.get_observations(-1)
        assert first.shape == (84, 84, 4) and first.dtype == np.uint8
        assert list(first[0, 0]) == atari.stack_indices(t, 4)
        assert list(last[0, 0]) == atari.stack_indices(t + n, 4)
        assert n == min(3, 10 - t)
        assert sample.get_rewards(0) == pytest.approx(
            sum(gamma ** i * (t + i + 1) for i in range(n)))
        assert sample.get_actions(0) == t
        assert sample.is_terminated == (t + n == 10)


def test_replay_keeps_each_frame_once():
    """A stored step costs one 84x84 frame (7 KiB), not a stack: 1M steps fit in ~7 GB."""
    buffer = atari.FrameStackEpisodeReplayBuffer(capacity=10_000, num_frames=4)
    buffer.add([_episode(1000)])  # frames 0..255 repeat: only the bytes count here
    stored = sum(np.asarray(e.get_observations(slice(None))).nbytes for e in buffer.episodes)
    assert stored == 1001 * 84 * 84


def test_connector_stacks_the_last_frames_of_running_episodes():
    """StackFrames hands the Q-module each game's last 4 frames as one uint8 tensor: rebuilt
    from the episode for a new game or a first call, rolled forward with the step's frame
    otherwise, the same either way (through a chunk the env runner cut, and a new episode)."""
    import gymnasium as gym
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    frame = lambda v: np.full((84, 84), v, np.uint8)  # noqa: E731
    connector = atari.StackFrames(space, gym.spaces.Discrete(6), num_frames=4)
    assert connector.observation_space.shape == (84, 84, 4)

    def episode(values):
        return SingleAgentEpisode(observations=[frame(v) for v in values],
                                  actions=[0] * (len(values) - 1),
                                  rewards=[0.0] * (len(values) - 1), observation_space=space,
                                  action_space=gym.spaces.Discrete(6), len_lookback_buffer=0)

    def stacks(games, newest=None):
        kwargs = {} if newest is None else {"obs": [frame(v) for v in newest]}
        out = connector(rl_module=None, batch={}, episodes=games, **kwargs)["obs"]
        fresh = atari.StackFrames(space, gym.spaces.Discrete(6), num_frames=4)
        rebuilt = fresh(rl_module=None, batch={}, episodes=games)["obs"]
        assert out.dtype == torch.uint8 and torch.equal(out, rebuilt)
        return [out[i, 0, 0].tolist() for i in range(len(games))]

    young, old = episode([7]), episode(range(6))
    assert stacks([young, old]) == [[7, 7, 7, 7], [2, 3, 4, 5]]
    # the env runner hands on a running episode in chunks that look back k frames
    chunk = old.cut(len_lookback_buffer=4)
    young.add_env_step(frame(8), 0, 0.0)
    chunk.add_env_step(frame(6), 0, 0.0)
    assert stacks([young, chunk], newest=[8, 6]) == [[7, 7, 7, 8], [3, 4, 5, 6]]
    # game 0 ends and starts a new episode; game 1 steps on
    new = episode([9])
    chunk.add_env_step(frame(10), 0, 0.0)
    assert stacks([new, chunk], newest=[9, 10]) == [[9, 9, 9, 9], [4, 5, 6, 10]]
    actions = atari.ActionsToNumpy()(rl_module=None, batch={"actions": torch.tensor([3, 1])},
                                     episodes=[new, chunk])["actions"]
    assert isinstance(actions, np.ndarray) and actions.tolist() == [3, 1]


def test_evaluation_env_plays_whole_games_on_the_real_score():
    agent = DQNAgent(env="ALE/Pong-v5")
    env = make_eval_env(agent, render=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84, 4) and obs.dtype == np.uint8
    assert env.render().shape == (210, 160, 3)
    env.close()


def test_prioritized_replay_is_off_by_default_for_atari_and_on_when_asked_for():
    assert DQNAgent(env="ALE/Pong-v5").prioritized_replay is False  # Nature: uniform
    assert DQNAgent(env="ALE/Pong-v5", prioritized_replay=True).prioritized_replay is True
    assert DQNAgent(env="CartPole-v1").prioritized_replay is True


def test_prioritized_replay_of_stacked_frames_follows_the_td_errors():
    buffer = atari.FrameStackPrioritizedEpisodeReplayBuffer(capacity=1000, num_frames=4,
                                                           alpha=1.0)
    buffer.add([_episode(10)])
    # new steps share the top priority: uniform draws, weights 1, frames stacked as always
    first = buffer.sample(200, n_step=1, gamma=0.5, beta=0.4)
    assert {float(s.extra_model_outputs["weights"][0]) for s in first} == {1.0}
    for sample in first[:20]:
        t = sample.t_started
        assert list(sample.get_observations(0)[0, 0]) == atari.stack_indices(t, 4)
        assert sample.get_rewards(0) == t + 1
    assert len({s.t_started for s in first}) == 10
    # the learner reports TD errors for the drawn steps: step 7's is 100x the others'
    buffer.update_priorities(np.array([100.0 if s.t_started == 7 else 1.0 for s in first]),
                             "default_policy")
    drawn = buffer.sample(2000, n_step=1, gamma=0.5, beta=1.0)
    share = np.mean([s.t_started == 7 for s in drawn])
    assert share == pytest.approx(100 / 109, abs=0.03)  # p^alpha / sum, alpha 1
    weights = {s.t_started: float(s.extra_model_outputs["weights"][0]) for s in drawn}
    assert weights[7] == pytest.approx(0.01, rel=1e-6)  # (N P)^-beta / max weight, beta 1
    assert max(w for t, w in weights.items() if t != 7) == pytest.approx(1.0)


def test_rollout_fragment_must_hold_n_step():
    with pytest.raises(ValueError, match="rollout_fragment_length"):
        DQNAgent(env="CartPole-v1", n_step=3, rollout_fragment_length=1)


@pytest.mark.slow
def test_pong_run_trains_evaluates_whole_games_and_replays(workdir, store_uri, capsys):
    """A short real Pong run: learning on stacked single frames, an evaluation game on the real
    score with a GIF, and `trainyard eval` playing its checkpoint."""
    from conftest import REPO, runs_of
    from trainyard.cli import main

    job = REPO / "agents" / "configs" / "dqn_pong_fast.yaml"
    assert main(["run", str(job), "-o", "resources.gpus_per_learner=0",
                 "-o", "agent.learning_starts=500", "-o", "stop.env_steps=1500",
                 "-o", "evaluation.episodes=1", "-o", "evaluation.max_steps=400",
                 "-o", "tracking.system_metrics=false"]) == 0
    client, runs = runs_of(store_uri, "atari")
    run = runs[0]
    metrics = run.data.metrics
    assert metrics["train/loss"] >= 0 and np.isfinite(metrics["train/q_mean"])
    # a cut 400-step game of Pong: the score is a whole number between -21 and 21
    assert -21 <= metrics["eval/return_mean"] <= 21
    assert metrics["eval/return_mean"] == int(metrics["eval/return_mean"])
    assert metrics["eval/episode_len_mean"] == 400
    gifs = [a.path for a in client.list_artifacts(run.info.run_id, "videos")]
    assert len(gifs) == 1 and gifs[0].endswith(".gif")
    capsys.readouterr()
    assert main(["eval", run.info.run_id, "--episodes", "1", "--epsilon", "0"]) == 0
    assert "ALE/Pong-v5, checkpoint at" in capsys.readouterr().out


def test_flickering_frames_are_blanked_at_the_asked_rate_and_keep_a_channel():
    from trainyard.agents.env_factory import make_env_creator

    agent = DQNAgent(env="ALE/Pong-v5", atari={"frame_stack": 1, "flicker": 0.5},
                     recurrent={"seq_len": 10, "burn_in": 2, "overlap": 5})
    env = make_env_creator(agent)({"num_envs": 2})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 84, 84, 1) and obs.dtype == np.uint8
    blank = []
    for _ in range(200):
        obs, *_ = env.step(np.array([0, 0]))
        blank += [not frame.any() for frame in obs]
    assert 0.4 < np.mean(blank) < 0.6          # Pong's screen is never all black by itself
    env.close()
    single = make_eval_env(agent)
    obs, _ = single.reset(seed=0)
    assert obs.shape == (84, 84, 1)
    blank = [not single.step(0)[0].any() for _ in range(200)]
    assert 0.4 < np.mean(blank) < 0.6
    single.close()


def test_the_q_module_acts_epsilon_greedy_without_leaving_train_mode():
    """AtariQModule's acting step: the greedy action at epsilon 0, uniform over all actions at
    epsilon 1, and the module's mode untouched (RLlib's eval/train switch is skipped: the
    Nature network has no dropout or batch norm)."""
    import gymnasium as gym
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from trainyard.agents.atari import AtariQModule
    from trainyard.agents.rl_config import build_config
    from trainyard.agents.spec import RLJob

    spec = RLJob.model_validate({"name": "x", "kind": "rl", "agent": {
        "env": "ALE/Pong-v5", "hidden": [64], "conv_filters": [[8, 8, 4], [8, 4, 2]]}})
    module = RLModuleSpec(module_class=AtariQModule,
                          observation_space=gym.spaces.Box(0, 255, (84, 84, 4), np.uint8),
                          action_space=gym.spaces.Discrete(6),
                          model_config=build_config(spec, 0).model_config).build()
    module.train()
    switches = []
    module.eval = lambda: switches.append("eval")  # RLlib's acting step would call it
    obs = {Columns.OBS: torch.randint(0, 256, (512, 84, 84, 4), dtype=torch.uint8)}
    greedy = module.compute_q_values(obs)["qf_preds"].argmax(-1)
    module.model_config["epsilon"] = 0.0  # (RLlib's module reads its schedule from here)
    assert torch.equal(module.forward_exploration(obs, t=0)[Columns.ACTIONS], greedy)
    assert not switches and module.training
    module.model_config["epsilon"] = [(0, 1.0), (100, 0.0)]  # at t=0: 1
    actions = module.forward_exploration(obs, t=0)[Columns.ACTIONS]
    counts = torch.bincount(actions, minlength=6)
    assert counts.min() > 50 and not torch.equal(actions, greedy)  # ~85 each of 6
    # the acting step's epsilon is RLlib's schedule at every step, past its end too
    from ray.rllib.utils.schedules.scheduler import Scheduler

    schedule = [(0, 1.0), (1000, 0.1), (5000, 0.02)]
    module.model_config["epsilon"] = schedule
    rllib = Scheduler(fixed_value_or_schedule=schedule, framework="torch")
    for t in (0, 1, 500, 999, 1000, 3000, 5000, 10**6):
        assert module._epsilon(t) == rllib.update(t), t  # the same float: coin tosses keep


def test_double_q_training_forward_matches_rllib_without_grad_through_next_obs():
    """AtariQModule's double-Q training forward gives RLlib's Q-values and the same gradients
    of the DQN loss, and builds no autograd graph for the next observations."""
    import gymnasium as gym
    import torch
    from ray.rllib.algorithms.dqn.dqn_learner import (
        QF_NEXT_PREDS,
        QF_PREDS,
        QF_TARGET_NEXT_PREDS,
    )
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import (
        DefaultDQNTorchRLModule,
    )
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from trainyard.agents.atari import AtariQModule
    from trainyard.agents.rl_config import build_config
    from trainyard.agents.spec import RLJob

    spec = RLJob.model_validate({"name": "x", "kind": "rl", "agent": {
        "env": "ALE/Pong-v5", "hidden": [32], "conv_filters": [[8, 8, 4], [8, 4, 2]],
        "double_q": True, "dueling": True}})
    torch.manual_seed(0)
    module = RLModuleSpec(module_class=AtariQModule,
                          observation_space=gym.spaces.Box(0, 255, (84, 84, 4), np.uint8),
                          action_space=gym.spaces.Discrete(6),
                          model_config=build_config(spec, 0).model_config).build()
    module.make_target_networks()
    with torch.no_grad():  # a target net that differs from the online one
        for p in module.get_target_network_pairs()[0][1].parameters():
            p.add_(0.1)
    frames = torch.randint(0, 256, (2, 32, 84, 84, 4), dtype=torch.uint8)
    batch = {Columns.OBS: frames[0], Columns.NEXT_OBS: frames[1],
             Columns.ACTIONS: torch.randint(0, 6, (32,))}

    def loss_and_grads(forward):
        module.zero_grad()
        out = forward(batch)
        best = out[QF_NEXT_PREDS].argmax(-1, keepdim=True)
        target = 0.99 * out[QF_TARGET_NEXT_PREDS].gather(-1, best).squeeze(-1)
        q = out[QF_PREDS].gather(-1, batch[Columns.ACTIONS][:, None]).squeeze(-1)
        torch.nn.functional.huber_loss(q, target.detach()).backward()
        return out, [p.grad.clone() for p in module.parameters() if p.grad is not None]

    ours, our_grads = loss_and_grads(module._forward_train)
    theirs, their_grads = loss_and_grads(
        lambda b: DefaultDQNTorchRLModule._forward_train(module, b))
    for key in (QF_PREDS, QF_NEXT_PREDS, QF_TARGET_NEXT_PREDS):
        assert torch.allclose(ours[key], theirs[key], atol=1e-5), key
    assert len(our_grads) == len(their_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(our_grads, their_grads,
                                                                 strict=True))
    assert not ours[QF_NEXT_PREDS].requires_grad and theirs[QF_NEXT_PREDS].requires_grad


def test_running_games_are_stored_as_lists_so_appending_a_chunk_costs_the_chunk():
    """RLlib appends each sampled chunk of a running game to its stored episode; a numpy'd
    episode is copied whole on every append (18.5 ms a 4-step chunk at 3,000 steps, measured),
    so the Atari env runners hand on list-backed episodes."""
    from trainyard.agents.rl_config import build_config
    from trainyard.agents.spec import RLJob

    spec = RLJob.model_validate({"name": "x", "kind": "rl", "agent": {"env": "ALE/Pong-v5"}})
    config = build_config(spec, 0)
    assert config.episodes_to_numpy is False
    assert not config.add_default_connectors_to_env_to_module_pipeline


@pytest.mark.parametrize("prioritized", [False, True])
def test_a_game_is_stored_as_lists_while_it_runs_and_as_one_array_once_it_ends(prioritized):
    import gymnasium as gym
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    kind = (atari.FrameStackPrioritizedEpisodeReplayBuffer if prioritized
            else atari.FrameStackEpisodeReplayBuffer)
    buffer = kind(capacity=10_000, num_frames=4)
    game = SingleAgentEpisode(observation_space=space, action_space=gym.spaces.Discrete(6))
    game.add_env_reset(np.zeros((84, 84), np.uint8))
    for chunk in range(3):
        for i in range(4):
            step = 4 * chunk + i + 1
            game.add_env_step(np.full((84, 84), step, np.uint8), 0, 1.0,
                              terminated=chunk == 2 and i == 3)
        nxt = game.cut(len_lookback_buffer=4) if not game.is_done else None
        buffer.add([game])
        stored = buffer.episodes[0]
        assert stored.is_numpy == (chunk == 2) and len(stored) == 4 * (chunk + 1)
        game = nxt
    frames = np.asarray(stored.get_observations(slice(None)))
    assert frames.shape == (13, 84, 84) and frames[:, 0, 0].tolist() == list(range(13))

"""Recurrent DQN's parts: the partially observed envs, ViZDoom scenarios, the sequence replay
buffer (grid starts, priorities, weights) and the sequence loss's n-step targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainyard.agents.env_factory import make_env_creator, make_eval_env
from trainyard.agents.envs import POMDP, check_env_id
from trainyard.agents.spec import DQNAgent, Recurrent


def test_cartpole_without_velocities_shows_position_and_angle_only():
    env = POMDP["CartPoleNoVelocity-v1"]({})
    obs, _ = env.reset(seed=3)
    assert obs.shape == (2,) and obs.dtype == np.float32
    full = env.unwrapped.state
    assert obs[0] == pytest.approx(full[0] / 0.5) and obs[1] == pytest.approx(full[2] / 0.05)
    assert check_env_id("CartPoleNoVelocity-v1") == "CartPoleNoVelocity-v1"


def test_recurrent_settings_are_checked_with_the_field_named():
    with pytest.raises(ValueError, match="agent.recurrent.burn_in"):
        Recurrent(seq_len=10, burn_in=10)
    with pytest.raises(ValueError, match="agent.recurrent.overlap"):
        Recurrent(seq_len=10, overlap=12)


# ---- ViZDoom ----------------------------------------------------------------------------

def test_unknown_doom_scenario_names_the_close_ones():
    with pytest.raises(ValueError, match="Doom/defend_the_center"):
        check_env_id("Doom/defend_the_centre")


def test_doom_scenario_gives_one_grayscale_frame_plus_variable_planes():
    agent = DQNAgent(env="Doom/defend_the_center",
                     doom={"screen": [30, 40], "game_variables": ["HEALTH"]})
    env = make_env_creator(agent)({})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (30, 40, 2) and obs.dtype == np.uint8
    assert env.action_space.n == 3                       # turn left, turn right, attack
    assert np.all(obs[..., 1] == 255)                     # full health
    assert obs[..., 0].std() > 0                          # a picture, not a blank
    total, done, steps = 0.0, False, 0
    while not done:
        obs, reward, terminated, truncated, _ = env.step(2)  # stand and shoot
        total, steps, done = total + reward, steps + 1, terminated or truncated
    assert terminated and steps > 10                     # the monsters get it in the end
    env.close()


def test_doom_shaping_and_scale_apply_to_training_only():
    settings = {"shaping": {"HEALTH": 1.0}, "reward_scale": 0.01, "screen": [30, 40]}
    agent = DQNAgent(env="Doom/health_gathering", doom=settings)
    train_env, eval_env = make_env_creator(agent)({}), make_eval_env(agent)
    rewards = {}
    for name, env in (("train", train_env), ("eval", eval_env)):
        env.reset(seed=1)
        rewards[name] = [env.step(0)[1] for _ in range(5)]
        env.close()
    # the scenario pays +1 per tic alive: 4 per step with frame skip 4
    assert rewards["eval"][0] == pytest.approx(4.0)
    assert rewards["train"][0] == pytest.approx(0.04)     # scaled (health unchanged)


def test_flickering_doom_blanks_whole_observations_at_the_rate_asked():
    agent = DQNAgent(env="Doom/health_gathering",
                     doom={"screen": [30, 40], "game_variables": ["HEALTH"], "flicker": 0.5})
    env = make_env_creator(agent)({})
    obs, _ = env.reset(seed=3)
    blank = [not obs.any()]
    for _ in range(200):
        obs, _, terminated, truncated, _ = env.step(2)
        blank.append(not obs.any())
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    assert 0.4 < np.mean(blank) < 0.6  # the rest are pictures (a full-health plane at least)
    steady = DQNAgent(env="Doom/health_gathering", doom={"screen": [30, 40]})
    env = make_env_creator(steady)({})
    env.reset(seed=3)
    assert all(env.step(2)[0].any() for _ in range(50))
    env.close()


def test_doom_eval_env_renders_rgb_frames():
    agent = DQNAgent(env="Doom/basic", doom={"screen": [30, 40]})
    env = make_eval_env(agent, render=True)
    obs, _ = env.reset(seed=0)
    picture = env.render()
    assert obs.shape == (30, 40, 1)
    assert picture.shape == (120, 160, 3) and picture.dtype == np.uint8
    env.close()


# ---- sequence replay --------------------------------------------------------------------

def _episode(length: int, start: float = 0.0, terminated: bool = True):
    import gymnasium as gym
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    episode = SingleAgentEpisode(observation_space=gym.spaces.Box(-1e6, 1e6, (1,)),
                                 action_space=gym.spaces.Discrete(2))
    episode.add_env_reset(observation=np.array([start], np.float32))
    for t in range(length):
        episode.add_env_step(np.array([start + t + 1], np.float32), 0, 1.0,
                             terminated=terminated and t == length - 1,
                             extra_model_outputs={"state_out": np.zeros(2, np.float32)})
    return episode


def test_sequences_start_on_the_overlap_grid_and_follow_priorities():
    from trainyard.agents.recurrent import SequenceReplayBuffer

    buffer = SequenceReplayBuffer(1000, seq_len=8, overlap=4, alpha=1.0)
    buffer.add([_episode(40, start=0.0), _episode(40, start=1000.0)])
    assert buffer.num_sequences() == 20                 # starts 0, 4, ..., 36 of each
    sampled = buffer.sample(64 * 8, beta=0.4)
    assert len(sampled) == 64
    starts = {int(s.get_observations(0)[0]) % 1000 for s in sampled}
    assert starts <= set(range(0, 40, 4))
    assert all(len(s) == min(8, 40 - int(s.get_observations(0)[0]) % 1000) for s in sampled)
    # the first episode's sequences become 100x likelier than the second's
    buffer.update_priorities(np.array([1.0 if s.get_observations(0)[0] < 1000 else 0.01
                                       for s in sampled]))
    for episode, ts, idx in buffer._indices:
        if ts % 4 == 0 and buffer._sum_segment[idx] == buffer._max_priority:
            buffer._sum_segment[idx] = 1.0 if episode == 0 else 0.01  # unsampled starts too
    # 1000 draws: each is a second-episode sequence with p ~ 0.01, so a sample without one
    # (max weight then below 1) has p ~ 0.99^1000 = 4e-5; with 200 draws it was 13%
    sampled = buffer.sample(1000 * 8, beta=1.0)
    first = sum(s.get_observations(0)[0] < 1000 for s in sampled)
    assert first > 950
    weights = [float(s.get_extra_model_outputs("weights")[0]) for s in sampled]
    assert max(weights) == pytest.approx(1.0) and min(weights) < 0.05  # rare ones weigh more


def test_uniform_sequence_replay_when_alpha_is_zero():
    from trainyard.agents.recurrent import SequenceReplayBuffer

    buffer = SequenceReplayBuffer(1000, seq_len=8, overlap=4, alpha=0.0)
    buffer.add([_episode(40, start=0.0), _episode(40, start=1000.0)])
    # Priorities that would skew a prioritized buffer 5:1 towards the first episode must not
    # change what an alpha-0 buffer samples next.
    warm = buffer.sample(40 * 8)
    buffer.update_priorities(np.array([5.0 if s.get_observations(0)[0] < 1000 else 1.0
                                       for s in warm]))
    sampled = buffer.sample(400 * 8)
    first = sum(s.get_observations(0)[0] < 1000 for s in sampled)
    assert 150 < first < 250


# ---- the sequence loss --------------------------------------------------------------------

class _Config:
    gamma, burn_in_len, double_q, td_error_loss_fn = 0.5, 1, False, "mse"


def test_sequence_loss_builds_n_step_targets_along_the_sequence():
    from ray.rllib.algorithms.dqn.dqn_learner import QF_NEXT_PREDS, QF_PREDS, QF_TARGET_NEXT_PREDS
    from ray.rllib.core.columns import Columns

    from trainyard.agents.recurrent import sequence_loss

    T = 5
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0]])
    terminated = torch.tensor([[False, False, False, True, False]])
    valid = torch.tensor([[True, True, True, True, False]])   # 4 steps, then padding
    q = torch.zeros(1, T, 2, requires_grad=True)
    next_q = torch.full((1, T, 2), 10.0)                        # bootstrap value 10
    batch = {Columns.ACTIONS: torch.zeros(1, T, dtype=torch.long), Columns.REWARDS: rewards,
             Columns.TERMINATEDS: terminated, Columns.LOSS_MASK: valid}
    fwd = {QF_PREDS: q, QF_TARGET_NEXT_PREDS: next_q, QF_NEXT_PREDS: next_q}
    loss, priorities, stats = sequence_loss(None, "m", _Config, batch, fwd, n_step=2, eta=1.0,
                                            value_bound=None)
    # t=1: 2 + 0.5*3 + 0.25*10 = 6; t=2: 3 + 0.5*4 (+ terminal: no bootstrap) = 5;
    # t=3: 4 (terminal); t=0 is burn-in: no loss
    expected = torch.tensor([6.0, 5.0, 4.0])
    assert loss.item() == pytest.approx(float((expected ** 2).mean()))
    assert priorities.tolist() == pytest.approx([6.0])        # eta 1: the max |TD|
    assert stats["seq_trained_steps_mean"].item() == 3
    clipped, *_ = sequence_loss(None, "m", _Config, batch, fwd, n_step=2, eta=1.0,
                                value_bound=1.0)
    # bootstrap clipped to 1: t=1 target 2 + 1.5 + 0.25 = 3.75
    assert clipped.item() == pytest.approx(float((torch.tensor([3.75, 5.0, 4.0]) ** 2).mean()))


def test_recurrent_module_explores_per_env_with_the_time_rank():
    import gymnasium as gym
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from trainyard.agents.recurrent import RecurrentQModule
    from trainyard.agents.rl_config import build_config
    from trainyard.agents.spec import RLJob

    job = RLJob(name="t", kind="rl", agent={"env": "CartPoleNoVelocity-v1", "hidden": [8],
                                            "epsilon_start": 1.0, "epsilon_end": 1.0,
                                            "recurrent": {"cell_size": 8}})
    config = build_config(job, seed=0)
    module = RLModuleSpec(module_class=RecurrentQModule,
                          observation_space=gym.spaces.Box(-1, 1, (2,), np.float32),
                          action_space=gym.spaces.Discrete(3),
                          model_config=config.model_config).build()
    assert isinstance(module, RecurrentQModule) and module.is_stateful()
    state = {k: torch.as_tensor(np.stack([v] * 4)) for k, v in
             module.get_initial_state().items()}
    out = module.forward_exploration({Columns.OBS: torch.zeros(4, 1, 2),
                                      Columns.STATE_IN: state}, t=0)
    assert out[Columns.ACTIONS].shape == (4, 1)
    assert set(out[Columns.STATE_OUT]) == set(state)


# ---- memory matters (slow) ----------------------------------------------------------------

@pytest.mark.slow
def test_memory_learns_cartpole_without_velocities(workdir, store_uri):
    """The recurrent agent, within a 25k env-step budget, balances the pole on positions alone
    far longer than a feed-forward agent can: the LSTM infers the velocities. The run ends at
    the first evaluation that reaches the bar. Evaluations seen (every 5k steps): 36 / 26 / 111
    / 98 (CI, 4 December: it failed the old bar of 120 at 20k), 30 / 24 / 125 / 163 / 82, and
    42 as the best of three evaluations at 15k: the take-off comes between 10k and 20k and
    single evaluations swing by 2x, hence the 25k budget and a bar of 100.

    The feed-forward control is not re-run here (it halved this test's time): with its own
    shipped settings it never passed 48 in 60k steps (best evaluations 31 at 20k, 43 at 30k;
    3 December; `-o agent.recurrent=null -o agent.batch_size=32 -o
    agent.training_intensity=8 -o agent.target_update_every=500`), so 100 is ~2x the most it
    showed."""
    from conftest import REPO, runs_of
    from trainyard.cli import main

    config = str(REPO / "agents" / "configs" / "rdqn_cartpole_novelocity.yaml")
    # the run ends at the first evaluation that reaches the bar (or at the budget)
    assert main(["run", config, "-o", "stop.env_steps=25k", "-o", "stop.eval_return_target=100",
                 "-o", "evaluation.every_iterations=5"]) == 0
    client, [run] = runs_of(store_uri, "recurrent")
    evals = client.get_metric_history(run.info.run_id, "eval/return_mean")
    assert max(m.value for m in evals) >= 100, [m.value for m in evals]
    # its replay is the prioritized sequence replay, and says so
    assert client.get_metric_history(run.info.run_id, "train/seq_priority_mean")

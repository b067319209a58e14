"""DQN throughput on Pong: trainyard's RLlib path against plain loops, all in one run.

(a) Sampling: env steps/s of trainyard's env runner (ale-py's vector env, single frames,
    the frame-stacking connector, RLlib's episodes, one Q-network forward per vector step)
    against a raw loop over ale-py's vector env with the same preprocessing (frames stacked in
    C++) and the same Q-network forward. Both with 4 games.
(b) Training at the Nature replay ratio (one batch-32 update per 4 env steps; Nature CNN, Adam,
    Huber loss, plain Q-learning): env steps/s of `trainyard`'s DQN (RLlib) against a
    single-file PyTorch DQN written here in CleanRL's style (one game through Gymnasium's
    Atari wrappers, a uint8 numpy replay, target network). Counted after learning starts.

Prints one line:

    pong dqn: sampling trainyard 1,900/s vs raw ALE 2,300/s (0.83x) | training trainyard
    60/s vs single-file 85/s (0.71x)

Run: .venv/bin/python tests/benchmarks/bench_dqn.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from rllib_loops import sampling_rate, training_rate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = "ALE/Pong-v5"
NUM_ENVS = 4
LEARNING_STARTS = 1_000


def nature_cnn(actions: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 32, 8, 4), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 4, 2),
        torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, 1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(3136, 512), torch.nn.ReLU(), torch.nn.Linear(512, actions))


def raw_sampling(seconds: float) -> float:
    """ale-py's vector env, frames stacked in C++, a greedy forward per vector step."""
    import ale_py

    env = ale_py.AtariVectorEnv(game="pong", num_envs=NUM_ENVS, stack_num=4, noop_max=30,
                                episodic_life=True, reward_clipping=True, use_fire_reset=True)
    q = nature_cnn(env.single_action_space.n)
    obs, _ = env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with torch.no_grad():
            actions = q(torch.as_tensor(obs).float() / 255.0).argmax(1).numpy()
        obs, *_ = env.step(actions)
        steps += NUM_ENVS
    env.close()
    return steps / (time.perf_counter() - start)


def _spec(**overrides):
    from trainyard.loader import load_spec

    options = {"resources.gpus_per_learner": 0, "agent.optimizer": "adam",
               "agent.optimizer_eps": 1e-8, "agent.lr": 1e-4, "agent.replay_capacity": 100_000,
               "agent.learning_starts": LEARNING_STARTS, **overrides}
    return load_spec(os.path.join(REPO, "agents/configs/dqn_pong.yaml"),
                     [f"{k}={v}" for k, v in options.items()]).spec


def _algo(spec):
    from ray.tune.registry import register_env

    from trainyard.agents.envs import make_env_creator
    from trainyard.agents.runner import _quiet_rllib, build_config

    _quiet_rllib()
    register_env(spec.agent.env, make_env_creator(spec.agent))
    return build_config(spec, 0).build_algo()


def trainyard_sampling(seconds: float) -> float:
    algo = _algo(_spec(**{"agent.learning_starts": 10**9}))
    rate = sampling_rate(algo, seconds)
    algo.stop()
    return rate


def trainyard_training(seconds: float) -> float:
    algo = _algo(_spec())
    rate = training_rate(algo, seconds, LEARNING_STARTS)
    algo.stop()
    return rate


def single_file_training(seconds: float) -> float:
    """CleanRL-style DQN: one env, stacked uint8 frames in a numpy replay, one update of 32
    every 4 steps, target network, Adam, Huber loss."""

    from trainyard.agents.atari import make_single_env
    from trainyard.agents.envs import AtariSettings

    env = make_single_env(ENV, AtariSettings(), training=True, stack=True)
    actions = env.action_space.n
    q, target = nature_cnn(actions), nature_cnn(actions)
    target.load_state_dict(q.state_dict())
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-4)
    size = 100_000
    obs_buf = np.zeros((size, 4, 84, 84), np.uint8)
    next_buf = np.zeros((size, 4, 84, 84), np.uint8)
    act_buf, rew_buf, done_buf = np.zeros(size, np.int64), np.zeros(size, np.float32), \
        np.zeros(size, np.float32)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    step, start, start_step = 0, None, 0
    while start is None or time.perf_counter() - start < seconds:
        chw = np.moveaxis(obs, -1, 0)
        if rng.random() < max(0.1, 1 - step / 100_000):
            action = int(env.action_space.sample())
        else:
            with torch.no_grad():
                action = int(q(torch.as_tensor(chw[None]).float() / 255.0).argmax(1)[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        i = step % size
        obs_buf[i], next_buf[i] = chw, np.moveaxis(next_obs, -1, 0)
        act_buf[i], rew_buf[i], done_buf[i] = action, reward, float(terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs
        step += 1
        if step > LEARNING_STARTS and step % 4 == 0:
            idx = rng.integers(0, min(step, size), 32)
            with torch.no_grad():
                best = target(torch.as_tensor(next_buf[idx]).float() / 255.0).max(1).values
                y = torch.as_tensor(rew_buf[idx]) + 0.99 * best * (1 - torch.as_tensor(
                    done_buf[idx]))
            chosen = q(torch.as_tensor(obs_buf[idx]).float() / 255.0).gather(
                1, torch.as_tensor(act_buf[idx])[:, None])[:, 0]
            loss = F.smooth_l1_loss(chosen, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 1_000 == 0:
                target.load_state_dict(q.state_dict())
        if step == LEARNING_STARTS + 500:
            start, start_step = time.perf_counter(), step
    env.close()
    return (step - start_step) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    seconds = parser.parse_args().seconds
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(2)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    raw = raw_sampling(seconds / 3)
    ours = trainyard_sampling(seconds / 3)
    plain = single_file_training(seconds)
    trained = trainyard_training(seconds)
    print(f"pong dqn: sampling trainyard {ours:,.0f}/s vs raw ALE {raw:,.0f}/s "
          f"({ours / raw:.2f}x) | training trainyard {trained:,.0f}/s vs single-file "
          f"{plain:,.0f}/s ({trained / plain:.2f}x)")


if __name__ == "__main__":
    main()

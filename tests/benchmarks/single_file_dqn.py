"""The single-file DQN that tests/benchmarks/bench_dqn.py measures trainyard against: what a
user would write (CleanRL's style), plain fp32 PyTorch, default memory format, no compile. It
does not change from run to run, so the benchmark's ratios stay comparable; and the shared
counter the benchmark reads both sides' progress through."""

from __future__ import annotations

import mmap

import numpy as np
import torch
import torch.nn.functional as F

ENV = "ALE/Pong-v5"
LEARNING_STARTS = 1_000
WARM = 500  # steps learned before the turns start (compilation, allocations)


class Counter:
    """Two float64 slots in a shared file: env steps so far, and ms per update."""

    def __init__(self, path: str):
        self.file = open(path, "r+b")
        self.map = mmap.mmap(self.file.fileno(), 16)

    def write(self, steps: float, update_ms: float = 0.0) -> None:
        self.map[:16] = np.array([steps, update_ms], np.float64).tobytes()

    def read(self) -> tuple[float, float]:
        steps, update_ms = np.frombuffer(self.map[:16], np.float64)
        return float(steps), float(update_ms)


def nature_cnn(actions: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 32, 8, 4), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 4, 2),
        torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, 1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(3136, 512), torch.nn.ReLU(), torch.nn.Linear(512, actions))


def mlp(inputs: int, actions: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(inputs, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, actions))


# -- the single-file loops (children) ------------------------------------------------------
def single_file(counter: Counter, game: str) -> None:
    """CleanRL-style DQN: one env, a numpy replay, an update of 32 every 4 steps (Pong: stacked
    uint8 frames, Nature CNN, Adam 1e-4; CartPole: a 64-64 MLP, Adam 5e-4), target network,
    Huber loss. Runs until killed."""
    import gymnasium as gym

    if game == "pong":
        from trainyard.agents.atari import make_single_env
        from trainyard.agents.envs import AtariSettings

        env = make_single_env(ENV, AtariSettings(), training=True, stack=True)
        shape, dtype, scale, lr, target_every = (4, 84, 84), np.uint8, 255.0, 1e-4, 1_000
        net = nature_cnn
    else:
        env = gym.make("CartPole-v1")
        shape, dtype, scale, lr, target_every = (4,), np.float32, 1.0, 5e-4, 500
        net = lambda actions: mlp(4, actions)  # noqa: E731
    actions = env.action_space.n
    q, target = net(actions), net(actions)
    target.load_state_dict(q.state_dict())
    optimizer = torch.optim.Adam(q.parameters(), lr=lr)
    size = 100_000
    obs_buf, next_buf = np.zeros((size, *shape), dtype), np.zeros((size, *shape), dtype)
    act_buf = np.zeros(size, np.int64)
    rew_buf, done_buf = np.zeros(size, np.float32), np.zeros(size, np.float32)
    rng = np.random.default_rng(0)
    layout = (lambda o: np.moveaxis(o, -1, 0)) if game == "pong" else (lambda o: o)
    obs, _ = env.reset(seed=0)
    step = 0
    while True:
        x = layout(obs)
        if rng.random() < max(0.1, 1 - step / 100_000):
            action = int(env.action_space.sample())
        else:
            with torch.no_grad():
                action = int(q(torch.as_tensor(x[None]).float() / scale).argmax(1)[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        i = step % size
        obs_buf[i], next_buf[i] = x, layout(next_obs)
        act_buf[i], rew_buf[i], done_buf[i] = action, reward, float(terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs
        step += 1
        if step > LEARNING_STARTS and step % 4 == 0:
            idx = rng.integers(0, min(step, size), 32)
            with torch.no_grad():
                best = target(torch.as_tensor(next_buf[idx]).float() / scale).max(1).values
                y = torch.as_tensor(rew_buf[idx]) + 0.99 * best * (1 - torch.as_tensor(
                    done_buf[idx]))
            chosen = q(torch.as_tensor(obs_buf[idx]).float() / scale).gather(
                1, torch.as_tensor(act_buf[idx])[:, None])[:, 0]
            loss = F.smooth_l1_loss(chosen, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % target_every == 0:
                target.load_state_dict(q.state_dict())
        if step >= LEARNING_STARTS + WARM:
            counter.write(step)

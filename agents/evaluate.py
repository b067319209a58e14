"""Evaluation episodes: the agent plays full episodes of its env with a small epsilon, on the
env's own (unclipped) rewards, optionally recorded as a GIF.

Used during training (every `evaluation.every_iterations`) and by `trainyard eval RUN_ID`.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

import numpy as np

# gymnasium draws the control tasks with pygame, which would look for a sound card
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    frames: list[np.ndarray] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {"eval/return_mean": statistics.fmean(self.returns),
                "eval/return_std": statistics.pstdev(self.returns),
                "eval/return_max": max(self.returns),
                "eval/episode_len_mean": statistics.fmean(self.lengths)}


def _frame(env, obs: np.ndarray) -> np.ndarray:
    """An RGB uint8 picture of the env now; small grids (MinAtar) are scaled up."""
    picture = np.asarray(env.render())
    if picture.dtype != np.uint8:
        picture = (np.clip(picture, 0.0, 1.0) * 255).astype(np.uint8)
    if picture.shape[0] < 64:
        scale = 64 // picture.shape[0] + 1
        picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    return picture


class Greedy:
    """The Q-network's best action for one observation at a time; a recurrent network's state
    is carried from step to step (`reset()` at each episode's start)."""

    def __init__(self, module):
        self.module = module
        self.stateful = module.is_stateful()
        self.reset()

    def reset(self) -> None:
        self.state = self.module.get_initial_state() if self.stateful else None

    def __call__(self, obs: np.ndarray) -> int:
        import torch
        from ray.rllib.core.columns import Columns

        obs = np.asarray(obs)
        obs = torch.as_tensor((obs.astype(np.float32) if obs.dtype == np.float64 else obs)[None])
        if not self.stateful:
            with torch.no_grad():
                return int(self.module.forward_inference({Columns.OBS: obs})[
                    Columns.ACTIONS][0])
        batch = {Columns.OBS: obs[:, None],  # [batch 1, time 1, ...]
                 Columns.STATE_IN: {k: torch.as_tensor(v)[None] for k, v in self.state.items()}}
        with torch.no_grad():
            out = self.module.forward_inference(batch)
        self.state = {k: v[0] for k, v in out[Columns.STATE_OUT].items()}
        return int(np.asarray(out[Columns.ACTIONS]).reshape(-1)[0])


def play(module, agent, episodes: int, epsilon: float, max_steps: int, seed: int,
         record: bool = False) -> EvalResult:
    """Play `episodes` full episodes of the agent spec's env; record the first one's frames
    when `record`."""
    from trainyard.agents.env_factory import make_eval_env

    env = make_eval_env(agent, render=record)
    record = record and getattr(env, "render_mode", None) == "rgb_array"
    rng = np.random.default_rng(seed)
    greedy = Greedy(module)
    result = EvalResult([], [])
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            greedy.reset()
            total, steps, done = 0.0, 0, False
            while not done and steps < max_steps:
                if record and episode == 0:
                    result.frames.append(_frame(env, obs))
                best = greedy(obs)  # a recurrent network sees every step, explored or not
                action = int(env.action_space.sample()) if rng.random() < epsilon else best
                obs, reward, terminated, truncated, _ = env.step(action)
                total, steps = total + float(reward), steps + 1
                done = terminated or truncated
            result.returns.append(total)
            result.lengths.append(steps)
    finally:
        env.close()
    return result

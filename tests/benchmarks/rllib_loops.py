"""The timed RLlib loops the DQN and Doom benchmarks share: an env runner sampling with
exploration, and full training iterations counted once learning has started."""

from __future__ import annotations

import time

STEPS = ("env_runners", "num_env_steps_sampled_lifetime")


def sampling_rate(algo, seconds: float) -> float:
    """Env steps/s of the algorithm's local env runner (episodes, connectors, the module's
    exploring forward), after a short warm-up."""
    runner = algo.env_runner
    runner.sample(num_timesteps=200, explore=True)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        episodes = runner.sample(num_timesteps=100, explore=True)
        steps += sum(len(e) for e in episodes)
    return steps / (time.perf_counter() - start)


def training_rate(algo, seconds: float, learning_starts: int) -> float:
    """Env steps/s of `algo.train()` iterations, timed from 500 steps after learning starts."""
    steps = 0
    while steps < learning_starts + 500:
        steps = algo.train()[STEPS[0]][STEPS[1]]
    start_steps, start = steps, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps = algo.train()[STEPS[0]][STEPS[1]]
    return (steps - start_steps) / (time.perf_counter() - start)

"""ViZDoom throughput: trainyard's sampling path against a raw ViZDoom loop, and recurrent-DQN
training, all in one run.

(a) Sampling: env steps/s of trainyard's env runner on `Doom/defend_the_center` (4 envs,
    RLlib's episodes, the recurrent Q-network's forward with its LSTM state per step) against
    a raw loop over 4 `vizdoom.DoomGame`s with the same preprocessing (frame skip 4, 160x120
    grayscale resized to 60x80 with OpenCV) and the same network's forward.
(b) Training: env steps/s of the full recurrent DQN (rdqn_doom_defend_center.yaml: sequences
    of 20, burn-in 5, prioritized sequence replay), counted after learning starts.

Prints one line:

    doom: sampling trainyard 900/s vs raw ViZDoom 1,100/s (0.82x) | recurrent DQN training
    60 env steps/s

Run: .venv/bin/python tests/benchmarks/bench_doom.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from rllib_loops import sampling_rate, training_rate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "agents/configs/rdqn_doom_defend_center.yaml")
NUM_ENVS = 4
LEARNING_STARTS = 1_000


def _spec(**overrides):
    from trainyard.loader import load_spec

    options = {"resources.envs_per_env_runner": NUM_ENVS,
               "agent.learning_starts": LEARNING_STARTS, **overrides}
    return load_spec(CONFIG, [f"{k}={v}" for k, v in options.items()]).spec


def _algo(spec):
    from ray.tune.registry import register_env

    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.rl_config import build_config, quiet_rllib

    quiet_rllib()
    register_env(spec.agent.env, make_env_creator(spec.agent))
    return build_config(spec, 0).build_algo()


def raw_sampling(seconds: float, module) -> float:
    """4 DoomGames stepped in turn, each frame resized with OpenCV, one batched LSTM forward
    per round (the same module trainyard samples with)."""
    import cv2
    import vizdoom as vzd
    from ray.rllib.core.columns import Columns

    games = []
    for seed in range(NUM_ENVS):
        game = vzd.DoomGame()
        game.load_config(os.path.join(vzd.scenarios_path, "defend_the_center.cfg"))
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.GRAY8)
        game.set_available_game_variables([vzd.GameVariable.AMMO2, vzd.GameVariable.HEALTH])
        game.set_seed(seed)
        game.init()
        game.new_episode()
        games.append(game)
    buttons = [[float(i == b) for i in range(3)] for b in range(3)]
    state = {k: torch.as_tensor(np.stack([v] * NUM_ENVS))
             for k, v in module.get_initial_state().items()}

    def observe(game):
        s = game.get_state()
        frame = cv2.resize(s.screen_buffer, (80, 60), interpolation=cv2.INTER_AREA)
        ammo, health = s.game_variables
        return np.stack([frame, np.full_like(frame, min(ammo / 50, 1) * 255),
                         np.full_like(frame, min(health / 100, 1) * 255)], axis=-1)

    obs = np.stack([observe(g) for g in games])
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with torch.no_grad():
            out = module.forward_exploration(
                {Columns.OBS: torch.as_tensor(obs)[:, None], Columns.STATE_IN: state}, t=0)
        state = out[Columns.STATE_OUT]
        actions = out[Columns.ACTIONS].reshape(-1).numpy()
        for i, game in enumerate(games):
            game.make_action(buttons[int(actions[i])], 4)
            if game.is_episode_finished():
                game.new_episode()
            obs[i] = observe(game)
        steps += NUM_ENVS
    for game in games:
        game.close()
    return steps / (time.perf_counter() - start)


def trainyard_sampling(seconds: float):
    algo = _algo(_spec(**{"agent.learning_starts": 10**9}))
    return sampling_rate(algo, seconds), algo


def trainyard_training(seconds: float) -> float:
    algo = _algo(_spec())
    rate = training_rate(algo, seconds, LEARNING_STARTS)
    algo.stop()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    seconds = parser.parse_args().seconds
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    torch.set_num_threads(2)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ours, algo = trainyard_sampling(seconds / 3)
    raw = raw_sampling(seconds / 3, algo.env_runner.module)
    algo.stop()
    trained = trainyard_training(seconds)
    print(f"doom: sampling trainyard {ours:,.0f}/s vs raw ViZDoom {raw:,.0f}/s "
          f"({ours / raw:.2f}x) | recurrent DQN training {trained:,.0f} env steps/s")


if __name__ == "__main__":
    main()

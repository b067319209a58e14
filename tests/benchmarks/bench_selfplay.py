"""Self-play training speed: the shipped Connect Four and tic-tac-toe leagues on trainyard's
lean step against RLlib's own DQN step (`agent.lean_step: false`: its multi-agent episode
replay and learner connectors), same config, same seed, one after the other in one run.

Moves (env steps) per second of `algo.train()`, counted from 500 moves after learning starts
(2,000 moves here instead of the configs' 5,000 / 2,000, so the measurement starts sooner;
the update, the replay ratio and the opponents are the shipped ones; both steps bootstrap from
main's next board, `selfplay.targets: opponent`, since RLlib's step has no negamax targets).
Prints one line:

    selfplay: connect_four lean 180 vs RLlib's step 144 moves/s (1.25x) | tic_tac_toe ...

Run: .venv/bin/python tests/benchmarks/bench_selfplay.py [--seconds 60] [--game connect_four]
"""

from __future__ import annotations

import argparse
import os

from rllib_loops import training_rate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"connect_four": "agents/configs/selfplay_connect4.yaml",
           "tic_tac_toe": "agents/configs/selfplay_tictactoe.yaml"}
LEARNING_STARTS = 2_000


def rate(game: str, lean: bool, seconds: float) -> float:
    from ray.tune.registry import register_env

    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.rl_config import build_config, quiet_rllib
    from trainyard.loader import load_spec

    quiet_rllib()
    spec = load_spec(os.path.join(REPO, CONFIGS[game]),
                     [f"agent.learning_starts={LEARNING_STARTS}",
                      f"agent.lean_step={str(lean).lower()}",
                      "selfplay.targets=opponent"]).spec
    register_env(spec.agent.env, make_env_creator(spec.agent))
    algo = build_config(spec, 0).build_algo()
    try:
        return training_rate(algo, seconds, LEARNING_STARTS)
    finally:
        algo.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--game", choices=sorted(CONFIGS), action="append")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    parts = []
    for game in args.game or sorted(CONFIGS):
        lean, rllib = rate(game, True, args.seconds), rate(game, False, args.seconds)
        parts.append(f"{game} lean {lean:,.0f} vs RLlib's step {rllib:,.0f} moves/s "
                     f"({lean / rllib:.2f}x)")
    print("selfplay: " + " | ".join(parts))


if __name__ == "__main__":
    main()

"""Memory of the Atari replay: fill it through trainyard's sampling path, measure, extrapolate.

The Nature recipe keeps 1M transitions. trainyard stores each 84x84 uint8 frame once (stacks
are built when sampling), so a stored step should cost ~7 KiB and 1M steps ~7 GB. This fills a
buffer with N steps of Pong (random play, no learning), then reports the frames' bytes, the
buffer's whole footprint (frames, actions, rewards, episode objects: the growth of this
process's resident memory) and both per step and extrapolated to 1M. Prints one line:

    pong replay, 100,000 steps: frames 6.6 KiB/step, resident 7.1 KiB/step -> 1M steps 6.8 GiB

Run: .venv/bin/python tests/benchmarks/bench_replay_memory.py [--steps 100000]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    steps = parser.parse_args().steps
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import bench_dqn
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    # learning never starts: every training step only samples and adds to the replay
    spec = bench_dqn._spec(**{"agent.learning_starts": 10**9,
                              "agent.replay_capacity": steps * 2})
    algo = bench_dqn._algo(spec)
    algo.train()  # one iteration first: what the buffer holds so far is counted below
    buffer = algo.local_replay_buffer
    base_steps, base_memory = buffer.get_num_timesteps(), resident_bytes()
    while buffer.get_num_timesteps() < steps:
        algo.train()
    stored = buffer.get_num_timesteps()
    frames = sum(np.asarray(e.get_observations(slice(None))).nbytes for e in buffer.episodes)
    per_step = (resident_bytes() - base_memory) / (stored - base_steps)
    print(f"pong replay, {stored:,} steps: frames {frames / stored / 1024:.1f} KiB/step, "
          f"resident {per_step / 1024:.1f} KiB/step -> 1M steps "
          f"{per_step * 1e6 / 2**30:.1f} GiB")
    algo.stop()


if __name__ == "__main__":
    main()

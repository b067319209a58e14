"""DQN throughput: trainyard against single-file PyTorch loops, measured taking turns.

(a) Sampling on Pong: env steps/s of trainyard's env runner (ale-py's vector env, single
    frames, the frame-stacking connector, RLlib's episodes, one greedy Q-network forward per
    vector step) against a raw loop over ale-py's vector env with the same preprocessing
    (frames stacked in C++) and the same forward. 4 games each, in one process, taking turns.
(b) Training on Pong at the Nature replay ratio (one batch-32 update per 4 env steps; Nature
    CNN, Adam, Huber loss, plain Q-learning, 100k replay): trainyard's DQN as shipped (the lean
    step, fp32, channels-last weights) against the single-file DQN of single_file_dqn.py, as a user
    would (CleanRL's style: one game through Gymnasium's wrappers, a uint8 numpy replay,
    fp32, default memory format, no compile; it does not change from run to run). Then the
    same pairing with one lever changed at a time: RLlib's own step, weights in the default
    memory format, torch.compile, bf16.
(c) Training on CartPole: trainyard against a single-file DQN with the same network, ratio
    and settings (the MLP is tiny: per-step Python rules), trainyard's env runner stepping
    one CartPole (as the single file does) and then 4 (as Pong's 4 games).

Each pairing runs as two processes that take turns in `--window`-second slices, the other
frozen (SIGSTOP), after both have learned for 500 steps: this VM's speed drifts by tens of
percent over minutes, and turns put both sides in the same minutes. Prints one line:

    dqn: pong sampling 0.79x raw ALE (...) | pong training 1.13x single-file (trainyard
    123/s vs 109/s) | ms/update: ... | training with one lever changed: rllib step 0.70x, ...
    | cartpole training 0.33x single-file with one env, as it has (...), 0.63x with 4 envs (...)

and with --runners a second line, grown after each remote-runner pairing (sync with one
runner, then async sampling with each count).

Run: .venv/bin/python tests/benchmarks/bench_dqn.py [--seconds 40] [--quick] [--runners 1,2,4]
     [--cartpole: only the CartPole pairings]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from single_file_dqn import LEARNING_STARTS, WARM, Counter, nature_cnn, single_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_ENVS = 4
STEPS = ("env_runners", "num_env_steps_sampled_lifetime")
# The single-file loops' settings, pinned on trainyard's side too (the shipped configs are
# tuned to learn, and may move away from them): the same math on both sides.
SAME = {"agent.replay_capacity": 100_000, "agent.learning_starts": LEARNING_STARTS,
        "agent.batch_size": 32, "agent.training_intensity": 8, "agent.n_step": 1,
        "agent.epsilon_start": 1.0, "agent.epsilon_end": 0.1, "agent.epsilon_steps": 100_000,
        "agent.optimizer": "adam", "agent.optimizer_eps": 1e-8, "agent.grad_clip": "null"}
PONG = {**SAME, "resources.gpus_per_learner": 0, "agent.lr": 1e-4,
        "agent.target_update_every": 1_000, "agent.precision": "fp32"}
LEVERS = {"rllib step": {"agent.lean_step": "false"},
          "default memory format": {"agent.channels_last": "false"},
          "torch.compile": {"agent.compile": "true"},
          "bf16": {"agent.precision": "bf16"}}
CARTPOLE = {**SAME, "agent.prioritized_replay": "false", "agent.dueling": "false",
            "agent.double_q": "false", "agent.hidden": "[64, 64]", "agent.lr": 5e-4,
            "agent.target_update_every": 500}


def trainyard(counter: Counter, game: str, overrides: dict) -> None:
    """trainyard's DQN from the shipped config with `overrides`, `algo.train()` until killed."""
    import ray
    from ray.tune.registry import register_env

    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.rl_config import build_config, quiet_rllib
    from trainyard.loader import load_spec

    job = "dqn_pong.yaml" if game == "pong" else "dqn_cartpole.yaml"
    spec = load_spec(os.path.join(REPO, "agents", "configs", job),
                     [f"{k}={v}" for k, v in overrides.items()]).spec
    # a logical CPU per remote runner and one for the driver: 4 runners take turns on the 2
    # cores rather than wait forever for CPUs Ray would not hand out
    ray.init(num_cpus=max(2, 1 + spec.resources.env_runners), include_dashboard=False,
             logging_level="ERROR")
    quiet_rllib()
    register_env(spec.agent.env, make_env_creator(spec.agent))
    algo = build_config(spec, 0).build_algo()
    step = algo.training_step

    def counted_step():
        # counted after every training step (16 env steps on Pong), not every iteration
        # (RLlib runs training steps for seconds per `train()`: too coarse for 2 s turns)
        out = step()
        steps = algo.metrics.peek(STEPS, default=0)
        if steps >= LEARNING_STARTS + WARM:
            counter.write(steps)
        return out

    algo.training_step = counted_step
    while True:
        algo.train()


# -- turns (parent) ------------------------------------------------------------------------
class Child:
    def __init__(self, *args: str):
        handle, self.path = tempfile.mkstemp(prefix="bench_dqn_")
        os.write(handle, bytes(16))
        os.close(handle)
        env = {**os.environ, "OMP_NUM_THREADS": "2", "RAY_AUTH_MODE": "disabled"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", self.path, *args],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.counter = Counter(self.path)
        self.steps = self.seconds = 0.0

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"benchmark child {self.proc.args[3:]} exited early")
        return self.counter.read()[0] > 0

    def signal(self, sig) -> None:
        os.killpg(self.proc.pid, sig)  # the child and its Ray processes

    def turn(self, window: float) -> None:
        before = self.counter.read()[0]
        self.signal(signal.SIGCONT)
        began = time.perf_counter()
        time.sleep(window)
        self.signal(signal.SIGSTOP)
        self.seconds += time.perf_counter() - began
        self.steps += self.counter.read()[0] - before

    def rate(self) -> float:
        return self.steps / max(self.seconds, 1e-9)

    def close(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()
        os.unlink(self.path)


def turns(a: Child, b: Child, seconds: float, window: float) -> tuple[float, float]:
    """Both warm up side by side; then they take turns, each `seconds` in all."""
    while not (a.ready() and b.ready()):
        time.sleep(1)
    a.signal(signal.SIGSTOP)
    b.signal(signal.SIGSTOP)
    while a.seconds < seconds:
        a.turn(window)
        b.turn(window)
    return a.rate(), b.rate()


def update_times(rounds: int = 8, block: int = 10) -> dict[str, float]:
    """Median ms per Pong update (batch 32, random frames) of the single-file update and of
    trainyard's learner with each kernel lever, interleaved in blocks in this one process so
    that all see the same minutes."""
    import gymnasium as gym
    from ray.rllib.core import DEFAULT_MODULE_ID

    from trainyard.agents.lean_dqn import LeanUpdate
    from trainyard.agents.rl_config import build_config
    from trainyard.loader import load_spec

    frames = torch.randint(0, 256, (2, 32, 4, 84, 84), dtype=torch.uint8)
    actions = torch.randint(0, 6, (32,))
    q, target = nature_cnn(6), nature_cnn(6)
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-4)

    def plain() -> None:
        with torch.no_grad():
            y = 0.99 * target(frames[1].float() / 255.0).max(1).values
        chosen = q(frames[0].float() / 255.0).gather(1, actions[:, None])[:, 0]
        loss = F.smooth_l1_loss(chosen, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    batch = {"obs": frames[0].permute(0, 2, 3, 1), "next_obs": frames[1].permute(0, 2, 3, 1),
             "actions": actions, "rewards": torch.zeros(32), "discounts": torch.full((32,), .99)}
    variants = {"single-file": plain}
    for name, change in {"trainyard": {}, **LEVERS}.items():
        if name == "rllib step":
            continue  # a training-step lever, not a kernel one
        spec = load_spec(os.path.join(REPO, "agents/configs/dqn_pong.yaml"),
                         [f"{k}={v}" for k, v in {**PONG, **change}.items()]).spec
        config = build_config(spec, 0)
        learner = config.build_learner(spaces={DEFAULT_MODULE_ID: (
            gym.spaces.Box(0, 255, (84, 84, 4), np.uint8), gym.spaces.Discrete(6))})
        update = LeanUpdate(learner, config)
        began = time.perf_counter()
        update(batch, 0)  # compiles, where asked
        if name == "torch.compile":
            variants["compile seconds"] = time.perf_counter() - began
        variants[name] = lambda update=update: update(batch, 0)
    compile_s = variants.pop("compile seconds", 0.0)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            began = time.perf_counter()
            for _ in range(block):
                run()
            times[name].append(1000 * (time.perf_counter() - began) / block)
    return {**{name: float(np.median(t)) for name, t in times.items()},
            "compile seconds": compile_s}


def sampling(seconds: float, window: float) -> tuple[float, float]:
    """Env steps/s of a raw loop over ale-py's vector env (frames stacked in C++, a greedy
    forward per vector step) and of trainyard's env runner (single frames, the stacking
    connector, RLlib's episodes, a greedy forward per vector step), both in this process,
    taking turns in `window`-second slices until each has had `seconds`."""
    import ale_py
    import ray
    from ray.tune.registry import register_env

    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.rl_config import build_config, quiet_rllib
    from trainyard.loader import load_spec

    env = ale_py.AtariVectorEnv(game="pong", num_envs=NUM_ENVS, stack_num=4, noop_max=30,
                                episodic_life=True, reward_clipping=True, use_fire_reset=True)
    q = nature_cnn(env.single_action_space.n)
    state = {"obs": env.reset(seed=0)[0]}

    def raw_slice(until: float) -> int:
        steps = 0
        while time.perf_counter() < until:
            with torch.inference_mode():
                actions = q(torch.as_tensor(state["obs"]).float() / 255.0).argmax(1).numpy()
            state["obs"], *_ = env.step(actions)
            steps += NUM_ENVS
        return steps

    # greedy, as the raw loop: every acting step runs the network (with epsilon near 1
    # trainyard's acting skips it for the exploring games)
    spec = load_spec(os.path.join(REPO, "agents/configs/dqn_pong.yaml"),
                     [f"{k}={v}" for k, v in {**PONG, "agent.learning_starts": 10**9,
                                              "agent.epsilon_start": 0.0,
                                              "agent.epsilon_end": 0.0}.items()]).spec
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    quiet_rllib()
    register_env(spec.agent.env, make_env_creator(spec.agent))
    algo = build_config(spec, 0).build_algo()
    runner = algo.env_runner

    def trainyard_slice(until: float) -> int:
        steps = 0
        while time.perf_counter() < until:
            steps += sum(len(e) for e in runner.sample(num_timesteps=100, explore=True))
        return steps

    raw_slice(time.perf_counter() + 1.0)  # warm-up
    trainyard_slice(time.perf_counter() + 1.0)
    totals = {"raw": [0, 0.0], "trainyard": [0, 0.0]}
    while totals["raw"][1] < seconds:
        for name, run in (("raw", raw_slice), ("trainyard", trainyard_slice)):
            began = time.perf_counter()
            totals[name][0] += run(began + window)
            totals[name][1] += time.perf_counter() - began
    env.close()
    algo.stop()
    ray.shutdown()
    return tuple(steps / took for steps, took in (totals["raw"], totals["trainyard"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=40.0,
                        help="seconds of turns each side gets per pairing")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per turn")
    parser.add_argument("--quick", action="store_true", help="no lever pairings")
    parser.add_argument("--cartpole", action="store_true",
                        help="only the CartPole pairings (one env, then 4)")
    parser.add_argument("--runners", type=lambda v: [int(n) for n in v.split(",")], default=[],
                        help="also pair remote-runner runs: sync with 1 runner, then async "
                        "sampling with each of these counts (e.g. 1,2,4)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.child:
        path, kind, game, *pairs = args.child
        counter = Counter(path)
        if kind == "single":
            single_file(counter, game)
        else:
            trainyard(counter, game, dict(p.split("=", 1) for p in pairs))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    def pair(game: str, overrides: dict) -> tuple[float, float]:
        plain = Child("single", game)
        ty = Child("trainyard", game, *(f"{k}={v}" for k, v in overrides.items()))
        try:
            plain_rate, ty_rate = turns(plain, ty, args.seconds, args.window)
            return ty_rate, plain_rate
        finally:
            plain.close()
            ty.close()

    line = "dqn:"
    if not args.cartpole:
        line = pong(args, pair)
    cart, cart_plain = pair("cartpole", CARTPOLE)
    line += ("" if args.cartpole else " |") + (
        f" cartpole training {cart / cart_plain:.2f}x single-file with one env, as it "
        f"has ({cart:,.0f} vs {cart_plain:,.0f}/s)")
    # RLlib's per-step costs are per vector step: 4 CartPoles a step, as Pong's 4 games
    cart, cart_plain = pair("cartpole", {**CARTPOLE, "resources.envs_per_env_runner": 4})
    line += f", {cart / cart_plain:.2f}x with 4 envs ({cart:,.0f} vs {cart_plain:,.0f}/s)"
    print(line, flush=True)
    if args.runners:
        runs = []
        for label, change in [("sync 1 runner", {"resources.env_runners": 1})] + [
                (f"async {n}", {"resources.env_runners": n, "agent.async_sampling": "true"})
                for n in args.runners]:
            ours, theirs = pair("pong", {**PONG, **change})
            runs.append(f"{label} {ours / theirs:.2f}x ({ours:,.0f}/s)")
            print("dqn: pong training with remote runners against single-file: "
                  + ", ".join(runs), flush=True)


def pong(args, pair) -> str:
    """The Pong figures: sampling against raw ALE, update times, training and its levers."""
    raw, ours = sampling(args.seconds / 2, args.window)
    ms = update_times()
    ty, plain = pair("pong", PONG)
    line = (f"dqn: pong sampling {ours / raw:.2f}x raw ALE ({ours:,.0f} vs {raw:,.0f}/s) | "
            f"pong training {ty / plain:.2f}x single-file (trainyard {ty:,.0f}/s vs "
            f"{plain:,.0f}/s) | ms/update: " + ", ".join(
                f"{name} {value:.1f}" for name, value in ms.items() if name != "compile "
                "seconds") + f" (compile {ms['compile seconds']:.0f} s)")
    if not args.quick:
        levers = []
        for name, change in LEVERS.items():
            if name != "bf16" or ms["bf16"] < ms["trainyard"]:  # (emulated bf16: skip)
                lever, lever_plain = pair("pong", {**PONG, **change})
                levers.append(f"{name} {lever / lever_plain:.2f}x")
        line += " | training with one lever changed: " + ", ".join(levers)
    return line


if __name__ == "__main__":
    main()

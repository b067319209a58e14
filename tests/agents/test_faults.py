"""RL runs survive env-runner faults: an env that raises, then (in the runner that replaced
it) hangs; a runner process killed, with its whole node: tests/test_multinode.py.

Env runners are separate processes, so each fault is decided inside the env: it fires once,
when its flag file exists (the env renames it away as it fires, so the restarted runner's env
goes on to the next fault, and then runs clean). The env is registered with Gymnasium in this
process only; trainyard carries its EnvSpec to the runner processes (its class travels by
value: the runners cannot import tests).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import ray
import ray.cloudpickle
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from conftest import CARTPOLE, runs_of
from trainyard.agents.envs import known_env_ids
from trainyard.cli import main

FAULTY_ENV = "TrainyardFaultyCartPole-v0"  # raises in step once, then hangs in step once

# Small and quick: 1,000 env steps per iteration, few learner updates per sampled step.
QUICK = ["resources.env_runners=1", "stop.env_steps=3000", "stop.minutes=3",
         "agent.learning_starts=500", "agent.training_intensity=2",
         "checkpoint.every_iterations=100", "fault_tolerance.restart_delay_s=1",
         "tracking.experiment=faults", "tracking.system_metrics=false"]


class FaultyCartPole(CartPoleEnv):
    """CartPole whose `step`, `crash_after` steps into the env's life, fires the first fault
    whose flag file exists: "raise" raises, "hang" never returns."""

    def __init__(self, faults: list[tuple[str, str]], crash_after: int = 300, **kwargs):
        super().__init__(**kwargs)
        self.faults, self.crash_after, self.steps = faults, crash_after, 0

    def step(self, action):
        self.steps += 1
        if self.steps >= self.crash_after:
            for fault, flag in self.faults:
                try:
                    os.rename(flag, f"{flag}.fired")  # only one env fires it
                except FileNotFoundError:
                    continue
                if fault == "hang":
                    time.sleep(3600)
                raise RuntimeError("injected env fault (tests/agents/test_faults.py)")
        return super().step(action)


@pytest.fixture
def faulty_env(workdir):
    """Register FAULTY_ENV with both flag files armed; yields their paths (raise, hang)."""
    flags = workdir / "raise.flag", workdir / "hang.flag"
    for flag in flags:
        flag.write_text("armed")
    gym.register(FAULTY_ENV, entry_point=FaultyCartPole, max_episode_steps=500,
                 kwargs={"faults": [("raise", str(flags[0])), ("hang", str(flags[1]))]})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    known_env_ids.cache_clear()
    yield flags
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    gym.registry.pop(FAULTY_ENV, None)
    known_env_ids.cache_clear()


def _run_args(*overrides: str) -> list[str]:
    argv = ["run", str(CARTPOLE)]
    for override in (*QUICK, *overrides):
        argv += ["-o", override]
    return argv


def _the_run(store_uri: str):
    client, runs = runs_of(store_uri, "faults")
    assert len(runs) == 1
    return client, runs[0]


def _check_recovered(store_uri: str) -> dict[str, list]:
    """The run finished, reached its env steps with steps that never repeat, and MLflow shows
    the restart; returns the fault metrics' histories."""
    client, run = _the_run(store_uri)
    assert run.info.status == "FINISHED"
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                                 key))
               for key in ("train/iteration", "faults/env_runner_restarts",
                           "faults/healthy_env_runners")}
    steps = [step for step, _ in history["train/iteration"]]
    assert steps == sorted(set(steps)) and steps[-1] >= 3000
    assert max(v for _, v in history["faults/env_runner_restarts"]) >= 1
    assert history["faults/healthy_env_runners"][-1][1] == 1  # back in service at the end
    assert int(run.data.tags["trainyard.faults.env_runner_restarts"]) >= 1
    return history


@pytest.mark.slow
def test_env_that_raises_then_hangs_is_restarted_each_time_and_the_run_finishes(faulty_env,
                                                                                 store_uri):
    started = time.monotonic()
    assert main(_run_args(f"agent.env={FAULTY_ENV}", "fault_tolerance.sample_timeout_s=5",
                          "fault_tolerance.hang_timeout_s=10")) == 0
    for flag in faulty_env:  # both faults fired, each once
        assert Path(f"{flag}.fired").exists() and not flag.exists()
    history = _check_recovered(store_uri)
    assert max(v for _, v in history["faults/env_runner_restarts"]) >= 2  # one per fault
    client, run = _the_run(store_uri)
    killed = client.get_metric_history(run.info.run_id, "faults/hung_env_runners_killed")
    assert max(m.value for m in killed) == 1
    print(f"env fault run (raise, then hang): {time.monotonic() - started:.0f} s; "
          f"restarts {history['faults/env_runner_restarts'][-1][1]:g}")

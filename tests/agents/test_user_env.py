"""A user's own Gymnasium env, named `module:EnvId`: found (not imported) when a spec loads,
imported from the working folder and checked against what DQN takes and Gymnasium's API
where the job runs or under `validate --check-env` (exit 2, file:line), built with
`agent.env_config`, and trained on remote env runners that import it themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import env_without_tracking, runs_of, write
from trainyard.loader import SpecError, load_spec

ENV_MODULE = '''
import gymnasium as gym
import numpy as np


class RepeatFirst(gym.Env):
    """The first observation shows a bit; the last of `length` steps pays 1 for repeating it."""

    def __init__(self, length: int = 3):
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.bit = 0, int(self.np_random.integers(2))
        return np.array([1.0, self.bit, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        reward = float(done and action == self.bit)
        return np.array([0.0, 0.0, self.t / self.length], np.float32), reward, done, False, {}


class Dicty(RepeatFirst):
    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Dict({"x": gym.spaces.Discrete(2)})


class WrongObs(RepeatFirst):
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(5, np.float32), {}  # not in its own observation space


gym.register("RepeatFirst-v0", entry_point=RepeatFirst)
gym.register("Dicty-v0", entry_point=Dicty)
gym.register("WrongObs-v0", entry_point=WrongObs)
'''


def _job(folder, module: str, env: str, extra: str = "") -> Path:
    write(folder / f"{module}.py", ENV_MODULE)
    return write(folder / "job.yaml", "name: mine\nkind: rl\nagent:\n  hidden: [32]\n"
                                      f"  env: \"{module}:{env}\"\n{extra}")


def test_a_user_env_loads_with_its_config(workdir):
    job = _job(workdir, "envs_ok", "RepeatFirst-v0", "stop: {env_steps: 100}\n")
    agent = load_spec(job, ["agent.env_config.length=5"], user_code=True).spec.agent
    assert agent.env == "envs_ok:RepeatFirst-v0" and agent.env_config == {"length": 5}
    from trainyard.agents.env_factory import make_eval_env

    env = make_eval_env(agent)
    env.reset(seed=0)
    assert [env.step(0)[2] for _ in range(5)] == [False] * 4 + [True]  # length 5 reached it


@pytest.mark.parametrize("module,env,expected", [
    ("envs_nomod", "RepeatFirst-v0", "cannot import module 'missing_mod'"),
    ("envs_typo", "RepeatFrst-v0", "registered no environment 'RepeatFrst-v0'; it registers: "
                                   "Dicty-v0, RepeatFirst-v0, WrongObs-v0"),
    ("envs_dict", "Dicty-v0", "observes Dict("),
    ("envs_api", "WrongObs-v0", "breaks the Gymnasium API"),
])
def test_a_broken_user_env_is_one_problem_at_the_env_line(workdir, module, env, expected):
    job = _job(workdir, module, env)
    if module == "envs_nomod":
        job.write_text(job.read_text().replace(f"{module}:", "missing_mod:"))
    with pytest.raises(SpecError) as caught:
        load_spec(job, user_code=True)
    [problem] = caught.value.problems
    assert problem.startswith("job.yaml:5: agent.env: ") and expected in problem


def test_a_bad_env_config_names_the_constructors_complaint(workdir):
    job = _job(workdir, "envs_kw", "RepeatFirst-v0")
    with pytest.raises(SpecError, match=r"job.yaml:5: agent.env: .*unexpected keyword argument "
                                        "'lenth'"):
        load_spec(job, ["agent.env_config.lenth=3"], user_code=True)


def test_validate_finds_the_module_without_running_it_and_check_env_runs_it(workdir, capsys):
    from trainyard.cli import main

    job = _job(workdir, "envs_marked", "WrongObs-v0")
    module = workdir / "envs_marked.py"
    module.write_text("open('imported.marker', 'w').close()\n" + module.read_text())
    assert main(["validate", str(job)]) == 0  # found, not imported: none of its code ran
    assert not (workdir / "imported.marker").exists()
    assert main(["validate", "--check-env", str(job)]) == 2
    assert "breaks the Gymnasium API" in capsys.readouterr().err
    assert (workdir / "imported.marker").exists()
    job.write_text(job.read_text().replace("envs_marked:", "envs_gone:"))
    assert main(["validate", str(job)]) == 2
    assert "agent.env: cannot find module 'envs_gone'" in capsys.readouterr().err


def test_env_config_is_refused_for_atari(workdir):
    job = write(workdir / "job.yaml", "name: p\nkind: rl\nagent:\n  env: ALE/Pong-v5\n"
                                      "  env_config: {frameskip: 2}\n")
    with pytest.raises(SpecError, match="agent.env_config is for Gymnasium envs .* agent.atari"):
        load_spec(job)


@pytest.mark.slow
def test_a_user_env_trains_on_a_remote_env_runner_and_is_evaluated_with_its_config(workdir):
    # The console script, run from the folder that holds the module, as a user runs it: the
    # remote env runner is another process that must import envs_run itself.
    job = _job(workdir, "envs_run", "RepeatFirst-v0",
               "resources: {env_runners: 1}\nstop: {env_steps: 1500}\n"
               "evaluation: {every_iterations: 1, episodes: 3}\n")
    script = Path(sys.executable).with_name("trainyard")
    out = subprocess.run([str(script), "run", str(job), "-o", "agent.env_config.length=4",
                          "-o", "tracking.experiment=mine"], cwd=workdir,
                         env=env_without_tracking(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, [run] = runs_of(f"sqlite:///{workdir / 'trainyard-runs' / 'mlflow.db'}", "mine")
    assert run.info.status == "FINISHED"
    # env_config reached the remote runner (training episodes) and the driver's evaluation
    assert run.data.metrics["train/episode_len_mean"] == 4.0
    assert run.data.metrics["eval/episode_len_mean"] == 4.0


def test_the_readme_memory_example_passes_gymnasiums_checker_and_pays_only_the_named_cue(
        monkeypatch, capsys):
    import gymnasium as gym
    import numpy as np

    from conftest import REPO
    from trainyard.cli import main

    monkeypatch.chdir(REPO / "examples")
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    assert main(["validate", "--check-env", "memory_cue.yaml"]) == 0, capsys.readouterr().err
    env = gym.make("CueRecall-v0", cues=4, delay=6)
    obs, _ = env.reset(seed=3)
    cue = int(np.argmax(obs[:4]))
    returns = []
    for action in (cue, (cue + 1) % 4):
        env.reset(seed=3)
        total, done, steps = 0.0, False, 0
        while not done:
            obs, reward, done, _, _ = env.step(action)
            total, steps = total + reward, steps + 1
            assert not obs[:4].any()  # the cue is never shown again
        returns.append((total, steps))
    assert returns == [(1.0, 7), (0.0, 7)]

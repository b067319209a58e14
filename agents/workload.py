"""The `rl` workload as the core sees it (entry point `trainyard.workloads`)."""

from __future__ import annotations

from trainyard.agents.spec import RLJob
from trainyard.workloads import Workload


def _train(spec, ctx):
    from trainyard.agents.runner import train  # RLlib only when training

    return train(spec, ctx)


def _storage(run_info):
    from pathlib import Path

    tags = run_info["tags"]
    return Path(tags["trainyard.storage_path"]) / tags["trainyard.storage_name"]


def _evaluate(spec, run_info, episodes, epsilon, video, opponent=None):
    from trainyard.agents.saved_run import evaluate_run, evaluate_selfplay
    from trainyard.spec import UserInputError

    storage = _storage(run_info)
    seed = int(run_info["tags"].get("trainyard.seed", 0))
    if spec.selfplay is not None:
        if video is not None:
            raise UserInputError("--video records single-agent episodes; a two-player game's "
                                 "agent is watched with trainyard play RUN_ID")
        return evaluate_selfplay(spec, storage, seed, episodes or spec.evaluation.episodes,
                                 opponent or spec.selfplay.opponents[-1])
    if opponent is not None:
        raise UserInputError(f"--opponent is for two-player games; {spec.agent.env} has no "
                             "opponent")
    epsilon = spec.evaluation.epsilon if epsilon is None else epsilon
    return evaluate_run(spec, storage, seed, episodes or spec.evaluation.episodes, epsilon,
                        video)


def _play(spec, run_info, human_first: bool) -> int:
    from trainyard.agents.saved_run import play_human
    from trainyard.spec import UserInputError

    if spec.selfplay is None:
        raise UserInputError(f"trainyard play is for two-player games; {spec.agent.env} is "
                             "played by the agent alone (trainyard eval RUN_ID --video)")
    return play_human(spec, _storage(run_info), human_first)


def _run_tags(spec: RLJob) -> dict[str, str]:
    return {"algo": spec.agent.algo, "env": spec.agent.env}


WORKLOAD = Workload(kind="rl", spec_model=RLJob, train=_train,
                    headline_metric="eval/return_mean",
                    run_tags=_run_tags, step_axis="env steps sampled", evaluate=_evaluate,
                    play=_play,
                    preload=("torch", "ray.rllib.algorithms.dqn", "trainyard.agents.learner",
                             "trainyard.agents.lean_dqn", "trainyard.agents.env_factory"))

"""The `rl` workload as the core sees it (entry point `trainyard.workloads`)."""

from __future__ import annotations

from trainyard.agents.spec import ALGOS, RLJob
from trainyard.workloads import Workload


def _train(spec, ctx):
    from trainyard.agents.runner import train  # RLlib only when training

    return train(spec, ctx)


def _evaluate(spec, run_info, episodes, epsilon, video):
    from pathlib import Path

    from trainyard.agents.runner import evaluate_run

    tags = run_info["tags"]
    storage = Path(tags["trainyard.storage_path"]) / tags["trainyard.storage_name"]
    seed = int(tags.get("trainyard.seed", 0))
    epsilon = spec.evaluation.epsilon if epsilon is None else epsilon
    return evaluate_run(spec, storage, seed, episodes or spec.evaluation.episodes, epsilon,
                        video)


def _run_tags(spec: RLJob) -> dict[str, str]:
    return {"algo": spec.agent.algo, "env": spec.agent.env}


WORKLOAD = Workload(kind="rl", spec_model=RLJob, train=_train,
                    headline_metric="eval/return_mean", names={"agent.algo": ALGOS},
                    run_tags=_run_tags, step_axis="env steps sampled", evaluate=_evaluate)

"""The `rl` workload as the core sees it (entry point `trainyard.workloads`)."""

from __future__ import annotations

from trainyard.agents.spec import ALGOS, RLJob
from trainyard.workloads import Workload


def _train(spec, ctx):
    from trainyard.agents.runner import train  # RLlib only when training

    return train(spec, ctx)


def _run_tags(spec: RLJob) -> dict[str, str]:
    return {"algo": spec.agent.algo, "env": spec.agent.env}


WORKLOAD = Workload(kind="rl", spec_model=RLJob, train=_train,
                    headline_metric="train/return_mean", names={"agent.algo": ALGOS},
                    run_tags=_run_tags, step_axis="env steps sampled")

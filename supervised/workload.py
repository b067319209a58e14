"""The `supervised` workload as the core sees it (entry point `trainyard.workloads`)."""

from __future__ import annotations

from trainyard.supervised.spec import SupervisedJob
from trainyard.workloads import Workload


def _train(spec, ctx):
    from trainyard.supervised.trainer import train  # torch and Ray Train only when training

    return train(spec, ctx)


def _headline(spec: SupervisedJob) -> str:
    return {"vae": "val/elbo", "gan": "val/fid"}.get(spec.task, "val/accuracy")


def _run_tags(spec: SupervisedJob) -> dict[str, str]:
    return {"model": spec.model.arch, "dataset": spec.data.name, "task": spec.task,
            "headline": _headline(spec)}


WORKLOAD = Workload(kind="supervised", spec_model=SupervisedJob, train=_train,
                    headline_metric="val/accuracy", headline=_headline,
                    run_tags=_run_tags, step_axis="optimizer steps",
                    preload=("torch", "trainyard.supervised.trainer",
                             "trainyard.supervised.data"))

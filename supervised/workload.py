"""The `supervised` workload as the core sees it (entry point `trainyard.workloads`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from trainyard.supervised.spec import SupervisedJob
from trainyard.workloads import Workload


def _train(spec, ctx):
    from trainyard.supervised.trainer import train  # torch and Ray Train only when training

    return train(spec, ctx)


def _headline(spec: SupervisedJob) -> str:
    return {"vae": "val/elbo", "gan": "val/fid",
            "seq2seq": "val/exact_match"}.get(spec.task, "val/accuracy")


def _run_tags(spec: SupervisedJob) -> dict[str, str]:
    return {"model": spec.model.arch, "dataset": spec.data.name, "task": spec.task,
            "headline": _headline(spec)}


@contextlib.contextmanager
def _best_model(ref):
    """The run's best_model artifact, downloaded to a folder that lasts the block; ValueError
    (one line for the user) when the run has not saved one."""
    import tempfile

    from trainyard import tracking

    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = tracking.download(ref, "best_model", tmp)
        except Exception:  # MLflow's own exception types: the run has not saved one yet
            raise ValueError("no best_model artifact yet (it is saved when training "
                             "ends)") from None
        yield Path(folder)


def _translate(spec: SupervisedJob, ref, text: str, beam: int | None) -> str:
    if spec.task != "seq2seq":
        raise ValueError(f"a {spec.task} model does not translate; trainyard translate is for "
                         "sequence-to-sequence runs (data.name dates or parallel_text)")
    from trainyard.supervised.seq2seq_task import translate

    with _best_model(ref) as folder:
        return translate(folder, text, beam or spec.model.beam_size)


def _sample(spec: SupervisedJob, ref, count: int, seed: int):
    if spec.task not in ("vae", "gan"):
        raise ValueError(f"a {spec.task} model draws no images; trainyard sample is for "
                         "generative runs (model.arch vae or dcgan)")
    from trainyard.supervised.generative import draw

    with _best_model(ref) as folder:
        return draw(folder, count, seed)


def _preload(spec: SupervisedJob) -> tuple[str, ...]:
    # scikit-learn's datasets module takes ~0.9 s of a core to import; only the digits need it
    digits = ("sklearn.datasets",) if spec.data.name == "digits" else ()
    return ("torch", "trainyard.supervised.trainer", "trainyard.supervised.data", *digits)


WORKLOAD = Workload(kind="supervised", spec_model=SupervisedJob, train=_train,
                    headline_metric="val/accuracy", headline=_headline, translate=_translate,
                    sample=_sample,
                    run_tags=_run_tags, step_axis="optimizer steps",
                    preload=_preload)

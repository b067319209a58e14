"""Which Task a job is (the task classes import the loop's base class from tasks.py; this
module, imported by the loop and the driver, picks among them)."""

from __future__ import annotations

from trainyard.supervised.tasks import LanguageModel, Task


def make_task(spec, info=None) -> Task:
    """The task the spec describes (`spec.task`), for data described by `info` (DataInfo)."""
    task = spec.task
    if task == "lm":
        return LanguageModel(spec, info)
    if task == "seq2seq":
        from trainyard.supervised.seq2seq_task import Seq2SeqTask

        return Seq2SeqTask(spec, info)
    if task in ("vae", "gan"):
        from trainyard.supervised.gen_tasks import GANTask, VAETask

        return (VAETask if task == "vae" else GANTask)(spec, info)
    return Task(spec, info)

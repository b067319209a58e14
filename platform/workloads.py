"""The registry of workloads: how the core finds what can train a `kind` of job.

The core never imports `trainyard.supervised` or `trainyard.agents`. Each workload publishes a
`Workload` under the `trainyard.workloads` entry-point group (see pyproject.toml); a third-party
package can add a kind the same way.

The plug-in contract, for a new `kind`:

- `spec_model`: a `trainyard.spec.JobBase` subclass with `kind: Literal["yourkind"]`; loading,
  overrides, file:line errors, `validate` and sweeps come from the core.
- `train(spec, ctx)` runs one seed and returns its final metrics. `ctx` is a
  `trainyard.runs.RunContext`: `ctx.run` (the open MLflow run), `ctx.seed`,
  `ctx.logger()` (logs metrics at a step, skipping steps a resumed run already has),
  `ctx.emit(label, metrics)` (the terminal's progress line), `ctx.startup_seconds()`,
  `ctx.resume` and `ctx.restore_from` (start from a checkpoint), `ctx.report(...)` (a sweep
  trial's results to Tune), `ctx.storage_path`/`ctx.storage_name` (where checkpoints go).
  A Ray Train worker records through `trainyard.records.for_rank0(ctx)`: the same writes, done
  by the driver while it runs the job (flush them before a checkpoint is reported; the
  driver's `ctx.progress.settle()` waits for them before it reads the run back).
- Checkpoints: folders named `checkpoint_<step>` under `storage_path/storage_name`, written
  whole into a temporary folder and renamed, holding only data the loaders in
  `trainyard.checkpoints` can read without running code (msgpack, `weights_only` torch
  files, JSON); `trainyard resume` hands the newest one back as `ctx.restore_from`.
- Raise `trainyard.spec.UserInputError` for what the user must fix (one line, exit 2); any
  other exception fails the run (one line, exit 1, the traceback kept as an artifact).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainyard.runs import RunContext
    from trainyard.spec import JobBase


@dataclass(frozen=True)
class Workload:
    """What the core needs from a workload."""

    kind: str
    #: pydantic model of the whole job for this kind (a JobBase subclass)
    spec_model: type["JobBase"]
    #: trains one seed of a job: fn(spec, ctx) -> final metrics. Imported lazily by the
    #: workload so that validating a spec does not import torch or RLlib.
    train: Callable[["JobBase", "RunContext"], dict[str, float]]
    #: metric shown on the progress line and summarised at the end
    headline_metric: str
    #: what the runs of a job are filtered by in MLflow, as tags: fn(spec) -> {name: value},
    #: e.g. {"model": "resnet", "dataset": "digits"}; the core prefixes the names "trainyard."
    run_tags: Callable[["JobBase"], dict[str, str]] | None = None
    #: what the step of this kind's metrics counts (the x axis of its curves)
    step_axis: str = "step"
    #: `trainyard eval RUN_ID`: fn(spec, run_info, episodes, epsilon, video_path, opponent)
    #: -> metrics; None when the kind has no such thing
    evaluate: Callable[..., dict[str, float]] | None = None
    #: `trainyard play RUN_ID`: fn(spec, run_info, human_first) -> the person's result;
    #: None when the kind has no such thing
    play: Callable[..., int] | None = None
    #: `trainyard translate RUN_ID TEXT`: fn(spec, run_ref, text, beam or None) -> the
    #: model's output (ValueError: one line for the user); None when the kind has none
    translate: Callable[..., str] | None = None
    #: `trainyard sample RUN_ID`: fn(spec, run_ref, count, seed) -> (N, C, H, W) images in
    #: [0, 1] (ValueError: one line for the user); None when the kind has none
    sample: Callable[..., Any] | None = None
    #: the headline metric of one job when it depends on the job (fn(spec) -> metric name),
    #: e.g. a supervised VAE's val/elbo; None: `headline_metric` for every job of the kind
    headline: Callable[["JobBase"], str] | None = None
    #: modules `train` will import (torch, the engine, the workload's trainer), or fn(spec)
    #: -> those of one job: the CLI imports them in a background thread while Ray starts,
    #: which mostly waits
    preload: tuple[str, ...] | Callable[["JobBase"], tuple[str, ...]] = ()

    def preloads(self, spec: JobBase) -> tuple[str, ...]:
        return self.preload(spec) if callable(self.preload) else self.preload


def headline_of(spec: "JobBase") -> str:
    """The metric a job is judged by: its progress line's, its end summary's, a sweep's."""
    workload = get_workload(spec.kind)
    return workload.headline(spec) if workload.headline else workload.headline_metric


@cache
def workloads() -> dict[str, Workload]:
    """All installed workloads, by kind."""
    found: dict[str, Workload] = {}
    for point in entry_points(group="trainyard.workloads"):
        try:
            workload = point.load()
        except Exception as err:  # one broken plug-in must not take the others down
            warnings.warn(f"trainyard workload {point.name!r} ({point.value}) failed to load: "
                          f"{err}", stacklevel=2)
            continue
        found[workload.kind] = workload
    return found


def get_workload(kind: str) -> Workload:
    """The workload for `kind`; KeyError naming the known kinds if there is none."""
    known = workloads()
    if kind not in known:
        raise KeyError(f"unknown kind {kind!r}; installed kinds: {', '.join(sorted(known))}")
    return known[kind]

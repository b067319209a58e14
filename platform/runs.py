"""One run of a job, from a validated spec to a closed MLflow run: `run` and `resume`.

Ray is started by the caller (see `launcher.ray_session`); this module opens or reopens the
MLflow run, hands the workload a `RunContext`, prints progress, and records how it ended.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from trainyard import launcher, provenance, tracking
from trainyard.loader import LoadedSpec, dump_spec, validate_data
from trainyard.progress import ProgressChannel, ProgressPrinter
from trainyard.records import Records
from trainyard.spec import JobBase, flatten, one_line
from trainyard.tracking import TAG, RunRef
from trainyard.workloads import get_workload, headline_of


@dataclass
class RunContext:
    """What a workload gets for one run; picklable, it travels to Ray workers."""

    run: RunRef
    seed: int
    #: absolute folder (or URI) that holds this job's runs' checkpoints
    storage_path: str
    #: this run's folder name under storage_path (stable across resumes)
    storage_name: str
    resume: bool = False
    #: per metric, the last step already logged (a resumed run logs only later steps)
    skip_through: dict[str, int] = field(default_factory=dict)
    progress: ProgressChannel | None = None
    #: wall-clock time the command started (for perf/startup_s: command to first step)
    launched_at: float = field(default_factory=lambda: launcher.LAUNCHED_AT or time.time())
    #: inside a sweep trial: the metric Tune optimises (results then go to Tune too)
    tune_metric: str | None = None
    #: a checkpoint folder to start from (a sweep trial restored by Tune, or PBT's exploit)
    restore_from: str | None = None
    #: results handed to Tune that carried `tune_metric`
    tune_reports: int = 0
    #: inside a sweep trial: fn(ctx, metrics, checkpoint_folder) handing a result to Tune
    #: (handed in by the sweep, so that runs need not import it)
    reporter: Callable[..., None] | None = None

    def logger(self) -> tracking.RunLogger:
        return tracking.RunLogger(self.run, self.skip_through)

    def startup_seconds(self) -> float:
        """Seconds from the command's start to now; call it just before the first step."""
        return time.time() - self.launched_at

    def emit(self, label: str, metrics: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.emit(label, metrics)

    def report(self, metrics: dict[str, float], checkpoint_folder: str | None = None) -> None:
        """One iteration's (epoch's) metrics, and the checkpoint saved with it, for a sweep.

        Outside a sweep this does nothing. In a sweep it hands them to Tune, whose scheduler
        may stop the trial here (ASHA) or restart it from another trial's checkpoint (PBT).
        Called by the process that drives the job, never by a Train worker.
        """
        if self.reporter is not None:
            self.reporter(self, metrics, checkpoint_folder)


@dataclass
class RunOutcome:
    run_id: str
    run_name: str
    status: str
    metrics: dict[str, float]
    seconds: float


def _storage_path(spec: JobBase) -> str:
    path = spec.checkpoint.path
    return path if "://" in path else str(Path(path).resolve())


def _run_name(spec: JobBase, seed: int) -> str:
    return f"{spec.name}-seed{seed}" if len(spec.seeds) > 1 or seed != 0 else spec.name


def _execute(spec: JobBase, ctx: RunContext, label: str) -> RunOutcome:
    """Train, print progress, close the MLflow run with its status. Re-raises failures."""
    workload = get_workload(spec.kind)
    start, wall_start = time.monotonic(), time.time()
    ctx.progress = ProgressChannel()
    printer = ProgressPrinter(ctx.progress, f"[{label}]", headline_of(spec),
                              records=Records(ctx.run, ctx.skip_through))
    status = "FAILED"
    try:
        with tracking.SystemMetrics(ctx.run, spec.tracking.system_metrics, ctx.resume), printer:
            metrics = workload.train(spec, ctx)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"\n[{label}] interrupted; continue it with: trainyard resume {ctx.run.run_id}",
              file=sys.stderr, flush=True)
        raise
    except Exception as err:
        from trainyard.spec import UserInputError

        if isinstance(err, UserInputError):  # the user's to fix: the CLI says so, exit 2
            raise
        # the whole traceback stays with the run; the terminal gets one line (RunFailed)
        tracking.log_text(ctx.run, traceback.format_exc(), "logs/traceback.txt")
        raise RunFailed.of(label, ctx.run.run_id, err) from err
    finally:
        keep_ray_logs(ctx.run, wall_start)
        tracking.close_run(ctx.run, status, curves_of=curve_keys(ctx.run))
    return RunOutcome(ctx.run.run_id, label, status, metrics, time.monotonic() - start)


RAY_LOG_TAIL = 2 << 20  # bytes kept of each worker log: a chatty worker cannot fill the store


def keep_ray_logs(ref: RunRef, since: float) -> None:
    """Copy the output of this machine's Ray workers that wrote during the run (Ray Train
    workers and controller, env runners, trial actors) into the run's artifacts, logs/ray/:
    the terminal no longer shows it (launcher.VERBOSE), so the run keeps it."""
    folder = None if launcher.JOINED else launcher.session_logs()
    if folder is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        kept = 0
        for log in sorted(folder.glob("worker-*")):
            try:
                stat = log.stat()
                if log.suffix not in (".out", ".err") or stat.st_mtime < since:
                    continue
                with open(log, "rb") as source:
                    source.seek(max(0, stat.st_size - RAY_LOG_TAIL))
                    data = source.read()
            except OSError:  # a worker's file rotated away meanwhile
                continue
            if data.strip():
                Path(tmp, log.name).write_bytes(data)
                kept += 1
        if kept:
            tracking.log_artifacts(ref, tmp, "logs/ray")


class RunFailed(RuntimeError):
    """Training raised: the MLflow run is FAILED and holds the traceback (logs/traceback.txt).
    The CLI prints `str(self)`, one line, and exits with 1."""

    def __init__(self, message: str, run_id: str = ""):
        super().__init__(message)
        self.run_id = run_id

    def __reduce__(self):  # (pickled across Ray with its own arguments)
        return RunFailed, (str(self), self.run_id)

    @classmethod
    def of(cls, label: str, run_id: str, error: BaseException) -> "RunFailed":
        return cls(f"run {label} (MLflow run {run_id}) failed: {one_line(error)}; the "
                   "traceback is the run's artifact logs/traceback.txt (or rerun with "
                   "--verbose)", run_id)


def curve_keys(ref: RunRef) -> list[str]:
    """The metrics worth a plot: the train/val/eval curves a person looks at first."""
    try:
        keys = tracking.latest_metrics(ref)
    except Exception:  # a store that went away must not hide how the run ended
        return []
    wanted = ("train/loss", "val/loss", "val/accuracy", "train/accuracy", "eval/return_mean",
              "train/return_mean")
    return [key for key in wanted if key in keys]


def _spec_tags(spec: JobBase) -> dict[str, str]:
    """Tags to filter runs by in MLflow: what trained on what (the workload says) and the
    trainyard version."""
    try:
        installed = version("trainyard")
    except PackageNotFoundError:
        installed = "unknown"
    found = get_workload(spec.kind).run_tags
    own = found(spec) if found is not None else {}
    return {f"{TAG}version": installed, **{f"{TAG}{key}": str(v) for key, v in own.items()}}


def _description(text: str) -> str:
    """The run's MLflow description: the spec's own text, then the command line."""
    command = f"Command: `{provenance.command_line()}`"
    return f"{text.rstrip()}\n\n{command}" if text.strip() else command


def run_job(loaded: LoadedSpec, seeds: list[int] | None = None) -> list[RunOutcome]:
    """Run the job once per seed (in order), each seed its own MLflow run."""
    spec = loaded.spec
    uri = tracking.resolve_uri(spec.tracking.uri)
    experiment = spec.tracking.experiment or spec.name
    job_yaml = dump_spec(spec)
    storage = _storage_path(spec)
    outcomes = []
    for seed in seeds if seeds is not None else spec.seeds:
        name = _run_name(spec, seed)
        tags = {f"{TAG}kind": spec.kind, f"{TAG}job": spec.name, f"{TAG}seed": str(seed),
                f"{TAG}source": str(Path(loaded.source).resolve()),
                f"{TAG}overrides": " ".join(loaded.overrides),
                f"{TAG}storage_path": storage, **_spec_tags(spec)}
        params = {**flatten(spec.model_dump(mode="json")), "seed": seed}
        ref = tracking.open_run(uri, experiment, name, tags, params, job_yaml,
                                _description(spec.description))
        tracking.set_tags(ref, {f"{TAG}storage_name": ref.run_id})
        print(f"[{name}] MLflow run {ref.run_id} in experiment '{experiment}' ({uri})",
              flush=True)
        ctx = RunContext(ref, seed, storage, ref.run_id)
        outcomes.append(_execute(spec, ctx, name))
    return outcomes


def load_for_resume(run_id: str, uri: str | None = None) -> tuple[LoadedSpec, RunRef, dict]:
    """The spec and tags of a run to resume, from its own job.yaml artifact."""
    import yaml

    ref = RunRef(tracking.resolve_uri(uri), run_id)
    info = tracking.run_info(ref)
    data = yaml.safe_load(info["job_yaml"])
    loaded = validate_data(data, f"job.yaml of run {run_id}", user_code=True)
    return loaded, ref, info


def vet_checkpoints(info: dict[str, Any]) -> None:
    """Check the checkpoints `resume`, `eval` or `play` will load from this run, here in the
    driver before Ray starts: the RL run's latest checkpoint (msgpack only, no object arrays)
    and every supervised `state.pt` (plain tensors only). The loaders check again where they
    run; a refusal there is a failure inside Ray, here it is one line naming the file
    (UnsafeCheckpointError, exit 2)."""
    from trainyard import checkpoints

    tags = info["tags"]
    path, name = tags.get(f"{TAG}storage_path"), tags.get(f"{TAG}storage_name")
    if not path or not name or "://" in path:  # remote storage: the loaders' own checks stand
        return
    root = Path(path) / name
    committed = [f for f in checkpoints.list_folders(root) if (f / checkpoints.MARKER).is_file()]
    if committed:  # the RL loop's (Train's own folders carry no marker)
        checkpoints.vet_rllib_checkpoint(committed[-1])
    for state in sorted(root.rglob(checkpoints.STATE_FILE)):
        checkpoints.load_state(state.parent)


def resume_job(loaded: LoadedSpec, ref: RunRef, info: dict[str, Any]) -> RunOutcome:
    """Continue a stopped or killed run from its latest checkpoint, in the same MLflow run."""
    tags = info["tags"]
    seed = int(tags.get(f"{TAG}seed", loaded.spec.seeds[0]))
    skip = tracking.last_steps(ref)
    tracking.reopen_run(ref)
    tracking.set_tags(ref, {f"{TAG}resumed_by": provenance.command_line()})
    ctx = RunContext(ref, seed, tags[f"{TAG}storage_path"], tags[f"{TAG}storage_name"],
                     resume=True, skip_through=skip)
    print(f"[{info['name']}] resuming MLflow run {ref.run_id} from its latest checkpoint in "
          f"{ctx.storage_path}/{ctx.storage_name}", flush=True)
    return _execute(loaded.spec, ctx, info["name"])

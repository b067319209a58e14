"""MLflow tracking: the only module that imports mlflow.

The driver opens a run (params, tags, the resolved job.yaml), the training process logs
metrics through a `RunLogger` (rank 0 of a Ray Train job, or the RLlib driver loop), and the
driver closes the run with its learning curves. Everything goes through `MlflowClient` with an
explicit run id, so it works the same in the driver and in a Ray worker process.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainyard import provenance

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


DEFAULT_DIR = "trainyard-runs"
TAG = "trainyard."  # prefix of our own tags
_BATCH = 100  # MLflow accepts at most 100 params (1000 metrics) per log_batch call
# what the first MLflow run of a process imports beyond `mlflow` itself (its SQL store, 2.9 s):
# the CLI loads it while Ray starts
PRELOAD = ("mlflow.store.tracking.sqlalchemy_store",)


_READY: set[str] = set()  # sqlite stores this process has opened (their schema exists)


def _quiet() -> None:  # MLflow logs its store migrations at INFO; its import sets the level
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def store_client(uri: str) -> MlflowClient:
    """An MlflowClient for `uri`.

    The first time a process opens a local sqlite store it does so under a lock file beside
    the database: MLflow creates a fresh store's tables with a schema migration, and processes
    that start on a fresh store at once (two runs, sweep trials) otherwise fail in it.

    mlflow is imported where it is used: every Ray Train process unpickles a RunRef, so
    imports this module, and mlflow's import took 2.7 s of a core (pandas, scipy) in each.
    """
    from mlflow.tracking import MlflowClient
    _quiet()
    if uri.startswith("sqlite:///") and uri not in _READY:
        import fcntl

        database = Path(uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{database}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                MlflowClient(uri).search_experiments(max_results=1)  # creates the tables
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        _READY.add(uri)
    return MlflowClient(uri)


def default_uri() -> str:
    """sqlite store in ./trainyard-runs/ (its artifacts beside it)."""
    return f"sqlite:///{Path(DEFAULT_DIR, 'mlflow.db').resolve()}"


def resolve_uri(spec_uri: str | None) -> str:
    """The tracking URI: the spec's, else $MLFLOW_TRACKING_URI, else the local default.

    Relative sqlite/file paths are made absolute so Ray workers (other working directories)
    write to the same store.
    """
    uri = spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    elif "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def _artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a local sqlite store; else the server's."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent.joinpath("artifacts").as_uri()
    return None


@dataclass(frozen=True)
class RunRef:
    """A run that exists in a tracking store; picklable, so it can travel to Ray workers."""

    uri: str
    run_id: str


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of the named experiment, created if need be (another process may create it
    between our look and our create: then it is theirs we use)."""
    from mlflow.exceptions import MlflowException
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri))
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS" or \
                (found := client.get_experiment_by_name(name)) is None:
            raise
        return found.experiment_id


def open_run(uri: str, experiment: str, run_name: str, tags: dict[str, str],
             params: dict[str, Any], job_yaml: str, description: str = "") -> RunRef:
    """Create a run with its tags, params and the resolved job.yaml; return its reference."""
    from mlflow.entities import Param
    client = store_client(uri)
    experiment_id = _experiment_id(client, experiment, uri)
    all_tags = {
        "mlflow.source.name": "trainyard", "mlflow.user": getpass.getuser(),
        "mlflow.note.content": description,
        f"{TAG}git_commit": provenance.git_commit(), f"{TAG}host": socket.gethostname(),
        f"{TAG}hardware": provenance.hardware(),
        f"{TAG}command": provenance.command_line(),
        **{f"{TAG}version.{name}": v for name, v in provenance.versions().items()},
        **tags,
    }
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    ref = RunRef(uri, run.info.run_id)
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), _BATCH):
        client.log_batch(ref.run_id, params=items[start:start + _BATCH])
    log_text(ref, job_yaml, "job.yaml")
    return ref


def log_text(ref: RunRef, text: str, artifact_file: str) -> None:
    store_client(ref.uri).log_text(ref.run_id, text, artifact_file)


def log_artifact(ref: RunRef, path: str | Path, artifact_path: str | None = None) -> None:
    store_client(ref.uri).log_artifact(ref.run_id, str(path), artifact_path)


def log_artifacts(ref: RunRef, folder: str | Path, artifact_path: str | None = None) -> None:
    store_client(ref.uri).log_artifacts(ref.run_id, str(folder), artifact_path)


def log_image(ref: RunRef, image: Any, key: str, step: int) -> None:
    """An image (H, W[, 3] uint8) under `key` at `step`: the UI shows it on a step slider."""
    store_client(ref.uri).log_image(ref.run_id, image, key=key, step=step, synchronous=True)


def log_torch_model(ref: RunRef, model: Any, input_example: Any,
                    register_as: str | None = None) -> None:
    """Log `model` as the run's `model` artifact (MLflow pytorch flavour, with signature and
    input example); register it as a new version of `register_as` if given.

    Loading this flavour unpickles the module (that is how MLflow stores PyTorch models); the
    weights-only `best_model/state.pt` beside it is what trainyard itself loads.
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.as_tensor(input_example)).numpy()
    signature = infer_signature(input_example, output)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "model")
        # Explicit requirements: inferring them imports the model in a subprocess (~5 s).
        # The pickled module also needs trainyard itself importable where it is loaded.
        requirements = [f"torch=={version('torch').split('+')[0]}", f"numpy=={version('numpy')}"]
        mlflow.pytorch.save_model(model, str(path), signature=signature,
                                  input_example=input_example, pip_requirements=requirements)
        log_artifacts(ref, path, "model")
    if register_as:
        client = store_client(ref.uri)
        try:
            client.create_registered_model(register_as)
        except mlflow.exceptions.MlflowException:
            pass  # it exists: add a version
        source = f"{client.get_run(ref.run_id).info.artifact_uri}/model"
        client.create_model_version(register_as, source, run_id=ref.run_id)


def download(ref: RunRef, artifact_path: str, dst: str | Path) -> str:
    """Fetch an artifact of a run to `dst`; returns the local path."""
    import mlflow.artifacts
    _quiet()
    return mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=artifact_path,
                                               dst_path=str(dst), tracking_uri=ref.uri)


def set_tags(ref: RunRef, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag
    client = store_client(ref.uri)
    client.log_batch(ref.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def reopen_run(ref: RunRef) -> None:
    """Mark a stopped run as running again (resume)."""
    store_client(ref.uri).update_run(ref.run_id, status="RUNNING")


def close_run(ref: RunRef, status: str, curves_of: list[str] | None = None) -> None:
    """End the run: FINISHED | FAILED | KILLED, with a learning-curve PNG of `curves_of`."""
    if curves_of:
        try:
            _log_learning_curves(ref, curves_of)
        except Exception as err:  # a missing plot must not lose the run's status
            print(f"warning: could not draw the learning curves: {err}", file=sys.stderr)
    store_client(ref.uri).set_terminated(ref.run_id, status=status)


def set_status(ref: RunRef, status: str) -> None:
    """Set a run's final status (FINISHED | FAILED | KILLED) without touching its artifacts."""
    store_client(ref.uri).set_terminated(ref.run_id, status=status)


def get_tags(ref: RunRef) -> dict[str, str]:
    return dict(store_client(ref.uri).get_run(ref.run_id).data.tags)


def find_runs(uri: str, experiment: str, tags: dict[str, str]) -> list[RunRef]:
    """Runs of an experiment carrying all these tags, newest first."""
    client = store_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([found.experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"])
    return [RunRef(uri, run.info.run_id) for run in runs]


@contextlib.contextmanager
def _no_progress_bar():
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as flag

    before = os.environ.get(flag.name)
    os.environ[flag.name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(flag.name, None)
        else:
            os.environ[flag.name] = before


def run_info(ref: RunRef) -> dict[str, Any]:
    """What resume needs: the run's tags, status, and its resolved job.yaml text."""
    import mlflow.artifacts
    client = store_client(ref.uri)
    run = client.get_run(ref.run_id)
    # one small file: MLflow's progress bar would be the only output of a one-line refusal
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        path = mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path="job.yaml",
                                                   dst_path=tmp, tracking_uri=ref.uri)
        job_yaml = Path(path).read_text()
    return {"tags": dict(run.data.tags), "status": run.info.status, "job_yaml": job_yaml,
            "name": run.info.run_name, "metrics": dict(run.data.metrics)}


def last_steps(ref: RunRef) -> dict[str, int]:
    """The last step logged for each metric of a run (so a resumed run does not repeat)."""
    client = store_client(ref.uri)
    run = client.get_run(ref.run_id)
    return {key: max(m.step for m in client.get_metric_history(ref.run_id, key))
            for key in run.data.metrics}


def latest_metrics(ref: RunRef) -> dict[str, float]:
    """The last value of every metric of a run."""
    return dict(store_client(ref.uri).get_run(ref.run_id).data.metrics)


def metric_history(ref: RunRef, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, in step order."""
    history = store_client(ref.uri).get_metric_history(ref.run_id, key)
    return sorted((m.step, m.value) for m in history)


def _run_dict(run: Any) -> dict[str, Any]:
    info = run.info
    return {"run_id": info.run_id, "name": info.run_name, "status": info.status,
            "experiment_id": info.experiment_id, "start_ms": info.start_time,
            "end_ms": info.end_time, "params": dict(run.data.params),
            "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


def find_run(uri: str, run_id: str) -> dict[str, Any] | None:
    """A run as a plain dict (run_id, name, status, start_ms, end_ms, params, metrics = last
    values, tags), or None when the store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return _run_dict(store_client(uri).get_run(run_id))
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def search_runs(uri: str, experiment: str) -> list[dict[str, Any]] | None:
    """The active runs of an experiment (as `find_run` gives them), oldest first; None when
    the store has no experiment of that name."""
    client = store_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"],
                                  max_results=1000, page_token=token)
        runs += [_run_dict(run) for run in page]
        token = page.token
        if not token:
            return runs


def experiment_names(uri: str) -> list[str]:
    """Names of the store's active experiments (for error messages)."""
    return sorted(e.name for e in store_client(uri).search_experiments())


class SystemMetrics:
    """MLflow system metrics (CPU, memory, disk, network; GPU where one is) for a run's span.

    Sampled in a thread of the driver: it sees the driver's machine, which is every process of
    a local run. Off when the spec says `tracking.system_metrics: false`.
    """

    def __init__(self, ref: RunRef, enabled: bool, resume: bool = False,
                 interval_s: float = 5.0):
        self.monitor = None
        if enabled:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(ref.run_id, sampling_interval=interval_s,
                                                resume_logging=resume, tracking_uri=ref.uri)

    def __enter__(self) -> "SystemMetrics":
        if self.monitor is not None:
            self.monitor.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.monitor is not None:
            self.monitor.finish()


class RunLogger:
    """Logs metrics to one run. Used by the process that trains (rank 0 of a Train job).

    After a resume, points at or before the last step already in the store are dropped, so a
    metric's steps never repeat or go backwards.
    """

    def __init__(self, ref: RunRef, skip_through: dict[str, int] | None = None):
        self.ref = ref
        self.client = store_client(ref.uri)
        self.skip_through = dict(skip_through or {})

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        points = [Metric(key, float(value), now, step) for key, value in metrics.items()
                  if step > self.skip_through.get(key, -1)]
        if points:
            self.client.log_batch(self.ref.run_id, metrics=points)


def _log_learning_curves(ref: RunRef, keys: list[str]) -> None:
    from trainyard.media import plot_curves

    histories = {key: metric_history(ref, key) for key in keys}
    histories = {key: points for key, points in histories.items() if points}
    if histories:
        with tempfile.TemporaryDirectory() as tmp:
            log_artifact(ref, plot_curves(histories, Path(tmp, "learning_curves.png")), "plots")


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for a store."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port)]

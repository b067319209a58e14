"""What rank 0 of a Train job records in the run: metrics, tags, images, files, the model.

`Records` writes to MLflow itself. `SentRecords` has the same methods and hands each call to
the driver through the run's progress channel, where a `Records` of the driver's writes it.
`trainyard run` uses the second: opening MLflow took rank 0 ~1.7 s of a core before its first
step (importing it ~1.0 s, the sqlite store ~0.65 s) while the other ranks waited for it at the
first all-reduce, and the driver has had the run open since before Ray Train started. A sweep
trial has no channel, so its rank 0 writes itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from trainyard import tracking


class Records:
    """One run's writes, done in this process."""

    def __init__(self, ref: tracking.RunRef, skip_through: dict[str, int] | None = None):
        self.ref = ref
        self.skip_through = dict(skip_through or {})
        self.logger: tracking.RunLogger | None = None

    def begin(self, fit_id: str | None, step: int, tags: dict[str, Any],
              startup_s: float) -> None:
        """The train loop starts on rank 0: a fit's first start, or a restart after a worker
        failure. Ray Train then runs the loop again on every rank from the latest checkpoint:
        the epochs after it are trained again, and the points that the failed attempt already
        logged are dropped (a metric's steps never repeat). A restart is counted in the tag
        `trainyard.faults.worker_restarts` and the metric `faults/worker_restarts`."""
        known = tracking.get_tags(self.ref)
        if fit_id is None or known.get(f"{tracking.TAG}fit_id") != fit_id:
            tracking.set_tags(self.ref, {**tags, f"{tracking.TAG}fit_id": fit_id})
            self.logger = tracking.RunLogger(self.ref, self.skip_through)
            self.logger.log({"perf/startup_s": startup_s}, step=step)
            return
        restarts = int(known.get(f"{tracking.TAG}faults.worker_restarts", 0)) + 1
        tracking.set_tags(self.ref, {**tags, f"{tracking.TAG}faults.worker_restarts": restarts})
        tracking.RunLogger(self.ref).log({"faults/worker_restarts": restarts}, step=step)
        self.logger = tracking.RunLogger(
            self.ref, {**self.skip_through, **tracking.last_steps(self.ref)})

    def flush(self) -> None:
        """Every write so far is done (here, each one is done when called)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is None:  # a loop that never called begin (none of ours)
            self.logger = tracking.RunLogger(self.ref, self.skip_through)
        self.logger.log(metrics, step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        tracking.set_tags(self.ref, tags)

    def log_image(self, image: Any, key: str, step: int) -> None:
        tracking.log_image(self.ref, image, key, step)

    def log_text(self, text: str, artifact_file: str) -> None:
        tracking.log_text(self.ref, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        tracking.log_artifact(self.ref, path, artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        tracking.log_artifacts(self.ref, folder, artifact_path)

    def log_files(self, files: dict[str, bytes], artifact_path: str | None = None) -> None:
        """Files given by content, {path relative to artifact_path: bytes}."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                target = Path(tmp, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            tracking.log_artifacts(self.ref, tmp, artifact_path)

    def log_torch_model(self, model: Any, input_example: Any,
                        register_as: str | None = None) -> None:
        tracking.log_torch_model(self.ref, model, input_example, register_as)


def _read(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file()}


class SentRecords:
    """The methods of `Records`, each handed to the driver (see the module's docstring).
    Files travel by content: the driver may run on another node."""

    def __init__(self, channel: Any):
        self.channel = channel

    def _send(self, op: str, *args: Any) -> None:
        self.channel.record(op, args)

    def begin(self, fit_id, step, tags, startup_s) -> None:
        self._send("begin", fit_id, step, tags, startup_s)

    def flush(self) -> None:
        """Wait until the driver has done every write sent so far."""
        self.channel.flush()

    def log(self, metrics, step) -> None:
        # plain floats: a value left on a GPU would not load in a driver without one
        self._send("log", {key: float(value) for key, value in metrics.items()}, step)

    def set_tags(self, tags) -> None:
        self._send("set_tags", dict(tags))

    def log_image(self, image, key, step) -> None:
        self._send("log_image", image, key, step)

    def log_text(self, text, artifact_file) -> None:
        self._send("log_text", text, artifact_file)

    def log_artifact(self, path, artifact_path=None) -> None:
        self._send("log_files", _read(Path(path)), artifact_path)

    def log_artifacts(self, folder, artifact_path=None) -> None:
        self._send("log_files", _read(Path(folder)), artifact_path)

    def log_torch_model(self, model, input_example, register_as=None) -> None:
        self._send("log_torch_model", model, input_example, register_as)


def for_rank0(ctx: Any) -> Records | SentRecords:
    """Where rank 0's writes go: to the driver when it listens, else straight to MLflow."""
    if ctx.progress is not None:
        return SentRecords(ctx.progress)
    return Records(ctx.run, ctx.skip_through)

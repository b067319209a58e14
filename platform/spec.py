"""The job spec: the sections every job has, whatever it trains.

A job file is one YAML document. `kind` picks the workload (`supervised`, `rl`); each workload
subclasses `JobBase` with its own sections (`model`/`data`/`train`, or `agent`) and its own
`resources`, `stop` and `checkpoint`. Every field has a type, a default and a one-line doc;
unknown keys are errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from trainyard.sweep_space import parse_space_expr


class UserInputError(ValueError):
    """Input the user can fix (a data file that is missing or malformed, a bad source path),
    found while the job runs. The CLI prints its message and exits with code 2."""


def one_line(error: BaseException) -> str:
    """`Type: first line of the message` (or the type alone): an error as the CLI's one-line
    reports quote it, where the library's own message may run to many lines. A Ray Train
    worker group's failure is quoted by its first failed rank's own error: the group's message
    starts with a line that names none."""
    failures = getattr(error, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        rank = min(failures)
        cause = failures[rank]
        cause = getattr(cause, "cause", None) or cause  # Ray's wrapper of the worker's own
        return f"rank {rank}: {one_line(cause)}"
    message = str(error).strip()
    return f"{type(error).__name__}: {message.splitlines()[0]}" if message \
        else type(error).__name__


_SUFFIXES = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def _parse_count(value: Any) -> Any:
    """Accept counts written the way people write them: 2e6, 2_000_000, '10k', '2M'."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "").lower()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmb]?)", text)
        if match:
            number = float(match.group(1)) * _SUFFIXES.get(match.group(2), 1)
            if number.is_integer():
                return int(number)
        try:
            number = float(text)
        except ValueError:
            return value
        if number.is_integer():
            return int(number)
    return value


#: A count of things (steps, epochs, samples): a whole number, written as 2e6, '2M' or 2_000_000.
Count = Annotated[int, BeforeValidator(_parse_count)]


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors; numbers may fill string fields."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_default=True)


class Tracking(Section):
    """Where the run is recorded."""

    uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else a sqlite "
        "store in ./trainyard-runs/ of the working directory")
    experiment: str | None = Field(None, description="MLflow experiment; default: the job name")
    system_metrics: bool = Field(
        True, description="log CPU/memory/GPU utilisation with the run (MLflow system metrics)")


_RAY_OWN = {"CPU", "GPU", "memory", "object_store_memory"}


class Resources(Section):
    """What the job asks Ray for. Workloads add their worker counts."""

    cpus: int | None = Field(
        None, gt=0, description="logical CPUs the embedded Ray offers (default: this machine's "
        "cores); ignored when connecting to a cluster with --address")
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each worker (a Train worker, an env runner) asks "
        "for, e.g. {accelerator: 1}: it runs only on nodes started with them (`ray start "
        "--resources`, a cluster YAML's node type `resources:`)")

    @field_validator("custom")
    @classmethod
    def _check_custom(cls, custom: dict[str, float]) -> dict[str, float]:
        for name, amount in custom.items():
            if name in _RAY_OWN:
                raise ValueError(f"resources.custom.{name}: {name} is Ray's own resource; ask "
                                 "for it with the workload's cpus_/gpus_ fields")
            if amount <= 0:
                raise ValueError(f"resources.custom.{name} must be > 0 (got {amount:g})")
        return custom


class Stop(Section):
    """When the run ends; the first limit reached wins. Workloads add their own units."""

    minutes: float | None = Field(None, gt=0, description="wall-clock budget in minutes")


class Checkpoint(Section):
    """Periodic checkpoints, kept in the run's storage path and recorded in MLflow."""

    keep: int = Field(3, ge=1, description="how many recent checkpoints to keep")
    path: str = Field(
        "trainyard-runs/checkpoints",
        description="folder (or cloud URI) holding the runs' checkpoints; relative paths are "
        "taken from the working directory")


class Sweep(Section):
    """How `trainyard sweep` tunes the job."""

    metric: str = Field(..., description="metric to optimise, e.g. val/accuracy")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    num_samples: int = Field(8, ge=1, description="trials to draw from the space")
    search: Literal["random", "grid", "optuna"] = Field("random", description="search algorithm")
    scheduler: Literal["fifo", "asha", "pbt"] = Field("fifo", description="trial scheduler")
    max_concurrent: int | None = Field(None, ge=1, description="trials running at once")
    minutes: float | None = Field(None, gt=0, description="time budget for the whole sweep")
    seed: int = Field(0, ge=0, description="seed of the search itself (which points it draws)")
    grace_period: int = Field(
        2, ge=1, description="ASHA: reports (epochs, training iterations) a trial runs "
        "before it may be stopped")
    reduction_factor: int = Field(2, ge=2, description="ASHA: keep the best 1/N at each rung")
    perturbation_interval: int = Field(
        4, ge=1, description="PBT: reports between exploit/explore steps (trials checkpoint "
        "this often)")
    pbt_synch: bool = Field(
        False, description="PBT: wait for the whole population at each perturbation (every "
        "trial must fit at once) instead of perturbing each trial as it gets there")
    space: dict[str, str] = Field(
        default_factory=dict,
        description="dotted spec path -> uniform(a, b) | loguniform(a, b) | randint(a, b) | "
        "choice(x, y, ...) | grid(x, y, ...)")

    @field_validator("space", mode="before")
    @classmethod
    def _flow_style_hint(cls, space: Any) -> Any:
        if isinstance(space, dict) and any(v is None or ")" in str(k) for k, v in space.items()):
            raise ValueError("sweep.space: an expression was cut at a comma; inside { } quote "
                             "each one ({train.lr: 'choice(1e-3, 1e-4)'}) or write one path per "
                             "line")
        return space

    @field_validator("space")
    @classmethod
    def _check_space(cls, space: dict[str, str]) -> dict[str, str]:
        for path, expr in space.items():
            try:
                parse_space_expr(expr)
            except ValueError as err:
                raise ValueError(f"space[{path!r}]: {err}") from None
        return space

    @model_validator(mode="after")
    def _check_combination(self) -> "Sweep":
        if self.scheduler == "pbt" and self.search == "optuna":
            raise ValueError("sweep.scheduler pbt explores the space itself: use it with "
                             "search: random (the initial population is drawn at random)")
        if self.search == "grid":
            ranges = [p for p, e in self.space.items()
                      if parse_space_expr(e).function not in ("grid", "choice")]
            if ranges:
                raise ValueError(f"sweep.search grid tries every listed value, but "
                                 f"{', '.join(ranges)} is a range: write grid(a, b, ...) or "
                                 "use search: random")
        if not self.space:
            raise ValueError("sweep.space is empty: name at least one field to tune, e.g. "
                             "space: {train.lr: loguniform(1e-4, 1e-2)}")
        return self


class JobBase(Section):
    """Sections common to every job. Workloads subclass this with `kind` fixed."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="job name: letters, digits, '.', '_' or '-'")
    kind: str = Field(..., description="which workload runs the job: supervised | rl")
    description: str = Field("", description="free text shown with the run in MLflow")
    tracking: Tracking = Field(default_factory=Tracking, description="MLflow settings")
    seeds: list[int] = Field([0], min_length=1, description="one run per seed, in order")
    sweep: Sweep | None = Field(None, description="search space for `trainyard sweep`")

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: list[int]) -> list[int]:
        if any(seed < 0 for seed in seeds):
            raise ValueError("seeds must be non-negative integers")
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must not repeat")
        return seeds

    def warnings(self) -> list[str]:
        """What is allowed but probably not meant (printed by validate and run)."""
        return []

    def resource_demand(self) -> dict[str, float]:
        """Total Ray resources the job needs at once, e.g. {'CPU': 2, 'GPU': 1}."""
        raise NotImplementedError

    def data_cpus(self) -> int:
        """CPUs the job leaves for Ray Data (added to a local session's cores)."""
        return 0

    def input_paths(self) -> dict[str, str]:
        """Files or folders the job reads, by field ({'data.path': ...})."""
        return {}

    def check_inputs(self) -> None:
        """A job run on this machine reads its inputs here: one missing is the user's to fix,
        said before Ray starts (not ~15 s later from inside a worker)."""
        for field, path in self.input_paths().items():
            if not Path(path).exists():
                raise UserInputError(f"{field}: not found: {path} (relative paths start at "
                                     f"{Path.cwd()})")

    def worker_bundles(self) -> list[dict[str, float]]:
        """The shapes the job's Ray actors ask for, one per actor (the driver's share left
        out): what an autoscaler must fit."""
        return [{k: v for k, v in self.resource_demand().items() if v > 0}]

    def driver_demand(self) -> dict[str, float]:
        """The share of `resource_demand` used by the process that drives the job (a sweep
        trial's own actor); the rest is asked for by the actors it starts."""
        return {"CPU": 1}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values (they are one parameter)."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def with_values(data: dict, values: dict[str, Any]) -> dict:
    """A deep copy of `data` with each dotted path in `values` set: the inverse of `flatten`
    for the paths given (their parent sections must exist)."""
    import copy

    result = copy.deepcopy(data)
    for path, value in values.items():
        *parents, last = path.split(".")
        node = result
        for key in parents:
            node = node[key]
        node[last] = value
    return result

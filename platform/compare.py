"""`trainyard compare`: runs side by side in the terminal, and one metric's curves in a PNG.

One row per run (name, short id, status, wall time), a column for each param whose value
differs between the runs (equal ones say nothing), and the final and best value of each
headline metric (the workloads' own, or `--metric`). Reads the store through the tracking
module only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainyard import tracking
from trainyard.spec import UserInputError
from trainyard.tracking import TAG, RunRef
from trainyard.workloads import workloads

#: at most this many differing params get a column; the rest are named below the table
MAX_PARAM_COLUMNS = 10
_WIDTH = 24  # a cell longer than this is cut with "…"
# A metric whose name has one of these is better when lower (else higher).
_LOWER_IS_BETTER = ("loss", "error", "perplexity", "bits_per_char")
# A param string is read as a number only when written as Python writes a float (a point, or
# an exponent with its sign): a hex id or git sha such as "19264e54" is text.
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?|[+-]?\d+[eE][+-]\d+")


def best_mode(metric: str) -> str:
    """"min" for losses, errors and durations (`..._s`); "max" for the rest (accuracy,
    returns, rates such as `..._per_s`)."""
    name = metric.lower()
    duration = name.endswith("_s") and not name.endswith("per_s")
    return "min" if duration or any(part in name for part in _LOWER_IS_BETTER) else "max"


def load_runs(uri: str, run_ids: Sequence[str], experiment: str | None) -> list[dict[str, Any]]:
    """The runs named by id (in that order), or every run of `experiment` (oldest first)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserInputError(f"no tracking store at {uri}: pass the store with --tracking-uri "
                             "(or set MLFLOW_TRACKING_URI)")
    if experiment is not None:
        found = tracking.search_runs(uri, experiment)
        if found is None:
            known = ", ".join(tracking.experiment_names(uri)) or "none"
            raise UserInputError(f"no experiment {experiment!r} in {uri} (experiments: {known})")
        if not found:
            raise UserInputError(f"experiment {experiment!r} in {uri} has no runs")
        return found
    runs = []
    for run_id in run_ids:
        run = tracking.find_run(uri, run_id)
        if run is None:
            raise UserInputError(f"no run {run_id!r} in {uri}: check the run id (trainyard ui "
                                 "lists runs) and --tracking-uri")
        runs.append(run)
    return runs


def headline_metrics(runs: list[dict[str, Any]]) -> list[str]:
    """The headline metric of each kind among the runs (tag trainyard.kind), in run order."""
    known = workloads()
    found = []
    for run in runs:
        workload = known.get(run["tags"].get(f"{TAG}kind", ""))
        # a job whose headline depends on it (a VAE's val/elbo) names it in a tag
        metric = run["tags"].get(f"{TAG}headline") or (workload and workload.headline_metric)
        if metric and metric not in found:
            found.append(metric)
    return found


def differing_params(runs: list[dict[str, Any]]) -> list[str]:
    """Params whose value is not the same in every run (a missing one counts as a value).
    The sweep's own settings (`sweep.*`: its space, scheduler, sample count) describe how the
    trials were chosen, not how one trained: a trial row beside a plain run would show them
    all as differing, so they are left out."""
    keys = sorted({key for run in runs for key in run["params"] if not key.startswith("sweep.")})
    return [key for key in keys if len({run["params"].get(key) for run in runs}) > 1]


def _wall(run: dict[str, Any]) -> str:
    start = run["start_ms"]
    if not start:
        return MISSING
    end = run["end_ms"] or time.time() * 1000
    seconds = max(0, round((end - start) / 1000))
    text = (f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"
            if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m")
    return text if run["end_ms"] else f"{text}+"  # still running (or never closed)


MISSING = "-"


def _cell(value: Any) -> str:
    """A table cell: numbers (MLflow keeps params as strings) to 4 significant digits, one
    placeholder for a value that is not there."""
    if value is None or value in ("", "None", "null"):
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(text):
        return f"{float(text):.4g}"
    return _cut(text)


def _cut(text: str) -> str:
    return text if len(text) <= _WIDTH else text[:_WIDTH - 1] + "…"


def metric_summary(uri: str, run: dict[str, Any], metric: str,
                   mode: str) -> tuple[float | None, float | None]:
    """(final, best) of a metric in a run: the value at its last step, and the max or min of
    its whole history. (None, None) when the run never logged it."""
    if metric not in run["metrics"]:
        return None, None
    history = tracking.metric_history(RunRef(uri, run["run_id"]), metric)
    values = [value for _, value in history]
    best = (max if mode == "max" else min)(values) if values else None
    return run["metrics"][metric], best


def table(uri: str, runs: list[dict[str, Any]], metrics: list[str],
          modes: dict[str, str]) -> str:
    """The comparison as aligned text: a header, a rule, one line per run, notes."""
    params = differing_params(runs)
    shown, hidden = params[:MAX_PARAM_COLUMNS], params[MAX_PARAM_COLUMNS:]
    header = ["run", "id", "status", "wall", *shown]
    for metric in metrics:
        header += [f"{metric} final", f"{metric} best ({modes[metric]})"]
    rows = []
    for run in runs:
        # Name, id and status are text as they are: a cell is formatted once.
        row = [_cut(run["name"] or MISSING), run["run_id"][:8], run["status"], _wall(run)]
        row += [_cell(run["params"].get(key)) for key in shown]
        for metric in metrics:
            row += [_cell(value) for value in metric_summary(uri, run, metric, modes[metric])]
        rows.append(row)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
             .rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    equal = len({key for run in runs for key in run["params"]}) - len(params)
    if equal and len(runs) > 1:
        lines.append(f"({equal} param{'s' if equal > 1 else ''} with the same value in every "
                     "run not shown)")
    if hidden:
        lines.append(f"({len(hidden)} more params differ: {', '.join(hidden)})")
    return "\n".join(lines) + "\n"


def _step_axis(runs: list[dict[str, Any]]) -> str:
    known = workloads()
    axes = {known[kind].step_axis for run in runs
            if (kind := run["tags"].get(f"{TAG}kind")) in known}
    return axes.pop() if len(axes) == 1 else "step"


def plot(uri: str, runs: list[dict[str, Any]], metric: str, out: str | Path) -> Path | None:
    """A PNG of `metric` against its step for every run that logged it; None if none did."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = [(run, tracking.metric_history(RunRef(uri, run["run_id"]), metric))
                 for run in runs if metric in run["metrics"]]
    histories = [(run, points) for run, points in histories if points]
    if not histories:
        return None
    fig, axis = plt.subplots(figsize=(8, 4.5))
    for run, points in histories:
        steps, values = zip(*points, strict=True)
        axis.plot(steps, values, marker="." if len(steps) < 50 else None,
                  label=f"{run['name']} ({run['run_id'][:8]})")
    axis.set_title(metric)
    axis.set_xlabel(_step_axis(runs))
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    fig.tight_layout()
    path = Path(out).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(uri: str, run_ids: Sequence[str], experiment: str | None = None,
            metric: str | None = None, mode: str | None = None,
            out: str | Path = "compare.png") -> tuple[str, Path | None]:
    """The comparison table (text) and the plot's path (None when no run logged the metric).

    UserInputError for unknown runs or experiments, and for a metric no run logged.
    """
    if bool(run_ids) == (experiment is not None):
        raise UserInputError("compare needs run ids or --experiment NAME (one of the two)")
    runs = load_runs(uri, run_ids, experiment)
    logged = sorted({key for run in runs for key in run["metrics"]})
    if metric is not None:
        if metric not in logged:
            raise UserInputError(f"no run here logged metric {metric!r}; they log: "
                                 f"{', '.join(logged) or 'nothing'}")
        metrics = [metric]
    else:
        metrics = [key for key in headline_metrics(runs) if key in logged]
        if not metrics:
            raise UserInputError("these runs logged no headline metric; choose one with "
                                 f"--metric (they log: {', '.join(logged) or 'nothing'})")
    modes = {key: mode or best_mode(key) for key in metrics}
    return table(uri, runs, metrics, modes), plot(uri, runs, metrics[0], out)

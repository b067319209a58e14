"""The end of a sweep: one row per trial (its point, seed, how it ended, its metric), the
children's final states, mean +- std per configuration, the best configuration as a runnable
job YAML, and the parent run's artifacts (trials.csv, the plot) and terminal table."""

from __future__ import annotations

import csv
import numbers
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from trainyard import tracking
from trainyard.spec import JobBase, with_values
from trainyard.sweep_space import parse_space_expr
from trainyard.sweep_trial import COMPLETED, RUN_ID_KEY, TrialSetup, point_of, seed_of
from trainyard.tracking import TAG, RunRef

#: the seconds a result spent training (an epoch; an RL iteration)
TRAIN_SECONDS_KEYS = ("perf/epoch_s", "perf/iteration_s")
#: what the sweep keeps of each result it sees (besides the sweep's metric) for its summary
KEPT_RESULT_KEYS = ("training_iteration", "time_total_s", *TRAIN_SECONDS_KEYS, "config",
                    RUN_ID_KEY)


def trial_rows(grid, setup: TrialSetup, spec: JobBase, stopped: set,
               seen: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """One row per trial: its point, seed, how it ended, its final and best metric.

    A trial's curve is the results this process saw it report (`seen`, trial id -> results).
    Tune's own files are not the record: a trial that pauses and starts again (PBT's synch
    mode pauses every trial at each perturbation) has its result.json and progress.csv copied
    back from the sweep's storage, and whatever was reported since the last sync to storage is
    lost, all of it in a short sweep. Tune's files are read only where they hold more (a
    resumed sweep: this process saw only the results since the resume)."""
    metric, mode = spec.sweep.metric, spec.sweep.mode
    rows = []
    for result in grid:
        trial_id = Path(result.path).name if result.path else \
            (result.metrics or {}).get("trial_id", "")
        seen_here = seen.get(trial_id, [])
        frame = result.metrics_dataframe
        from_files = frame is not None and len(frame) > len(seen_here)
        reports = frame.to_dict("records") if from_files else seen_here
        # The row is the trial's last report: the values it trained with, the run it logged
        # to. Not Tune's `last_result` where the sweep saw one: a trial that PBT hands another
        # trial's checkpoint and that then has nothing left to train ends holding a copy of
        # that trial's last result, config and run id included.
        last = (result.metrics or {}) if from_files or not seen_here else seen_here[-1]
        config = last.get("config") or result.config or {}
        history = [r[metric] for r in reports if _number(r.get(metric))]
        train_s = sum(float(r[column]) for r in reports for column in TRAIN_SECONDS_KEYS
                      if _number(r.get(column)))
        # A trial that ended on its own tagged its run "completed" (see `close_children`).
        state = "failed" if result.error else "stopped early" if trial_id in stopped else ""
        rows.append({
            "trial_id": trial_id,
            "run_id": last.get(RUN_ID_KEY, ""),
            **{path: value for path, value in point_of(config, setup).items()},
            "seed": seed_of(config, setup),
            "state": state,
            "reports": int(last.get("training_iteration", 0) or 0),
            "final": history[-1] if history else None,
            "best": (max(history) if mode == "max" else min(history)) if history else None,
            "train_s": round(train_s, 2),
            "wall_s": round(float(last.get("time_total_s", 0.0) or 0.0), 2),
            "error": str(result.error).strip().splitlines()[-1][:500] if result.error else "",
        })
    return rows


def _number(value) -> bool:
    """A real number, not NaN (a result before the metric's first value; a CSV's blank)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


#: tag on a trial's run that its sweep's scheduler stopped it (see SweepMonitor.mark_stopped)
SCHEDULER_STOPPED = f"{TAG}stopped_by_scheduler"


def close_children(rows: list[dict], setup: TrialSetup, scheduler: str,
                    stopped: set) -> None:
    """Settle how each trial ended, and set its child run's status and why it stopped (a
    stopped trial's own process may be ended before it can say so)."""
    statuses = {"completed": "FINISHED", "stopped early": "KILLED", "failed": "FAILED"}
    for row in rows:
        refs = ([RunRef(setup.uri, row["run_id"])] if row["run_id"] else
                tracking.find_runs(setup.uri, setup.experiment,
                                   {f"{TAG}trial_id": row["trial_id"],
                                    f"{TAG}sweep_id": setup.parent_id}))
        if not refs:
            row["state"] = row["state"] or "failed"
            continue
        row["run_id"] = refs[0].run_id
        tags = tracking.get_tags(refs[0])
        by_scheduler = row["trial_id"] in stopped or tags.get(SCHEDULER_STOPPED) == "1"
        if not row["state"]:
            tag = tags.get(f"{TAG}stop_reason")
            row["state"] = "completed" if tag == COMPLETED else "stopped early"
        reason = {"completed": COMPLETED,
                  "stopped early": f"stopped early by {scheduler} after {row['reports']} reports"
                  if by_scheduler else "stopped before it finished (the sweep's "
                  "time budget ran out, or the sweep was interrupted)",
                  "failed": f"failed: {row['error']}"}[row["state"]]
        tracking.set_tags(refs[0], {f"{TAG}stop_reason": reason[:5000]})
        tracking.set_status(refs[0], statuses[row["state"]])


def summarise(rows: list[dict], setup: TrialSetup, spec: JobBase, wall: float,
              concurrent: int) -> dict[str, Any]:
    """Per-configuration mean +- std over seeds; the best configuration; the time split."""
    sweep = spec.sweep
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[p] for p in setup.paths), []).append(row)
    configs = []
    for key, members in groups.items():
        finals = [m["final"] for m in members if m["final"] is not None and m["state"] != "failed"]
        configs.append({
            **dict(zip(setup.paths, key, strict=True)),
            "seeds": len(members), "scored": len(finals),
            "mean": statistics.fmean(finals) if finals else None,
            "std": statistics.stdev(finals) if len(finals) > 1 else 0.0 if finals else None,
            "states": ", ".join(sorted({m["state"] for m in members})),
        })
    scored = [c for c in configs if c["mean"] is not None]
    best = (max if sweep.mode == "max" else min)(scored, key=lambda c: c["mean"]) \
        if scored else None
    count = {state: sum(r["state"] == state for r in rows)
             for state in ("completed", "stopped early", "failed")}
    train_s = sum(r["train_s"] for r in rows)
    return {"configs": configs, "best": best, "count": count, "wall_s": wall,
            "train_s": train_s, "trial_wall_s": sum(r["wall_s"] for r in rows),
            "concurrent": concurrent,
            "busy_fraction": train_s / (wall * concurrent) if wall > 0 else 0.0}


def best_job_yaml(setup: TrialSetup, spec: JobBase, best: dict) -> str:
    """The best configuration as a job file: `trainyard run best.yaml` reproduces it."""
    data = with_values(setup.base, {path: best[path] for path in setup.paths})
    header = (f"# Best configuration of sweep {setup.parent_id} ({spec.sweep.metric} "
              f"{best['mean']:.6g} +- {best['std']:.2g} over {best['scored']} seed(s)).\n"
              f"#   trainyard run best.yaml\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def log_summary(parent: RunRef, summary: dict, rows: list[dict], setup: TrialSetup,
                 spec: JobBase) -> None:
    sweep = spec.sweep
    metrics = {"sweep/trials": len(rows), "sweep/trials_completed": summary["count"]["completed"],
               "sweep/trials_stopped_early": summary["count"]["stopped early"],
               "sweep/trials_failed": summary["count"]["failed"],
               "perf/sweep_wall_s": summary["wall_s"], "perf/trials_train_s": summary["train_s"],
               "perf/trials_wall_s": summary["trial_wall_s"],
               "perf/sweep_busy_fraction": summary["busy_fraction"]}
    if summary["best"] is not None:
        metrics[f"sweep/best_{sweep.metric}"] = summary["best"]["mean"]
    tracking.RunLogger(parent).log(metrics, step=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_csv(folder / "trials.csv", rows)
        write_csv(folder / "configs.csv", summary["configs"])
        if summary["best"] is not None:
            (folder / "best.yaml").write_text(best_job_yaml(setup, spec, summary["best"]))
        _plot(folder / "metric_vs_params.png", rows, setup, spec)
        tracking.log_artifacts(parent, folder, "sweep")
    if summary["best"] is None:
        return
    summary["best_yaml"] = f"runs:/{parent.run_id}/sweep/best.yaml"
    if "://" not in setup.storage:  # also beside the sweep's checkpoints, ready to run
        local = Path(setup.storage).parent / "best.yaml"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(best_job_yaml(setup, spec, summary["best"]))
        summary["best_yaml"] = str(local)
    tracking.set_tags(parent, {f"{TAG}best_yaml": summary["best_yaml"], **{
        f"{TAG}best.{p}": str(summary["best"][p]) for p in setup.paths}})


def _plot(path: Path, rows: list[dict], setup: TrialSetup, spec: JobBase) -> None:
    """The final metric of each trial against each swept value, coloured by how it ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"completed": "tab:blue", "stopped early": "tab:orange", "failed": "tab:red"}
    exprs = {p: parse_space_expr(e) for p, e in spec.sweep.space.items()}
    fig, axes = plt.subplots(1, len(setup.paths), figsize=(4.5 * len(setup.paths), 3.6),
                             squeeze=False)
    for axis, swept in zip(axes[0], setup.paths, strict=True):
        numeric = exprs[swept].function in ("uniform", "loguniform", "randint") or all(
            isinstance(r[swept], (int, float)) and not isinstance(r[swept], bool) for r in rows)
        labels = sorted({str(r[swept]) for r in rows})
        for state, colour in colours.items():
            xs, ys = [], []
            for row in rows:
                if row["state"] == state and row["final"] is not None:
                    xs.append(row[swept] if numeric else labels.index(str(row[swept])))
                    ys.append(row["final"])
            if xs:
                axis.scatter(xs, ys, c=colour, label=state, alpha=0.8)
        if exprs[swept].function == "loguniform":
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(range(len(labels)), labels)
        axis.set_xlabel(swept)
        axis.set_ylabel(f"final {spec.sweep.metric}")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(summary: dict, rows: list[dict], spec: JobBase) -> None:
    sweep, count = spec.sweep, summary["count"]
    print(f"\nsweep done in {summary['wall_s']:.0f}s: {len(rows)} trials, "
          f"{count['completed']} completed, {count['stopped early']} stopped early, "
          f"{count['failed']} failed")
    paths = list(sweep.space)
    ordered = sorted((c for c in summary["configs"] if c["mean"] is not None),
                     key=lambda c: c["mean"], reverse=sweep.mode == "max")
    for config in ordered[:10]:
        values = "  ".join(f"{p}={_short(config[p])}" for p in paths)
        print(f"  {sweep.metric} {config['mean']:.4g} +- {config['std']:.2g} "
              f"(n={config['scored']})  {values}  [{config['states']}]")
    for row in rows:
        if row["state"] == "failed":
            print(f"  trial {row['trial_id']} failed: {row['error']}", file=sys.stderr)
    print(f"training filled {100 * summary['busy_fraction']:.0f}% of {summary['concurrent']} "
          f"trial slot(s) x {summary['wall_s']:.0f}s (trials trained {summary['train_s']:.0f}s "
          f"in all; the rest is Ray/Tune/trainer start-up, evaluation and checkpoints)")
    if summary["best"] is not None:
        print(f"best configuration: {summary['best_yaml']}   (trainyard run "
              f"{summary['best_yaml']})")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

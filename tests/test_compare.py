"""`trainyard compare`: the table of differing params and headline metrics, the PNG, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainyard import tracking
from trainyard.cli import main


def _make_run(uri, experiment, name, kind, params, histories, status="FINISHED"):
    """A closed run with `params` and, per metric, (step, value) points."""
    ref = tracking.open_run(uri, experiment, name, {"trainyard.kind": kind}, params,
                            f"name: {name}\n")
    logger = tracking.RunLogger(ref)
    for key, points in histories.items():
        for step, value in points:
            logger.log({key: value}, step=step)
    tracking.close_run(ref, status)
    return ref.run_id


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished runs of one experiment, made once for the module (a store costs ~3 s)."""
    store_uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    common = {"train.batch_size": 64, "model.arch": "resnet", "seed": 0}
    a = _make_run(store_uri, "digits", "lr-high", "supervised", {**common, "train.lr": 0.1},
                  {"val/accuracy": [(10, 0.5), (20, 0.8), (30, 0.7)],
                   "val/loss": [(10, 1.5), (20, 0.6), (30, 0.9)]})
    b = _make_run(store_uri, "digits", "lr-low", "supervised", {**common, "train.lr": 0.01},
                  {"val/accuracy": [(10, 0.6), (20, 0.65), (30, 0.9)],
                   "val/loss": [(10, 1.2), (20, 1.0), (30, 0.4)]}, status="KILLED")
    return store_uri, a, b


def _rows(out: str) -> dict[str, list[str]]:
    """Table lines by run name, split on runs of 2+ spaces; the header under key 'run'."""
    import re

    lines = [line for line in out.splitlines() if line and not line.startswith(("-", "(", "plot"))]
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in lines)}


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 2000


def test_table_shows_differing_params_and_headline_metric(two_runs, workdir, capsys):
    uri, a, b = two_runs
    out_png = workdir / "plots" / "cmp.png"
    assert main(["compare", a, b, "--tracking-uri", uri, "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    header = rows["run"]
    assert header == ["run", "id", "status", "wall", "train.lr", "val/accuracy final",
                      "val/accuracy best (max)"]  # equal params hidden
    assert "train.batch_size" not in out and "model.arch" not in out
    assert "(3 params with the same value in every run not shown)" in out
    assert rows["lr-high"] == ["lr-high", a[:8], "FINISHED", rows["lr-high"][3], "0.1", "0.7",
                               "0.8"]
    assert rows["lr-low"] == ["lr-low", b[:8], "KILLED", rows["lr-low"][3], "0.01", "0.9", "0.9"]
    assert rows["lr-high"][3].endswith("s")  # wall time, e.g. "0s"
    assert f"plot: {out_png}" in out
    assert _is_png(out_png)


def test_metric_option_picks_the_metric_and_min_for_a_loss(two_runs, workdir, capsys):
    uri, a, b = two_runs
    assert main(["compare", "--experiment", "digits", "--metric", "val/loss",
                 "--tracking-uri", uri]) == 0  # --out defaults to ./compare.png
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["run"][-2:] == ["val/loss final", "val/loss best (min)"]
    assert "val/accuracy" not in out
    assert rows["lr-high"][-2:] == ["0.9", "0.6"] and rows["lr-low"][-2:] == ["0.4", "0.4"]
    assert list(rows)[1:] == ["lr-high", "lr-low"]  # oldest first
    assert _is_png(workdir / "compare.png")


def test_mixed_kinds_get_each_kinds_headline_metric(store_uri, capsys):
    sup = _make_run(store_uri, "mixed", "cnn", "supervised", {"kind": "supervised"},
                    {"val/accuracy": [(5, 0.9)]})
    rl = _make_run(store_uri, "mixed", "dqn", "rl", {"kind": "rl", "agent.env": "CartPole-v1"},
                   {"eval/return_mean": [(1000, 20.0), (2000, 180.0), (3000, 150.0)]})
    assert main(["compare", sup, rl, "--tracking-uri", store_uri]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["run"][4:] == ["agent.env", "kind", "val/accuracy final",
                               "val/accuracy best (max)", "eval/return_mean final",
                               "eval/return_mean best (max)"]
    assert rows["cnn"][4:] == ["-", "supervised", "0.9", "0.9", "-", "-"]
    assert rows["dqn"][4:] == ["CartPole-v1", "rl", "-", "-", "150", "180"]


def test_unknown_run_id_exits_2_naming_it(two_runs, workdir, capsys):
    uri, a, _ = two_runs
    assert main(["compare", a, "0123456789abcdef", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: no run '0123456789abcdef' in ")


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "error: no experiment 'nope' in "),
    (["--metric", "val/nope"], "error: no run here logged metric 'val/nope'; they log: "),
    ([], "error: compare needs run ids or --experiment NAME"),
])
def test_bad_input_exits_2(two_runs, workdir, capsys, args, message):
    uri, a, _ = two_runs
    if args and args[0] == "--metric":
        args = [a, *args]
    assert main(["compare", *args, "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_missing_store_is_named_and_not_created(workdir):
    missing = workdir / "elsewhere" / "mlflow.db"
    proc = subprocess.run([sys.executable, "-m", "trainyard.cli", "compare", "abc",
                           "--tracking-uri", f"sqlite:///{missing}"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: no tracking store at sqlite:///{missing}: pass the "
                                   "store with --tracking-uri (or set MLFLOW_TRACKING_URI)")
    assert not missing.exists()


def test_cells_have_four_significant_digits_one_placeholder_and_no_sweep_settings():
    from trainyard.compare import _cell, differing_params

    assert [_cell(v) for v in ("0.0018000000000000002", 0.123456, "3e-05", "1e+20", "12",
                               "resnet", "cnn_digits.yaml", "19264e54", None, "None", "")] == [
        "0.0018", "0.1235", "3e-05", "1e+20", "12", "resnet", "cnn_digits.yaml", "19264e54",
        "-", "-", "-"]
    plain = {"params": {"agent.lr": "0.001"}}
    trial = {"params": {"agent.lr": "0.002", "sweep.num_samples": "8", "sweep.metric": "x"}}
    assert differing_params([plain, trial]) == ["agent.lr"]


def test_ids_and_names_that_read_as_numbers_are_shown_as_they_are():
    # CI once drew a run id starting "19264e54", and the table printed it as 1.926e+58.
    from trainyard.compare import table

    runs = [{"name": name, "run_id": run_id, "status": "FINISHED", "start_ms": 0, "end_ms": 0,
             "params": {"git": sha}, "metrics": {}}
            for name, run_id, sha in (("1e5", "19264e54aa", "1.50"), ("2.0", "0012e3bb", "0e1"))]
    rows = [line.split() for line in table("unused", runs, [], {}).splitlines()[2:]]
    assert rows == [["1e5", "19264e54", "FINISHED", "-", "1.5"],
                    ["2.0", "0012e3bb", "FINISHED", "-", "0e1"]]

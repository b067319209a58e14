"""The driver's progress lines: every iteration printed once, in order, and a prompt exit."""

from __future__ import annotations

import io
import time

import ray

from trainyard.progress import ProgressChannel, ProgressPrinter


def test_printer_prints_each_line_in_order_and_exits_at_once():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        channel, out = ProgressChannel(), io.StringIO()
        with ProgressPrinter(channel, "[job]", "val/loss", stream=out):
            for epoch in (1, 2, 3):
                channel.emit(f"epoch {epoch}/3", {"val/loss": 1.0 / epoch,
                                                  "perf/samples_per_s": 1234.0})
            time.sleep(1.0)  # the reader waits in one blocking get after the last line
            leaving = time.monotonic()
        exit_s = time.monotonic() - leaving
    finally:
        ray.shutdown()
    lines = out.getvalue().splitlines()
    assert [line.split()[:3] for line in lines] == [["[job]", "epoch", f"{e}/3"] for e in (1, 2, 3)]
    assert "val/loss 0.3333" in lines[2] and "samples_per_s 1,234" in lines[2]
    # the blocking get is woken by the printer's exit, not left to a 5 s join timeout
    assert exit_s < 2.0


def test_a_metric_without_a_value_is_left_out_of_the_line():
    """An RL iteration in which no episode ended has no return (RLlib reports nan)."""
    from trainyard.progress import format_line

    line = format_line("[cartpole]", "iter 3 steps 3,000", {
        "train/return_mean": float("nan"), "train/loss": 0.25,
        "perf/env_steps_per_s": 410.0}, "eval/return_mean", 12.0)
    assert "nan" not in line and "train/return_mean" not in line
    assert "train/loss 0.25" in line and "env_steps_per_s 410" in line

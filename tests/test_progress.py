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

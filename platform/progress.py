"""One concise progress line per iteration, printed by the driver.

The process that trains (rank 0 of a Ray Train job, or the RL loop) pushes each iteration's
metrics into a small Ray queue; a thread in the driver prints them. Worker stdout would arrive
prefixed with Ray's actor tags and interleaved; this way the user reads one clean line each.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

PERF_KEYS = ("perf/samples_per_s", "perf/env_steps_per_s")


class ProgressChannel:
    """The sending end; picklable (it travels inside the train loop config)."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        # 0 CPUs: the queue must not take a core that a worker needs.
        self.queue = Queue(maxsize=1000, actor_options={"num_cpus": 0})

    def emit(self, label: str, metrics: dict[str, float]) -> None:
        try:
            self.queue.put_nowait((label, dict(metrics)))
        except Exception:  # progress is best effort: a full queue never stops training
            pass


def format_line(prefix: str, label: str, metrics: dict[str, float], headline: str,
                elapsed_s: float) -> str:
    parts = [f"{prefix} {label}"]
    keys = [headline] + [k for k in ("train/return_mean", "train/loss", "val/loss")
                         if k != headline]
    for key in keys:
        # an RL iteration that finished no episode has no return: leave the field out
        if key in metrics and math.isfinite(metrics[key]):
            parts.append(f"{key} {metrics[key]:.4g}")
    for key in PERF_KEYS:
        if key in metrics:
            parts.append(f"{key.removeprefix('perf/')} {metrics[key]:,.0f}")
    parts.append(f"{elapsed_s:6.1f}s")
    return "  ".join(parts)


class ProgressPrinter:
    """Reads a channel in a driver thread and prints each iteration as one line."""

    def __init__(self, channel: ProgressChannel, prefix: str, headline: str, stream=None):
        self.channel = channel
        self.prefix = prefix
        self.headline = headline
        self.stream = stream or sys.stdout
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        try:  # wake the reader's blocking get
            self.channel.queue.put_nowait(None)
        except Exception:  # Ray already gone: the thread ends with it
            pass
        self._thread.join(timeout=5)
        self._drain()

    def _print(self, item: tuple[str, dict[str, float]]) -> None:
        label, metrics = item
        line = format_line(self.prefix, label, metrics, self.headline,
                           time.monotonic() - self.start)
        print(line, file=self.stream, flush=True)

    def _drain(self) -> None:
        while True:
            try:
                item = self.channel.queue.get_nowait()
            except Exception:
                return
            if item is not None:
                self._print(item)

    def _loop(self) -> None:
        # One blocking get at a time, woken by an item or by __exit__'s None. A get with a
        # timeout would be a call into the queue actor twice a second: on 2 cores every such
        # wake-up of Ray's processes is taken from a training thread (see launcher.py).
        while not self._stop.is_set():
            try:
                item = self.channel.queue.get()
            except Exception:  # Ray shutting down under us
                return
            if item is None:
                return
            self._print(item)

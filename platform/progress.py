"""One concise progress line per iteration, printed by the driver.

The process that trains (rank 0 of a Ray Train job, or the RL loop) pushes each iteration's
metrics into a small Ray queue; a thread in the driver prints them. Worker stdout would arrive
prefixed with Ray's actor tags and interleaved; this way the user reads one clean line each.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
import uuid
from typing import Any

PERF_KEYS = ("perf/samples_per_s", "perf/env_steps_per_s")
# how long a write waits for room in a full queue before the training process fails
RECORD_WAIT_S = 600


class _Mailbox:
    """The channel's Ray actor: a bounded first-in-first-out queue of items, and the flush
    marks that the driver has reached (a sender waits on its mark: see `flush`)."""

    def __init__(self, maxsize: int):
        self.items: asyncio.Queue = asyncio.Queue(maxsize)
        self.marks: dict[str, asyncio.Event] = {}

    def _mark(self, token: str) -> asyncio.Event:
        return self.marks.setdefault(token, asyncio.Event())

    async def put(self, item: Any, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.items.put(item), timeout)

    def put_nowait(self, item: Any) -> None:
        self.items.put_nowait(item)

    async def get(self) -> Any:
        return await self.items.get()

    def get_nowait(self) -> Any:
        return self.items.get_nowait()

    def reached(self, token: str) -> None:
        self._mark(token).set()

    async def wait_reached(self, token: str, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._mark(token).wait(), timeout)
        finally:
            self.marks.pop(token, None)


class ProgressChannel:
    """The sending end; picklable (it travels inside the train loop config). It also carries
    rank 0's MLflow writes to the driver (`trainyard.records`)."""

    def __init__(self) -> None:
        import ray

        # 0 CPUs: the queue must not take a core that a worker needs.
        self.mailbox = ray.remote(_Mailbox).options(num_cpus=0).remote(1000)
        self._printer: ProgressPrinter | None = None  # the driver's reader; never pickled

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_printer": None}

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        return ray.get(getattr(self.mailbox, method).remote(*args))

    def emit(self, label: str, metrics: dict[str, float]) -> None:
        try:
            self._call("put_nowait", ("line", label, dict(metrics)))
        except Exception:  # progress is best effort: a full queue never stops training
            pass

    def record(self, op: str, args: tuple) -> None:
        """One write for the driver to do (`records.Records.<op>(*args)`). Unlike a progress
        line it must arrive: it waits for room, and fails loudly if the driver is gone. The
        call travels pickled, so the queue's process never imports torch to hold a model."""
        from ray import cloudpickle

        self._call("put", ("record", cloudpickle.dumps((op, args))), RECORD_WAIT_S)

    def flush(self) -> None:
        """Return once the driver has done every write sent before (a sender's checkpoint must
        never get ahead of its metrics in MLflow: a resume starts after the checkpoint)."""
        token = uuid.uuid4().hex
        self._call("put", ("flush", token), RECORD_WAIT_S)
        self._call("wait_reached", token, RECORD_WAIT_S)

    def settle(self) -> None:
        """Driver only: return once every write sent so far is done; raise if one failed."""
        if self._printer is not None:
            self._printer.settle()


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
    """Reads a channel in a driver thread: prints each iteration as one line and does the
    writes that rank 0 sent (`records`, a `trainyard.records.Records` of the run)."""

    def __init__(self, channel: ProgressChannel, prefix: str, headline: str, stream=None,
                 records: Any = None):
        self.channel = channel
        channel._printer = self
        self.prefix = prefix
        self.headline = headline
        self.stream = stream or sys.stdout
        self.records = records
        self.start = time.monotonic()
        self.failed: BaseException | None = None  # the first write that failed
        self._settled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        try:  # wake the reader's blocking get
            self.channel._call("put_nowait", None)
        except Exception:  # Ray already gone: the thread ends with it
            pass
        # A write in progress (a model artifact) may take a while; the thread ends at the
        # None, after every item sent before it.
        self._thread.join(timeout=RECORD_WAIT_S)
        if not self._thread.is_alive():
            self._drain()
        if exc[0] is None:
            self._raise_failed()

    def settle(self) -> None:
        """Wait until the reader has handled every item sent so far; raise a failed write."""
        self._settled.clear()
        self.channel._call("put", ("settle",), RECORD_WAIT_S)
        while not self._settled.wait(1.0):
            if not self._thread.is_alive():
                break
        self._raise_failed()

    def _raise_failed(self) -> None:
        if self.failed is not None:
            failed, self.failed = self.failed, None
            raise RuntimeError(f"writing rank 0's records to MLflow failed: {failed}") \
                from failed

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "line":
            _, label, metrics = item
            line = format_line(self.prefix, label, metrics, self.headline,
                               time.monotonic() - self.start)
            print(line, file=self.stream, flush=True)
        elif kind == "record":
            from ray import cloudpickle

            try:
                op, args = cloudpickle.loads(item[1])
                getattr(self.records, op)(*args)
            except Exception as err:  # kept for the driver's next settle, never lost
                if self.failed is None:
                    self.failed = err
        elif kind == "settle":
            self._settled.set()
        elif kind == "flush":
            self.channel._call("reached", item[1])

    def _drain(self) -> None:
        while True:
            try:
                item = self.channel._call("get_nowait")
            except Exception:
                return
            if item is not None:
                self._handle(item)

    def _loop(self) -> None:
        # One blocking get at a time, woken by an item or by __exit__'s None. A get with a
        # timeout would be a call into the queue actor twice a second: on 2 cores every such
        # wake-up of Ray's processes is taken from a training thread (see launcher.py).
        while not self._stop.is_set():
            try:
                item = self.channel._call("get")
            except Exception:  # Ray shutting down under us
                return
            if item is None:
                return
            self._handle(item)

"""The driver's progress lines: every iteration printed once, in order, and a prompt exit."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
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


def test_rank0s_records_are_written_by_the_driver_in_order_and_a_failed_write_is_raised(
        store_uri, tmp_path):
    """`trainyard run`'s rank 0 sends its MLflow writes to the driver (records.py): each lands
    in the run once the driver settles, a restart is counted and drops the steps already
    logged, files travel by content, and a write that fails is raised, not lost."""
    from mlflow.tracking import MlflowClient

    from trainyard import tracking
    from trainyard.records import Records, SentRecords

    ref = tracking.open_run(store_uri, "records", "r", {}, {}, "name: r\n")
    folder = tmp_path / "best_model"
    (folder / "sub").mkdir(parents=True)
    (folder / "info.json").write_text("{}")
    (folder / "sub" / "state.pt").write_bytes(b"\x00weights")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        channel, out = ProgressChannel(), io.StringIO()
        with ProgressPrinter(channel, "[job]", "val/loss", stream=out,
                             records=Records(ref)) as printer:
            sent = SentRecords(channel)
            sent.begin("fit-1", 0, {"trainyard.node.rank0": "node-a"}, 3.5)
            sent.log({"val/loss": 1.0}, 10)
            channel.emit("epoch 1/2", {"val/loss": 1.0})
            sent.log_artifacts(folder, "best_model")
            # Ray Train restarts the loop after a worker failure: the same fit starts again
            sent.begin("fit-1", 10, {"trainyard.node.rank0": "node-b"}, 9.0)
            sent.log({"val/loss": 7.0}, 10)  # step 10 was logged by the failed attempt
            sent.log({"val/loss": 0.5}, 20)
            sent.flush()  # what rank 0 waits for before it reports a checkpoint
            client = MlflowClient(store_uri)
            run = client.get_run(ref.run_id)
            assert [(m.step, m.value) for m in client.get_metric_history(ref.run_id,
                                                                         "val/loss")] == [
                (10, 1.0), (20, 0.5)]
            assert run.data.metrics["perf/startup_s"] == 3.5
            assert run.data.metrics["faults/worker_restarts"] == 1
            assert run.data.tags["trainyard.fit_id"] == "fit-1"
            assert run.data.tags["trainyard.faults.worker_restarts"] == "1"
            assert run.data.tags["trainyard.node.rank0"] == "node-b"
            kept = tracking.download(ref, "best_model", tmp_path / "back")
            assert Path(kept, "sub", "state.pt").read_bytes() == b"\x00weights"
            assert Path(kept, "info.json").read_text() == "{}"

            sent.log_image("not an image", "picture", 0)
            sent.log({"val/loss": 0.25}, 30)
            channel.emit("epoch 2/2", {"val/loss": 0.25})
            with pytest.raises(RuntimeError, match="rank 0's records"):
                printer.settle()
            # the writes after the failed one were still done
            assert MlflowClient(store_uri).get_run(ref.run_id).data.metrics["val/loss"] == 0.25
    finally:
        ray.shutdown()
    assert [line.split()[1:3] for line in out.getvalue().splitlines()] == [
        ["epoch", "1/2"], ["epoch", "2/2"]]


def test_rank0_can_send_every_write_the_driver_can_do():
    """A task's write that `SentRecords` lacked would fail only on `trainyard run`."""
    from trainyard.records import Records, SentRecords

    def public(cls):
        return {name for name in vars(cls) if not name.startswith("_")}

    assert public(Records) - {"log_files"} == public(SentRecords)

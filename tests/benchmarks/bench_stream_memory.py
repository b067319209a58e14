"""The driver's peak memory training on a ~2 GB Parquet table: streamed vs loaded.

Generates the table once (32 float32 features + a label, ~15M rows, 60 files) under --folder,
then runs the same 1-worker GRU job twice through `trainyard run`: with `data.stream: true`
(each worker reads its shard through Ray Data) and without (the driver reads the table whole
and ships it to the workers). It samples the driver's peak RSS (VmHWM) and prints one line:

  stream: driver peak 0.41 GB, 21,000 rows/s | loaded: driver peak 6.2 GB, ... | ratio 15x

Run alone on the machine:  .venv/bin/python tests/benchmarks/bench_stream_memory.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

FEATURES = [f"f{i}" for i in range(32)]
BIN = Path(sys.executable).parent


def generate(folder: Path, rows: int, files: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, len(FEATURES))).astype(np.float32)
    (folder / "train").mkdir(parents=True, exist_ok=True)

    def table(n: int) -> pa.Table:
        labels = rng.integers(0, 10, n)
        values = centres[labels] + rng.normal(scale=2.0, size=(n, len(FEATURES))).astype(
            np.float32)
        return pa.table({**{name: values[:, i] for i, name in enumerate(FEATURES)},
                         "label": labels.astype(np.int64)})

    for part in range(files):
        path = folder / "train" / f"part-{part:03d}.parquet"
        if not path.exists():
            pq.write_table(table(rows // files), path, compression="none")
    for name in ("val", "test"):
        if not (folder / f"{name}.parquet").exists():
            pq.write_table(table(20_000), folder / f"{name}.parquet")


def peak_rss_gb(pid: int, stop: threading.Event, out: list) -> None:
    peak = 0
    while not stop.wait(0.2):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            break
    out.append(peak / 1024 / 1024)


def run(folder: Path, stream: bool, steps: int, workdir: Path) -> tuple[float, float]:
    from mlflow.tracking import MlflowClient

    features = "[" + ", ".join(FEATURES) + "]"
    data = (f"{{name: table, path: {folder / 'train'}, stream: true, val_path: "
            f"{folder / 'val.parquet'}, test_path: {folder / 'test.parquet'}, "
            f"features: {features}, label: label}}" if stream else
            f"{{name: table, path: {folder / 'train'}, features: {features}, label: label, "
            "val_fraction: 0.002, test_fraction: 0.002}")
    experiment = "stream" if stream else "loaded"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    config = Path(__file__).resolve().parents[2] / "supervised" / "configs" / \
        "transformer_classifier.yaml"
    command = [str(BIN / "trainyard"), "run", str(config), "-o", f"data={data}",
               "-o", "model={arch: gru, hidden: 32, layers: 1}", "-o", "resources.workers=1",
               "-o", "train.batch_size=1024", "-o", f"train.steps_per_epoch={steps}",
               "-o", "stop.epochs=1", "-o", "output.log_model=false",
               "-o", f"tracking.experiment={experiment}", "-o", "tracking.system_metrics=false"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    driver = subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    stop, peak = threading.Event(), []
    watcher = threading.Thread(target=peak_rss_gb, args=(driver.pid, stop, peak))
    watcher.start()
    output = driver.communicate()[0]
    stop.set()
    watcher.join()
    if driver.returncode:
        raise SystemExit(f"{experiment} run failed:\n{output[-3000:]}")
    client = MlflowClient(uri)
    run_ = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])[0]
    return peak[0], run_.data.metrics["perf/samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/trainyard-big-table")
    parser.add_argument("--rows", type=int, default=15_000_000)
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    args = parser.parse_args()
    folder = Path(args.folder)
    generate(folder, args.rows, args.files)
    size = sum(p.stat().st_size for p in (folder / "train").iterdir()) / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        streamed = run(folder, True, args.steps, Path(tmp))
        loaded = run(folder, False, args.steps, Path(tmp))
    print(f"table {size:.2f} GB ({args.rows:,} rows) | stream: driver peak {streamed[0]:.2f} "
          f"GB, {streamed[1]:,.0f} rows/s | loaded: driver peak {loaded[0]:.2f} GB, "
          f"{loaded[1]:,.0f} rows/s | driver peak ratio {loaded[0] / streamed[0]:.1f}x")


if __name__ == "__main__":
    main()

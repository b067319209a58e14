"""What trainyard's supervised path costs over a plain PyTorch loop, measured in one run.

Baseline: the same ResNet on the same digits split, trained for the same epochs in one
process with a plain PyTorch loop (both cores to torch). trainyard: `trainyard run` of the demo
job (Ray Train, 2 DDP workers, MLflow logging, checkpoints), as a user runs it. Prints one line:

    digits 20 epochs | plain torch 5,100 samples/s | trainyard 2-worker DDP 4,700 samples/s
    (0.92x) | trainyard end to end 68 s, of which start-up 21 s | test acc 0.996 vs 0.993

Run: .venv/bin/python tests/benchmarks/bench_supervised_overhead.py [--epochs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "supervised" / "configs" / "cnn_digits.yaml"


def plain_torch(epochs: int) -> tuple[float, float]:
    """(samples/s over the training epochs, test accuracy) of a plain single-process loop."""
    from trainyard.loader import load_spec
    from trainyard.supervised.data import load_dataset
    from trainyard.supervised.models import build_model
    from trainyard.supervised.train_loop import evaluate

    spec = load_spec(JOB).spec
    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = load_dataset(spec.data, 0)
    model = build_model(spec.model, data.in_channels, data.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.lr,
                                  weight_decay=spec.train.weight_decay)
    loader = DataLoader(data.train, batch_size=spec.train.batch_size, shuffle=True)
    seconds, samples = 0.0, 0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            samples += len(labels)
        seconds += time.perf_counter() - start
    return samples / seconds, evaluate(model, data.test, torch.device("cpu"))["accuracy"]


def trainyard_run(epochs: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "trainyard.cli", "run", str(JOB), "-o",
                        f"stop.epochs={epochs}", "-o", "tracking.experiment=bench"],
                       cwd=tmp, check=True, capture_output=True)
        wall = time.monotonic() - start
        client = MlflowClient(f"sqlite:///{tmp}/trainyard-runs/mlflow.db")
        run = client.search_runs([client.get_experiment_by_name("bench").experiment_id])[0]
        rates = [m.value for m in client.get_metric_history(run.info.run_id,
                                                            "perf/samples_per_s")]
        return {"wall": wall, "rate": statistics.median(rates[1:] or rates),
                "startup": run.data.metrics["perf/startup_s"],
                "test": run.data.metrics["test/accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    epochs = parser.parse_args().epochs
    base_rate, base_test = plain_torch(epochs)
    ours = trainyard_run(epochs)
    print(f"digits {epochs} epochs | plain torch {base_rate:,.0f} samples/s | trainyard 2-worker "
          f"DDP {ours['rate']:,.0f} samples/s ({ours['rate'] / base_rate:.2f}x) | trainyard end "
          f"to end {ours['wall']:.0f} s, of which start-up {ours['startup']:.0f} s | test acc "
          f"{ours['test']:.3f} vs {base_test:.3f}")


if __name__ == "__main__":
    main()

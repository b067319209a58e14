"""Regression: the character LMs learn real structure, well below the unigram baseline."""

from __future__ import annotations

import pytest

from conftest import REPO, runs_of
from trainyard.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("config,minutes,margin", [("transformer_charlm.yaml", 2.5, 1.5),
                                                   ("lstm_charlm.yaml", 2.5, 1.0)])
def test_char_lm_beats_unigram_in_minutes(workdir, store_uri, config, minutes, margin):
    argv = ["run", str(REPO / "supervised" / "configs" / config), "-o",
            f"stop.minutes={minutes}", "-o", "output.log_model=false"]
    assert main(argv) == 0
    client, runs = runs_of(store_uri, "charlm")
    run = runs[0]
    metrics = run.data.metrics
    best_val_bpc = min(m.value for m in client.get_metric_history(run.info.run_id,
                                                                  "val/bits_per_char"))
    assert best_val_bpc < metrics["baseline/unigram_bits_per_char"] - margin
    assert metrics["test/bits_per_char"] < metrics["baseline/unigram_bits_per_char"] - margin

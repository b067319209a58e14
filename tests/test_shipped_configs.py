"""Every job YAML we ship validates, and its header says how to run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainyard.loader import dump_spec, load_spec, validate_data

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*REPO.glob("agents/configs/*.yaml"), *REPO.glob("supervised/configs/*.yaml")])


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates_and_round_trips(path):
    import yaml

    loaded = load_spec(path)
    header = path.read_text().splitlines()[:4]
    assert any(f"trainyard run {path.relative_to(REPO)}" in line for line in header)
    again = validate_data(yaml.safe_load(dump_spec(loaded.spec)), "round-trip").spec
    assert again == loaded.spec  # the saved job.yaml is enough to re-run the job

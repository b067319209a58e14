"""Every job YAML we ship validates, and its header says how to run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainyard.loader import dump_spec, load_spec, validate_data

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*REPO.glob("agents/configs/*.yaml"), *REPO.glob("supervised/configs/*.yaml")])


def test_the_readme_table_lists_every_shipped_config():
    import re

    readme = (REPO / "README.md").read_text()
    start = readme.index("| job | kind |")
    table = readme[start:readme.index("\n## ", start)].strip().splitlines()
    rows = [line for line in table if line.startswith("| `")]
    assert len(rows) == len(table) - 2, "a blank or stray line splits the table"
    named = {name for row in rows for name in re.findall(r"`(?:[\w/]+/)?(\w+\.yaml)`", row)}
    shipped = {p.name for p in CONFIGS}
    assert shipped and shipped <= named, f"missing from README's table: {sorted(shipped - named)}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates_and_round_trips(path):
    import yaml

    loaded = load_spec(path)
    header = path.read_text().splitlines()[:4]
    assert any(f"trainyard run {path.relative_to(REPO)}" in line for line in header)
    again = validate_data(yaml.safe_load(dump_spec(loaded.spec)), "round-trip").spec
    assert again == loaded.spec  # the saved job.yaml is enough to re-run the job

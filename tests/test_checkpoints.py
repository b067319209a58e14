"""Checkpoints are written atomically and read without running pickled code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from trainyard.checkpoints import (
    CheckpointError,
    commit_folder,
    latest_valid,
    list_folders,
    load_state,
    prune,
    save_state,
)


def test_state_round_trips(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "progress": {"epoch": 3, "best": 0.9}}
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["progress"] == {"epoch": 3, "best": 0.9}
    assert not list(tmp_path.glob(".*partial"))  # nothing left half-written


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "state.pt", "wb") as handle:
        torch.save({"x": _Exploit()}, handle)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_state(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_state_is_a_clear_error(tmp_path):
    save_state(tmp_path, {"w": torch.zeros(1000)})
    path = tmp_path / "state.pt"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_state(tmp_path)


def test_damaged_checkpoint_folder_is_skipped_for_the_previous(tmp_path):
    for iteration in (1, 2):
        partial = tmp_path / f".partial_{iteration}"
        partial.mkdir()
        commit_folder(partial, tmp_path / f"checkpoint_{iteration:06d}", {"iteration": iteration})
    (tmp_path / "checkpoint_000003").mkdir()  # crashed before its marker: not committed
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        folder, info = latest_valid(tmp_path)
    assert folder.name == "checkpoint_000002" and info == {"iteration": 2}
    prune(tmp_path, keep=1)
    assert [p.name for p in list_folders(tmp_path)] == ["checkpoint_000002", "checkpoint_000003"]


def test_pickle_module_is_not_what_loads(tmp_path):
    # weights_only: plain pickles of arbitrary classes are refused as well
    with open(tmp_path / "state.pt", "wb") as handle:
        pickle.dump({"obj": _Exploit}, handle)
    with pytest.raises(CheckpointError):
        load_state(tmp_path)

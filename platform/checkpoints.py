"""Checkpoint files: written atomically, read without running pickled code.

A checkpoint is a folder; training state goes into `state.pt` inside it. Ray (Train's
checkpoint manager, or the RL loop) decides which folders to keep; this module only makes each
one safe to write and safe to read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

STATE_FILE = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (truncated, corrupted, or not ours)."""


def save_state(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors, numbers, strings, lists, dicts) to folder/state.pt atomically.

    Written to a temporary name and renamed, so a crash mid-write leaves the previous file
    (or none), never half a file under the real name.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / STATE_FILE
    partial = folder / f".{STATE_FILE}.partial"
    with open(partial, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, final)
    return final


def load_state(folder: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read folder/state.pt with `weights_only=True`: tensors and plain data, never code."""
    import pickle

    import torch

    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"no {STATE_FILE} in checkpoint {folder}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} cannot be read safely: {err}") from err


# Folders of checkpoints that the training loop manages itself (RLlib algorithms): each is
# written under a temporary name, gets a marker file last, and is renamed into place.
MARKER = "trainyard-checkpoint.json"


def commit_folder(partial: str | Path, final: str | Path, info: dict[str, Any]) -> Path:
    """Finish a checkpoint written into `partial`: write its marker, rename it to `final`."""
    import json

    partial, final = Path(partial), Path(final)
    (partial / MARKER).write_text(json.dumps(info))
    os.replace(partial, final)
    return final


def read_marker(folder: str | Path) -> dict[str, Any]:
    """The progress counters a committed checkpoint folder was written with."""
    import json

    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {folder} has no readable {MARKER}: {err}") from err


def list_folders(root: str | Path, prefix: str = "checkpoint_") -> list[Path]:
    """Committed checkpoint folders under root, oldest first (names sort by iteration)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))


def latest_valid(root: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint folder with a readable marker; damaged ones are skipped, warned."""
    import json
    import warnings

    for folder in reversed(list_folders(root)):
        try:
            return folder, json.loads((folder / MARKER).read_text())
        except (OSError, ValueError) as err:
            warnings.warn(f"skipping damaged checkpoint {folder}: {err}", stacklevel=2)
    return None


def prune(root: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest committed checkpoints, and crashed partial writes.

    A damaged folder (no marker) is left for a person to look at, and never counts as kept.
    """
    import shutil

    committed = [f for f in list_folders(root) if (f / MARKER).is_file()]
    for folder in committed[:-keep] + list_folders(root, prefix=".partial_"):
        shutil.rmtree(folder, ignore_errors=True)

"""Checkpoint files: written atomically, read without running pickled code.

A checkpoint is a folder; training state goes into `state.pt` inside it (supervised jobs) or
into RLlib's per-component `state.msgpack` files (RL jobs). Ray (Train's checkpoint manager, or
the RL loop) decides which folders to keep; this module only makes each one safe to write and
safe to read: whoever can write into a run store can hand us any bytes (README, "Threat
model"), so every loader checks what it reads before a library decodes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainyard.spec import UserInputError, one_line

STATE_FILE = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (truncated, corrupted, or not ours)."""


class UnsafeCheckpointError(CheckpointError, UserInputError):
    """A checkpoint file that would run code (or may, as far as we can tell) when loaded. The
    CLI prints the one-line message, which names the file, and exits with code 2."""


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
        # torch's message runs to a dozen lines of advice to load with weights_only=False,
        # which is exactly what must not happen here: keep its first line.
        raise UnsafeCheckpointError(
            f"checkpoint file {path} cannot be read safely as plain tensors and data (it holds "
            f"other pickled objects, or is damaged): {one_line(err)}; trainyard refuses it"
        ) from None


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


# ---------------------------------------------------------------- RLlib checkpoints
#
# RLlib (new API stack, `use_msgpack`) writes each component's state as `state.msgpack`, and
# reads it with msgpack_numpy patched into msgpack process-wide. msgpack_numpy turns a map
# {b"nd": True, b"kind": b"O", b"data": ...} into `pickle.loads(data)`: an object array in any
# state.msgpack runs code when RLlib decodes it. Where a component has no state.msgpack, RLlib
# unpickles its `state.pkl`. So before RLlib reads a checkpoint folder, every msgpack file in it
# is parsed by an unpatched msgpack with a hook that refuses those maps, and pickles are
# refused outright. (`class_and_ctor_args.pkl` is read only by `Algorithm.from_checkpoint`,
# which trainyard never calls; `restore_from_path` does not open it.)
NEVER_READ = frozenset({"class_and_ctor_args.pkl"})


def vet_rllib_checkpoint(folder: str | Path) -> None:
    """Refuse (UnsafeCheckpointError) a checkpoint folder RLlib could run code from."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".pkl" and path.name not in NEVER_READ:
            raise UnsafeCheckpointError(
                f"checkpoint file {path} is a pickle, which runs code when loaded; trainyard "
                "writes msgpack state only and refuses it")
        if path.suffix in (".msgpack", ".msgpck") and path.is_file():
            vet_msgpack(path)


def vet_msgpack(path: str | Path) -> None:
    """Parse a msgpack file as RLlib would, without msgpack_numpy's decoding, and refuse any
    map that its decoder would unpickle or build an object array from."""
    try:  # the C unpacker as msgpack ships it; msgpack_numpy.patch() replaces only the names
        from msgpack._cmsgpack import unpackb  # exported at msgpack's top level
    except ImportError:  # pragma: no cover  (pure-Python msgpack builds)
        from msgpack.fallback import unpackb

    path = Path(path)

    def refuse(what: str) -> None:
        raise UnsafeCheckpointError(
            f"checkpoint file {path} holds {what}, which msgpack_numpy would build by unpickling "
            "(which runs code) when RLlib loads it; trainyard refuses it")

    def check(obj: dict) -> dict:
        # mirrors msgpack_numpy.decode: it acts on maps with a b"nd" key
        if b"nd" in obj:
            if obj.get(b"kind") == b"O":
                refuse("an array of Python objects")
            if _has_object(obj.get(b"type")):
                refuse("an array whose dtype holds Python objects")
        return obj

    try:
        unpackb(path.read_bytes(), raw=False, strict_map_key=False, object_hook=check)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 (msgpack raises several unrelated types)
        raise UnsafeCheckpointError(
            f"checkpoint file {path} is not valid msgpack ({one_line(err)}); trainyard "
            "refuses it") from None


def _has_object(descr: Any) -> bool:
    """Whether a msgpack_numpy dtype description names Python objects, or is not a plain
    dtype description at all (anything numpy cannot parse is refused too)."""
    import numpy as np

    def unpack(d: Any) -> Any:
        if isinstance(d, bytes):
            return d.decode("ascii", "replace")
        if isinstance(d, (list, tuple)):  # structured: (name, type, *shape) per field
            return [tuple(unpack(x) if i < 2 else x for i, x in enumerate(f)) for f in d]
        return d

    if descr is None:
        return False
    try:
        return bool(np.dtype(unpack(descr)).hasobject)
    except (TypeError, ValueError, KeyError, IndexError):
        return True

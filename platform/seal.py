"""A keyed seal over a sweep's Tune state, so `trainyard resume` of a sweep unpickles only what
this user's own sweep wrote.

Tune restores a sweep by unpickling `tuner.pkl`, the searcher's state and the trials (the
`experiment_state-*.json` files carry cloudpickled trials): whoever can write into the sweep's
folder could otherwise run code in the next `trainyard resume`. When a sweep stops (finished,
failed or interrupted), trainyard records a SHA-256 of every `.pkl` and `.json` file in its
folder and an HMAC of that list under a per-user key kept outside every run store. Resume
checks the seal first: a missing, changed or foreign seal, or a pickle the seal does not list,
is refused unless the user says `--trust-sweep-state`. (A sweep killed outright leaves no seal,
so its resume needs that flag.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from trainyard.spec import UserInputError

SEAL = "trainyard-seal.json"
SEALED_SUFFIXES = (".pkl", ".json")
KEY_ENV = "TRAINYARD_STATE_KEY"  # a key file elsewhere (tests; a shared cluster account)


class SealError(UserInputError):
    """Sweep state that is not provably this user's: the CLI prints it and exits with 2."""


def key_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "trainyard" / "state.key"


def _key(create: bool) -> bytes | None:
    path = key_path()
    if not path.is_file():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:  # O_EXCL: two sweeps ending at once must not write two different keys
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        except FileExistsError:
            pass
    return path.read_bytes()


def _digests(folder: Path) -> dict[str, str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix in SEALED_SUFFIXES and path.name != SEAL and path.is_file():
            found[path.relative_to(folder).as_posix()] = hashlib.sha256(
                path.read_bytes()).hexdigest()
    return found


def _mac(key: bytes, files: dict[str, str]) -> str:
    return hmac.new(key, json.dumps(files, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def seal(folder: str | Path) -> Path | None:
    """Record the folder's state files under this user's key (local folders only)."""
    if "://" in str(folder) or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    files = _digests(folder)
    target = folder / SEAL
    partial = folder / f".{SEAL}.partial"
    partial.write_text(json.dumps({"files": files, "mac": _mac(_key(create=True), files)},
                                  indent=1))
    os.replace(partial, target)
    return target


def verify(folder: str | Path) -> None:
    """Raise SealError unless every state file in the folder is as this user's sweep sealed it."""
    trust = "if you wrote it and trust every writer of that folder, resume with " \
            "--trust-sweep-state"
    if "://" in str(folder):
        raise SealError(f"sweep state in {folder} is on remote storage, which trainyard cannot "
                        f"check before Tune unpickles it; {trust}")
    folder = Path(folder)
    seal_file = folder / SEAL
    if not seal_file.is_file():
        raise SealError(f"sweep state in {folder} has no {SEAL} (the sweep did not stop "
                        f"cleanly, or another tool wrote it): Tune unpickles it on resume; {trust}")
    try:
        recorded = json.loads(seal_file.read_text())
        files, mac = dict(recorded["files"]), str(recorded["mac"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SealError(f"{seal_file} cannot be read ({err}); {trust}") from None
    key = _key(create=False)
    if key is None or not hmac.compare_digest(_mac(key, files), mac):
        raise SealError(f"{seal_file} was not written with this user's key ({key_path()}): "
                        f"Tune unpickles the sweep state on resume; {trust}")
    for name, digest in _digests(folder).items():
        if name not in files:
            raise SealError(f"sweep state file {folder / name} appeared after the sweep sealed "
                            f"its folder; {trust}")
        if not hmac.compare_digest(files[name], digest):
            raise SealError(f"sweep state file {folder / name} changed after the sweep sealed "
                            f"its folder; {trust}")

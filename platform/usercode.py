"""The user's own code named in a job spec (`agent.env: module:EnvId`, `model.arch:
module:factory`): found and imported the way `python -m` would, from the folder the command
runs in or PYTHONPATH.

Loading a spec only checks that the module can be found (`find`): `trainyard validate` stays
fast and runs none of the user's code. `trainyard run`, `sweep`, `submit`, `resume` and
`validate --check-env` import it (`load`) and hold it to what trainyard takes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys


def _on_path() -> None:
    # The console script's sys.path[0] is the venv's bin/, not the folder the user runs in;
    # `python -m` puts the working folder first, and so does this. Ray hands the driver's
    # sys.path to its workers, so remote env runners and Train workers find the module too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def split(reference: str, what: str, example: str) -> tuple[str, str]:
    """`module:name` -> (module, name); ValueError saying how to write it."""
    module, _, name = reference.partition(":")
    if not module or not name or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"{reference!r}: write {what} as module:name, e.g. {example}")
    return module, name


def find(module: str, reference: str) -> None:
    """ValueError unless `module` can be imported from here (nothing of it runs, though the
    packages above a dotted module are imported to look inside them)."""
    _on_path()
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ValueError(f"cannot find module {module!r} of {reference!r}; run from the folder "
                         "that holds it or put that folder on PYTHONPATH")


def load(module: str, reference: str):
    """Import `module` (ValueError, one line, when it or its own imports fail)."""
    _on_path()
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"cannot import module {module!r} of {reference!r} ({err}); run from "
                         "the folder that holds it or put that folder on PYTHONPATH") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed: say where, one line
        raise ValueError(f"importing module {module!r} of {reference!r} failed: "
                         f"{type(err).__name__}: {err}") from None

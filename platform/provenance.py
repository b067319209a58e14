"""Where a run came from, as its tags: the command, the code's git commit, package versions,
the machine's CPUs and GPUs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    found = {}
    for package in ("trainyard", "torch", "ray", "mlflow", "gymnasium", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    import platform  # the standard library's (platform/ has no __init__.py)

    return platform.processor() or platform.machine() or "cpu"


def hardware() -> str:
    """CPU count and model, then GPU count and model where torch sees any, e.g.
    "96 CPUs (AMD EPYC 7R13 Processor); 8x NVIDIA A100-SXM4-80GB"."""
    described = f"{os.cpu_count()} CPUs ({cpu_model()})"
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            gpus = ", ".join(f"{names.count(n)}x {n}" for n in dict.fromkeys(names))
            described += f"; {gpus}"
    except ImportError:
        pass
    return described


def command_line() -> str:
    """The command that started this process, as a person would type it."""
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program in ("trainyard", "cli.py", "__main__.py"):
        return shlex.join(["trainyard", *sys.argv[1:]])
    return shlex.join(sys.argv)

"""platform/ maps to `trainyard` without shadowing the standard library's `platform`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_stdlib_platform_wins_from_the_repo_root():
    code = ("import platform, trainyard.cli, trainyard.supervised, trainyard.agents;"
            "print(platform.system(), platform.__file__, trainyard.cli.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    system, platform_file, cli_file = out
    assert system == "Linux"
    assert "/lib/python3" in platform_file and not platform_file.startswith(str(REPO))
    assert cli_file == str(REPO / "platform" / "cli.py")


def test_platform_folder_has_no_init():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_console_script_is_installed_and_runs_from_elsewhere(tmp_path):
    # The script pip wrote into the venv, run from outside the checkout: what a user types.
    script = Path(sys.executable).with_name("trainyard")
    assert script.is_file(), f"{script} missing: the [project.scripts] entry is not installed"
    out = subprocess.run([str(script), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    for command in ("validate", "run", "resume", "sweep", "submit", "eval", "play", "ui"):
        assert command in out


def test_validate_imports_neither_torch_ray_mlflow_nor_minatar():
    # `trainyard validate` took 5.5 s when loading a spec imported MLflow (3.4 s) and MinAtar
    # (seaborn, 4 s); a fresh interpreter per config, as a user runs it
    code = ("import contextlib, io, sys\nfrom trainyard.cli import main\n"
            "for job in sys.argv[1:]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        assert main(['validate', job]) == 0, job\n"
            "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'minatar') if m in sys.modules))")
    jobs = ["supervised/configs/cnn_digits.yaml", "agents/configs/dqn_minatar_breakout.yaml",
            "agents/configs/selfplay_connect4.yaml"]
    out = subprocess.run([sys.executable, "-c", code, *jobs], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"

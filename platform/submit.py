"""Running jobs on a Ray cluster through the Ray Jobs API: submit, list, logs, stop.

`trainyard submit JOB.yaml --address http://HEAD:8265` builds this checkout's wheel, ships it
in the job's runtime_env (`py_modules`) together with the resolved job spec (`working_dir`
holds only job.yaml), and starts `python -m trainyard.cli run job.yaml` on the cluster. The
cluster's nodes already have the pinned dependencies (their setup commands install them), so
the shipped wheel declares none: Ray installs `py_modules` wheels with plain `pip install
--target`, which would otherwise pull torch and a second Ray into every job.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from trainyard.launcher import TRAIN_POLL_S
from trainyard.loader import LoadedSpec, dump_spec
from trainyard.tracking import resolve_uri

REPO = Path(__file__).resolve().parents[1]
AGENT_WAIT_S = 60  # how long a new head's job agent may take to come up


class SubmitError(RuntimeError):
    """The job cannot be submitted; the message says why and what to do."""


def client(address: str | None):
    """A JobSubmissionClient for `address` (or $RAY_ADDRESS)."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("no cluster address: pass --address http://HEAD:8265 or set "
                          "RAY_ADDRESS (after `ray dashboard clusters/aws-gpu.yaml` it is "
                          "http://127.0.0.1:8265)")
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: "
                          f"{str(err).splitlines()[0]}") from None


def about_job(job_id: str, call):
    """call(job_id), with the Jobs API's errors for an unknown id turned into a SubmitError."""
    try:
        return call(job_id)
    except RuntimeError as err:
        raise SubmitError(f"job {job_id}: {str(err).splitlines()[0]} (trainyard jobs lists "
                          "the cluster's jobs)") from None


def _strip_requirements(wheel: Path) -> Path:
    """Rewrite the wheel without Requires-Dist lines (RECORD updated to match)."""
    temp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(temp, "w",
                                                           zipfile.ZIP_DEFLATED) as target:
        names = source.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = b"".join(line for line in source.read(metadata_name).splitlines(True)
                            if not line.startswith(b"Requires-Dist:"))
        digest = base64.urlsafe_b64encode(hashlib.sha256(metadata).digest()).rstrip(b"=")
        for name in names:
            data = source.read(name)
            if name == metadata_name:
                data = metadata
            elif name.endswith(".dist-info/RECORD"):
                lines = [f"{metadata_name},sha256={digest.decode()},{len(metadata)}"
                         if line.startswith(metadata_name + ",") else line
                         for line in data.decode().splitlines()]
                data = ("\n".join(lines) + "\n").encode()
            target.writestr(name, data)
    os.replace(temp, wheel)  # same name: pip reads name and version from it
    return wheel


def build_wheel(folder: Path) -> Path:
    """Build this checkout's wheel into `folder`; the dependency-free variant for the cluster."""
    if not (REPO / "pyproject.toml").is_file():
        raise SubmitError(f"trainyard submit ships the source checkout's wheel, and "
                          f"{REPO} is not one; run it from a git checkout of trainyard")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                             "--wheel-dir", str(folder), str(REPO)], capture_output=True,
                            text=True)
    wheels = sorted(folder.glob("trainyard-*.whl"))
    if result.returncode or not wheels:
        raise SubmitError(f"building the trainyard wheel failed:\n{result.stderr[-2000:]}")
    return _strip_requirements(wheels[-1])


ALLOW_LOCAL = ("pass --allow-local-storage only if every node sees the same filesystem "
               "(one machine, or an NFS mount at the same path)")


def local_storage(loaded: LoadedSpec) -> list[str]:
    """What a multi-node job would lose or scatter: a node-local tracking store, local
    checkpoints. Each entry names the field and the shared storage to use instead."""
    spec, found = loaded.spec, []
    uri = spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or "the default"
    if not uri.startswith(("http://", "https://", "databricks")):
        found.append(f"tracking.uri ({uri}) is a store local to one node: runs logged from "
                     "the others are lost with it; point tracking.uri (or "
                     "MLFLOW_TRACKING_URI) at a shared MLflow server, http://HOST:5000 "
                     "(README: Run on a GPU cluster)")
    path = spec.checkpoint.path
    if "://" not in path:
        found.append(f"checkpoint.path ({path}) is a local folder: a restart on another "
                     "node finds no checkpoint; use shared storage (s3://..., gs://... or an "
                     "NFS path mounted on every node)")
    return found


def refuse_local_storage(loaded: LoadedSpec, where: str) -> None:
    """SubmitError listing `local_storage` problems (none: returns)."""
    if problems := local_storage(loaded):
        raise SubmitError(f"{loaded.source}: {where} needs storage every node shares:\n  - "
                          + "\n  - ".join(problems) + f"\n({ALLOW_LOCAL})")


def user_code(loaded: LoadedSpec, extra: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The user's own files the job imports: the modules of a `module:EnvId` env and of a
    `module:factory` model (each its top-level package, or the single file), unless installed
    in site-packages, plus `--code` paths. They travel in the job's working folder, which Ray
    puts on every worker's sys.path."""
    import importlib.util

    paths = []
    for path in map(Path, extra):
        if not path.exists():
            raise SubmitError(f"--code {path}: no such file or folder")
        paths.append(path)
    named = (getattr(getattr(loaded.spec, section, None), field, "")
             for section, field in (("agent", "env"), ("model", "arch")))
    for reference in (r for r in named if isinstance(r, str) and ":" in r):
        found = importlib.util.find_spec(reference.partition(":")[0].split(".")[0])
        if found is not None and found.origin:
            where = (Path(next(iter(found.submodule_search_locations)))
                     if found.submodule_search_locations else Path(found.origin))
            if "site-packages" not in where.parts and where not in paths:
                paths.append(where)
    return paths


def _copy_code(paths: list[Path], workdir: Path) -> None:
    for path in paths:
        if (workdir / path.name).exists():
            raise SubmitError(f"--code {path}: a second {path.name!r} in the job's folder")
        if path.is_dir():
            shutil.copytree(path, workdir / path.name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
        else:
            shutil.copy2(path, workdir / path.name)


def submit(loaded: LoadedSpec, address: str | None, code: list[Path] | None = None) -> str:
    """Submit the job with the user's `code` (files and folders) beside its job.yaml; returns
    the Ray job id."""
    jobs = client(address)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp, "wheel"))
        workdir = Path(tmp, "job")
        workdir.mkdir()
        _copy_code(list(code or []), workdir)
        (workdir / "job.yaml").write_text(dump_spec(loaded.spec))
        env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_S, "PYTHONUNBUFFERED": "1"}
        if loaded.spec.tracking.uri is None and os.environ.get("MLFLOW_TRACKING_URI"):
            env["MLFLOW_TRACKING_URI"] = resolve_uri(None)
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return jobs.submit_job(
                    # storage was checked (or allowed) here: the job does not ask again
                    entrypoint="python -m trainyard.cli run job.yaml --allow-local-storage",
                    runtime_env={"working_dir": str(workdir), "py_modules": [str(wheel)],
                                 "env_vars": env},
                    metadata={"trainyard_job": loaded.spec.name, "source": loaded.source})
            except RuntimeError as err:
                # A head that has just started answers 500 until its job agent is up.
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2)


def follow(jobs, job_id: str) -> int:
    """Print a cluster job's logs as they come; its exit code: 0 once it succeeded."""
    import asyncio

    async def stream() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(stream())
    status = str(jobs.get_job_status(job_id)).split(".")[-1]
    print(f"\njob {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1

"""The `trainyard` command line.

    trainyard validate JOB.yaml [-o key.path=value ...]
    trainyard run JOB.yaml [-o ...] [--seed N] [--address HOST:PORT]
    trainyard resume RUN_ID [--address ...]
    trainyard ui [--port 5000]

Exit codes: 0 success, 1 training failed, 2 bad input (spec, overrides, run id), 3 the cluster
cannot provide the job's resources, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from trainyard.loader import SpecError, dump_spec, load_spec
from trainyard.workloads import get_workload

BAD_INPUT, NO_RESOURCES, INTERRUPTED = 2, 3, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainyard", description="Train the job a YAML file describes, on Ray, into MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("job", help="job YAML, e.g. supervised/configs/cnn_digits.yaml")
        p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                       help="set a spec field by dotted path, e.g. -o train.lr=3e-4 (repeatable)")

    p = sub.add_parser("validate", help="check a job file; print the resolved spec or the errors")
    job_args(p)

    p = sub.add_parser("run", help="train a job on local Ray (or a cluster with --address)")
    job_args(p)
    p.add_argument("--seed", type=int, action="append",
                   help="run only this seed (repeatable); default: the spec's seeds")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join (default $RAY_ADDRESS; none: start one here)")
    p.add_argument("--dashboard-port", type=int, default=None,
                   help="port of the embedded Ray's dashboard (on 127.0.0.1; default 8265)")

    p = sub.add_parser("resume", help="continue a stopped or killed run from its checkpoint")
    p.add_argument("run_id", help="MLflow run id (printed when the run started)")
    p.add_argument("--tracking-uri", default=None, help="store holding the run (default: "
                   "$MLFLOW_TRACKING_URI, else ./trainyard-runs/mlflow.db)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))

    p = sub.add_parser("ui", help="open the MLflow UI on this store (127.0.0.1)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind; 0.0.0.0 exposes the UI to the network")
    p.add_argument("--port", type=int, default=5000)
    return parser


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_spec(args.job, args.override)
    print(f"# {args.job}: valid {loaded.spec.kind} job"
          + (f" (overrides: {' '.join(loaded.overrides)})" if loaded.overrides else ""))
    print(dump_spec(loaded.spec), end="")
    return 0


def _train(loaded, address, dashboard_port, start) -> int:
    from trainyard import launcher, runs

    spec = loaded.spec
    with launcher.ray_session(address, spec.resources.cpus, dashboard_port):
        launcher.require_resources(spec.resource_demand())
        outcomes = start()
    headline = get_workload(spec.kind).headline_metric
    for outcome in outcomes:
        final = "  ".join(f"{k} {v:.4g}" for k, v in sorted(outcome.metrics.items())
                          if k == headline or k.startswith(("test/", "eval/")))
        print(f"[{outcome.run_name}] {outcome.status} in {outcome.seconds:.0f}s  {final}")
    uri = runs.tracking.resolve_uri(spec.tracking.uri)
    print(f"\nLook at the runs:  trainyard ui   (MLflow UI on http://127.0.0.1:5000, store {uri})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from trainyard import runs

    loaded = load_spec(args.job, args.override)
    seeds = args.seed
    if seeds and any(seed < 0 for seed in seeds):
        return _fail("--seed must be a non-negative integer", BAD_INPUT)
    return _train(loaded, args.address, args.dashboard_port, lambda: runs.run_job(loaded, seeds))


def _cmd_resume(args: argparse.Namespace) -> int:
    from trainyard import runs

    try:
        loaded, ref, info = runs.load_for_resume(args.run_id, args.tracking_uri)
    except SpecError:
        raise
    except Exception as err:  # MLflow raises its own exception types for unknown run ids
        return _fail(f"cannot resume run {args.run_id!r}: {str(err).splitlines()[0]}. Check the "
                     "run id (trainyard ui lists runs) and --tracking-uri.", BAD_INPUT)
    if info["status"] == "FINISHED":
        return _fail(f"run {args.run_id} already finished; start a new one with trainyard run",
                     BAD_INPUT)
    return _train(loaded, args.address, None, lambda: [runs.resume_job(loaded, ref, info)])


def _cmd_ui(args: argparse.Namespace) -> int:
    from trainyard import tracking

    uri = tracking.resolve_uri(args.tracking_uri)
    command = tracking.ui_command(uri, args.host, args.port)
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    os.execv(command[0], command)
    return 0  # not reached


COMMANDS = {"validate": _cmd_validate, "run": _cmd_run, "resume": _cmd_resume, "ui": _cmd_ui}


def main(argv: Sequence[str] | None = None) -> int:
    import time

    from trainyard import runs

    runs.LAUNCHED_AT = time.time()
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SpecError as err:
        return _fail(str(err), BAD_INPUT)
    except KeyboardInterrupt:
        return INTERRUPTED
    except Exception as err:
        from trainyard.launcher import ResourceError

        if isinstance(err, ResourceError):
            return _fail(str(err), NO_RESOURCES)
        raise


if __name__ == "__main__":
    sys.exit(main())

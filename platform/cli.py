"""The `trainyard` command line.

    trainyard validate JOB.yaml [-o key.path=value ...]
    trainyard run JOB.yaml [-o ...] [--seed N] [--address HOST:PORT]
    trainyard sweep JOB.yaml [-o ...] [--address ...]
    trainyard resume RUN_ID [--address ...]
    trainyard eval RUN_ID [--episodes N] [--epsilon E] [--video [GIF]] [--opponent NAME]
                         [--search-depth N] [--opening-plies N]
    trainyard play RUN_ID [--second]
    trainyard translate RUN_ID TEXT [--beam N] | sample RUN_ID [--n 64] [--out grid.png]
    trainyard submit JOB.yaml [-o ...] --address http://HEAD:8265 [--follow]
    trainyard jobs | logs JOB_ID [--follow] | stop JOB_ID   [--address ...]
    trainyard ui [--port 5000]
    trainyard compare RUN_ID RUN_ID ... | --experiment NAME [--metric KEY] [--out compare.png]

Exit codes: 0 success, 1 training failed, 2 bad input (spec, overrides, run id), 3 the cluster
cannot provide the job's resources, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from trainyard import cli_parser
from trainyard.loader import SpecError, dump_spec, load_spec
from trainyard.workloads import get_workload, headline_of

FAILED, BAD_INPUT, NO_RESOURCES, INTERRUPTED = 1, 2, 3, 130


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_spec(args.job, args.override, user_code=args.check_env)
    print(f"# {args.job}: valid {loaded.spec.kind} job"
          + (f" (overrides: {' '.join(loaded.overrides)})" if loaded.overrides else ""))
    print(dump_spec(loaded.spec), end="")
    for warning in loaded.spec.warnings():
        print(f"warning: {args.job}: {warning}", file=sys.stderr)
    return 0


def _preloads(spec) -> tuple:
    """What a command that trains or plays `spec` needs once Ray is up, readied while Ray starts
    (launcher.ray_session): MLflow's store opened (a fresh one migrated), the workload's modules."""
    from trainyard import tracking

    uri, workload = tracking.resolve_uri(spec.tracking.uri), get_workload(spec.kind)
    return (*tracking.PRELOAD, lambda: tracking.store_client(uri), *workload.preloads(spec))


def _shared_storage(loaded, address, allow: bool) -> None:
    """On a cluster of several nodes, refuse node-local storage (SubmitError) unless allowed."""
    if not address or allow:
        return
    import ray

    from trainyard import submit

    if sum(1 for node in ray.nodes() if node["Alive"]) > 1:
        submit.refuse_local_storage(loaded, "a job on a cluster of several nodes")


def _train(loaded, address, dashboard_port, start, allow_local=False) -> int:
    from trainyard import launcher, tracking

    spec = loaded.spec
    demand = spec.resource_demand()
    if address:  # this process drives the job from outside the cluster's resource accounting
        demand = {name: need - spec.driver_demand().get(name, 0)
                  for name, need in demand.items()}
    cpus = spec.resources.cpus or (os.cpu_count() or 1) + spec.data_cpus()
    if not address:  # (on a cluster the inputs are the workers' to find)
        spec.check_inputs()
    with launcher.ray_session(address, cpus, dashboard_port, _preloads(spec)):
        _shared_storage(loaded, address, allow_local)
        wanted = {name: need for name, need in demand.items() if need > 0}
        with launcher.cluster_demand(spec.worker_bundles() if address else []):
            # Ray started here has all it will ever have: a gap is final at once
            launcher.require_resources(wanted, launcher.CLUSTER_WAIT_S if address else 0.0)
            outcomes = start()
    headline = headline_of(spec)
    for outcome in outcomes:
        final = "  ".join(f"{k} {v:.4g}" for k, v in sorted(outcome.metrics.items())
                          if k == headline or k.startswith(("test/", "eval/")))
        print(f"[{outcome.run_name}] {outcome.status} in {outcome.seconds:.0f}s  {final}")
    uri = tracking.resolve_uri(spec.tracking.uri)
    command = "trainyard ui" + ("" if uri == tracking.resolve_uri(None)
                                else f" --tracking-uri {uri}")
    print(f"\nLook at the runs:  {command}   (MLflow UI on http://127.0.0.1:5000, store {uri})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from trainyard import runs

    loaded = load_spec(args.job, args.override, user_code=True)
    for warning in loaded.spec.warnings():
        print(f"warning: {args.job}: {warning}", file=sys.stderr)
    seeds = args.seed
    if seeds and any(seed < 0 for seed in seeds):
        return _fail("--seed must be a non-negative integer", BAD_INPUT)
    return _train(loaded, args.address, args.dashboard_port, lambda: runs.run_job(loaded, seeds),
                  args.allow_local_storage)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from trainyard import launcher, sweep

    loaded = load_spec(args.job, args.override, user_code=True)
    spec = loaded.spec
    if spec.sweep is None:
        raise SpecError(args.job, [
            f"{args.job}: no sweep: section; add one, e.g.\n    sweep:\n      metric: "
            f"{headline_of(spec)}\n      num_samples: 8\n      "
            "scheduler: asha\n      space: {train.lr: loguniform(1e-4, 1e-2)}"])
    if not args.address:
        spec.check_inputs()
    with launcher.ray_session(args.address, spec.resources.cpus, args.dashboard_port,
                              _preloads(spec)):
        _shared_storage(loaded, args.address, args.allow_local_storage)
        launcher.require_resources(spec.resource_demand(),
                                   launcher.CLUSTER_WAIT_S if args.address else 0.0)
        return sweep.run_sweep(loaded)


def _read_run(args: argparse.Namespace, verb: str):
    """A run's spec, reference and tags (`runs.load_for_resume`); ValueError saying what to
    check when the store has no such run. A bad job.yaml stays a SpecError."""
    from trainyard import runs

    try:
        return runs.load_for_resume(args.run_id, args.tracking_uri)
    except SpecError:
        raise
    except Exception as err:  # MLflow raises its own exception types for unknown run ids
        raise ValueError(f"cannot {verb} run {args.run_id!r}: {str(err).splitlines()[0]}. Check "
                         "the run id (trainyard ui lists runs) and --tracking-uri.") from None


def _cmd_resume(args: argparse.Namespace) -> int:
    from trainyard import runs

    try:
        loaded, ref, info = _read_run(args, "resume")
    except ValueError as err:
        return _fail(str(err), BAD_INPUT)
    if info["status"] == "FINISHED":
        return _fail(f"run {args.run_id} already finished; start a new one with trainyard run",
                     BAD_INPUT)
    if info["tags"].get("trainyard.sweep") == "parent":
        from trainyard import launcher, seal, sweep

        spec = loaded.spec
        if not args.trust_sweep_state:  # before Ray starts: a refusal should be quick
            seal.verify(sweep.tune_folder(ref, info))
        with launcher.ray_session(args.address, spec.resources.cpus, None, _preloads(spec)):
            _shared_storage(loaded, args.address, args.allow_local_storage)
            return sweep.resume_sweep(loaded, ref, info)
    if info["tags"].get("trainyard.sweep_id"):
        return _fail(f"run {args.run_id} is a trial of sweep {info['tags']['trainyard.sweep_id']}"
                     f"; resume the sweep: trainyard resume {info['tags']['trainyard.sweep_id']}",
                     BAD_INPUT)
    runs.vet_checkpoints(info)
    return _train(loaded, args.address, None, lambda: [runs.resume_job(loaded, ref, info)],
                  args.allow_local_storage)


def _cmd_submit(args: argparse.Namespace) -> int:
    from trainyard import submit

    loaded = load_spec(args.job, args.override, user_code=True)
    if args.allow_local_storage:
        for problem in submit.local_storage(loaded):
            print(f"warning: {problem}", file=sys.stderr)
    else:  # a cluster's job may run on any of its nodes
        submit.refuse_local_storage(loaded, "trainyard submit")
    code = submit.user_code(loaded, args.code)
    jobs = submit.client(args.address)
    job_id = submit.submit(loaded, args.address, code)
    address = args.address or os.environ.get("RAY_ADDRESS")
    print(f"submitted {loaded.spec.name} as Ray job {job_id} to {address}\n"
          f"  follow it:  trainyard logs {job_id} --follow --address {address}\n"
          f"  stop it:    trainyard stop {job_id} --address {address}")
    return submit.follow(jobs, job_id) if args.follow else 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from trainyard import submit

    rows = sorted(submit.client(args.address).list_jobs(), key=lambda j: j.start_time or 0)
    print(f"{'job id':<28} {'status':<10} {'job':<24} entrypoint")
    for job in rows:
        name = (job.metadata or {}).get("trainyard_job", "-")
        print(f"{job.submission_id or job.job_id:<28} {str(job.status).split('.')[-1]:<10} "
              f"{name:<24} {job.entrypoint}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from trainyard import submit

    jobs = submit.client(args.address)
    if args.follow:
        return submit.follow(jobs, args.job_id)
    print(submit.about_job(args.job_id, jobs.get_job_logs), end="")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from trainyard import submit

    stopped = submit.about_job(args.job_id, submit.client(args.address).stop_job)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'already ended'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainyard import launcher, runs

    if args.episodes is not None and args.episodes < 1:
        return _fail("--episodes must be at least 1", BAD_INPUT)
    if args.epsilon is not None and not 0 <= args.epsilon <= 1:
        return _fail("--epsilon must be between 0 and 1", BAD_INPUT)
    found = _run_and_hook(args, "evaluate", "trainyard eval plays RL agents; its test "
                          "metrics are in MLflow already")
    if isinstance(found, int):
        return found
    spec, info, evaluate = found
    for flag, value, top in (("--search-depth", args.search_depth, 4),
                             ("--opening-plies", args.opening_plies, 8)):
        if value is not None and getattr(spec, "selfplay", None) is None:
            return _fail(f"{flag} is for two-player games (agent.env OpenSpiel/...)", BAD_INPUT)
        if value is not None and not 0 <= value <= top:
            return _fail(f"{flag} must be between 0 and {top}", BAD_INPUT)
    if args.search_depth is not None:
        spec.agent.play_search_depth = args.search_depth
    if args.opening_plies is not None:
        spec.evaluation.opening_plies = args.opening_plies
    runs.vet_checkpoints(info)
    video = None if args.video is None else Path(args.video or f"eval-{args.run_id}.gif")
    with launcher.ray_session(args.address, spec.resources.cpus, None, _preloads(spec)):
        evaluate(spec, info, args.episodes, args.epsilon, video, args.opponent)
    return 0


def _run_and_hook(args: argparse.Namespace, hook: str, refusal: str):
    """The run's spec and tags and its workload's `hook` (evaluate, play); or the exit code
    of a one-line error when the run cannot be read or its kind has no such hook."""
    try:
        loaded, _, info = _read_run(args, "read")
    except ValueError as err:
        return _fail(str(err), BAD_INPUT)
    spec = loaded.spec
    function = getattr(get_workload(spec.kind), hook)
    if function is None:
        return _fail(f"run {args.run_id} is a {spec.kind} job: {refusal}", BAD_INPUT)
    return spec, info, function


def _cmd_play(args: argparse.Namespace) -> int:
    found = _run_and_hook(args, "play", "trainyard play is for agents of two-player games")
    if isinstance(found, int):
        return found
    spec, info, play = found
    from trainyard import runs

    runs.vet_checkpoints(info)
    try:
        play(spec, info, not args.second)
    except EOFError:
        print("\ngame abandoned")
    return 0


def _use_model(args: argparse.Namespace, hook: str, purpose: str, call):
    """A trained run's model through its workload's `hook` (translate, sample): (what
    `call(function, spec, ref)` gives, 0), or (None, exit code) after one line for the user."""
    try:
        loaded, ref, _ = _read_run(args, "read")
    except ValueError as err:
        return None, _fail(str(err), BAD_INPUT)
    function = getattr(get_workload(loaded.spec.kind), hook)
    if function is None:
        return None, _fail(f"run {args.run_id} is a {loaded.spec.kind} job: trainyard {hook} "
                           f"is for {purpose}", BAD_INPUT)
    try:
        return call(function, loaded.spec, ref), 0
    except ValueError as err:
        return None, _fail(f"run {args.run_id}: {err}", BAD_INPUT)


def _cmd_translate(args: argparse.Namespace) -> int:
    text, code = _use_model(args, "translate", "sequence-to-sequence runs",
                            lambda translate, spec, ref: translate(spec, ref, args.text,
                                                                   args.beam))
    if text is not None:
        print(text)
    return code


def _cmd_sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        return _fail("--n must be at least 1", BAD_INPUT)
    images, code = _use_model(args, "sample", "generative runs (model.arch vae or dcgan)",
                              lambda sample, spec, ref: sample(spec, ref, args.n, args.seed))
    if images is None:
        return code
    from PIL import Image

    from trainyard.media import grid

    picture = grid(images.numpy(), max(1, round(args.n ** 0.5)), max(1, 32 // images.shape[-1]))
    out = args.out or f"samples-{args.run_id[:8]}.png"
    Image.fromarray(picture).save(out)
    print(f"{args.n} samples of run {args.run_id}: {out}")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from trainyard import tracking

    uri = tracking.resolve_uri(args.tracking_uri)
    command = tracking.ui_command(uri, args.host, args.port)
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    os.execv(command[0], command)
    return 0  # not reached


def _cmd_compare(args: argparse.Namespace) -> int:
    from trainyard import compare, tracking

    uri = tracking.resolve_uri(args.tracking_uri)
    text, png = compare.compare(uri, args.run_ids, args.experiment, args.metric, args.mode,
                                args.out)
    print(text, end="")
    print(f"plot: {png}" if png else "plot: none (no run has points of that metric)")
    return 0


COMMANDS = {"validate": _cmd_validate, "run": _cmd_run, "resume": _cmd_resume, "ui": _cmd_ui,
            "submit": _cmd_submit, "jobs": _cmd_jobs, "logs": _cmd_logs, "stop": _cmd_stop}
COMMANDS["compare"] = _cmd_compare
COMMANDS["sweep"] = _cmd_sweep
COMMANDS["eval"] = _cmd_eval
COMMANDS["play"] = _cmd_play
COMMANDS["translate"] = _cmd_translate
COMMANDS["sample"] = _cmd_sample


def main(argv: Sequence[str] | None = None) -> int:
    import time

    from trainyard import launcher

    # (runs, and with it MLflow's 3 s import, is loaded only by the commands that train)
    launcher.LAUNCHED_AT = time.time()
    args = cli_parser.parser().parse_args(argv)
    launcher.VERBOSE = args.verbose
    if not args.verbose:  # MLflow's download bars on eval/play/resume are not the user's lines
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return COMMANDS[args.command](args)
    except SpecError as err:
        return _fail(str(err), BAD_INPUT)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:  # `trainyard validate job.yaml | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        from trainyard.launcher import ResourceError
        from trainyard.spec import UserInputError
        from trainyard.submit import SubmitError

        if isinstance(err, ResourceError):
            return _fail(str(err), NO_RESOURCES)
        if isinstance(err, (SubmitError, UserInputError)):
            return _fail(str(err), BAD_INPUT)
        from trainyard.runs import RunFailed

        if isinstance(err, RunFailed):
            if args.verbose:
                import traceback

                traceback.print_exception(err.__cause__, file=sys.stderr)
            return _fail(str(err), FAILED)
        raise


if __name__ == "__main__":
    sys.exit(main())

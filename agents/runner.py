"""The RL training loop: an RLlib algorithm driven by the job spec, logged to MLflow.

RLlib does the sampling and learning (`Algorithm.train()`); this loop adds what a trainyard
run needs around it: stop conditions in the spec's units, one progress line per iteration,
metrics under trainyard's names, and atomic checkpoints that `trainyard resume` continues from.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainyard import checkpoints, tracking
from trainyard.agents.rl_config import build_config, quiet_rllib, uses_lean_step

if TYPE_CHECKING:
    from trainyard.agents.spec import RLJob
    from trainyard.runs import RunContext

# RLlib result key path -> trainyard metric name (see README "Metrics").
METRICS = {
    ("env_runners", "episode_return_mean"): "train/return_mean",
    ("env_runners", "episode_return_max"): "train/return_max",
    ("env_runners", "episode_len_mean"): "train/episode_len_mean",
    ("learners", "default_policy", "qf_loss"): "train/loss",
    ("learners", "default_policy", "qf_mean"): "train/q_mean",
    ("learners", "default_policy", "td_error_mean"): "train/td_error_mean",
    ("learners", "default_policy", "replay_ratio"): "train/replay_ratio",
    # recurrent DQN: replayed sequences' mean priority, steps trained per sequence
    ("learners", "default_policy", "seq_priority_mean"): "train/seq_priority_mean",
    ("learners", "default_policy", "seq_trained_steps_mean"): "train/seq_trained_steps_mean",
}
# Self-play: the learning module is `main`; the sum of both players' returns says nothing.
SELFPLAY_METRICS = {
    ("env_runners", "episode_len_mean"): "train/episode_len_mean",
    ("learners", "main", "qf_loss"): "train/loss",
    ("learners", "main", "qf_mean"): "train/q_mean",
    ("learners", "main", "td_error_mean"): "train/td_error_mean",
    ("learners", "main", "replay_ratio"): "train/replay_ratio",
}
STEPS_KEY = ("env_runners", "num_env_steps_sampled_lifetime")
# Fault counters, logged when the job has remote env runners (counted since the algorithm was
# built: a resumed run counts again from 0).
FAULT_METRICS = {
    ("fault_tolerance", "num_remote_worker_restarts"): "faults/env_runner_restarts",
    ("fault_tolerance", "num_healthy_workers"): "faults/healthy_env_runners",
    ("env_runners", "num_env_step_failures"): "faults/env_step_failures",
}


def _dig(result: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


LEAGUE_FILE = "league.json"


def _save(algo, root: Path, progress: dict, keep: int, league=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial_", dir=root))
    algo.save_to_path(str(partial), use_msgpack=True)  # state as msgpack: loading runs no code
    if league is not None:
        (partial / LEAGUE_FILE).write_text(json.dumps(league.to_json()))
    folder = checkpoints.commit_folder(partial, root / f"checkpoint_{progress['iteration']:06d}",
                                       progress)
    checkpoints.prune(root, keep)
    return folder


def _restore(algo, ctx: "RunContext", root: Path, league=None) -> dict | None:
    """Load the checkpoint this run starts from, if any; return its progress counters."""
    if ctx.restore_from:  # a sweep trial: Tune hands over the checkpoint (its own, or PBT's)
        found = (Path(ctx.restore_from), checkpoints.read_marker(ctx.restore_from))
    elif ctx.resume:
        found = checkpoints.latest_valid(root)
    else:
        return None
    if found is None:
        return None
    folder, progress = found
    checkpoints.vet_rllib_checkpoint(folder)  # before anything of it is decoded
    if league is not None:  # the snapshot modules must exist before their weights load
        league.load_json(json.loads((Path(folder) / LEAGUE_FILE).read_text()))
        league.restore_modules(algo)
    algo.restore_from_path(str(folder))
    if league is not None:
        league.restored(algo)
    return progress


def train(spec: "RLJob", ctx: "RunContext") -> dict[str, float]:
    """Train until a stop condition; return the last metrics."""
    from ray.tune.registry import register_env

    from trainyard.agents.env_factory import make_env_creator

    root = Path(ctx.storage_path) / ctx.storage_name
    _share_cores(spec)
    quiet_rllib()
    register_env(spec.agent.env, make_env_creator(spec.agent))  # for remote env runners too
    algo = build_config(spec, ctx.seed).build_algo()
    _tag_kernels(algo, spec, ctx)
    _tag_nodes(algo, ctx)
    league = _league(spec, ctx.seed)
    progress = (_restore(algo, ctx, root, league)
                or {"iteration": 0, "env_steps": 0, "seconds": 0.0})
    names = METRICS if league is None else SELFPLAY_METRICS
    logger = ctx.logger()
    logger.log({"perf/startup_s": ctx.startup_seconds()}, step=progress["env_steps"])
    started, last_time, last_steps = time.monotonic(), time.monotonic(), progress["env_steps"]
    metrics: dict[str, float] = {}
    evaluator = _Evaluator(spec, ctx)
    faults = _FaultRecorder(ctx, algo) if spec.resources.env_runners else None
    if faults is not None and spec.fault_tolerance.hang_timeout_s:
        faults.watchdog = _HangWatchdog(algo, spec.fault_tolerance.hang_timeout_s)
    try:
        while True:
            iter_start = time.monotonic()
            result = algo.train()
            progress["iteration"] += 1
            steps = int(_dig(result, STEPS_KEY) or 0)
            now = time.monotonic()
            progress["env_steps"] = steps
            progress["seconds"] += now - last_time
            # an iteration in which no episode ended has no return: no point, not a NaN one
            metrics = {name: float(v) for path, name in names.items()
                       if isinstance(v := _dig(result, path), (int, float)) and math.isfinite(v)}
            metrics["perf/env_steps_per_s"] = (steps - last_steps) / max(now - last_time, 1e-9)
            metrics["perf/iteration_s"] = now - iter_start
            metrics["train/iteration"] = progress["iteration"]
            if faults is not None:
                metrics.update(faults.record(result))
            if league is not None:
                snapshots = len(league.state.snapshots)
                metrics.update(league.after_iteration(algo, result, steps))
                if done_rating := len(league.state.snapshots) > snapshots:
                    _log_league(league, ctx)
            done = _should_stop(spec, progress, metrics, now - started)
            if done or progress["iteration"] % spec.evaluation.every_iterations == 0:
                if league is None:
                    metrics.update(evaluator.run(algo, steps, final=done))
                else:
                    games = (spec.evaluation.final_episodes or spec.evaluation.episodes
                             if done else spec.evaluation.episodes)
                    metrics.update(league.evaluate(algo, games))
                    if done and spec.agent.play_search_depth:  # beside the raw network's
                        metrics.update(league.evaluate(algo, games,
                                                       spec.agent.play_search_depth))
                    if done and not done_rating:
                        _log_league(league, ctx)
                target = spec.stop.eval_return_target
                score = metrics.get("eval/return_mean", -math.inf)
                if not done and target is not None and score >= target:
                    done = True  # solved: this checkpoint is the one that scored
                    tracking.set_tags(ctx.run, {f"{tracking.TAG}stop_reason":
                                                f"eval/return_mean reached {target:g}"})
                    evaluator.video_of_final(algo, steps)
            last_time, last_steps = time.monotonic(), steps
            logger.log(metrics, step=steps)
            ctx.emit(f"iter {progress['iteration']} steps {steps:,}", metrics)
            saved = None
            if done or progress["iteration"] % spec.checkpoint.every_iterations == 0:
                saved = _save(algo, root, progress, spec.checkpoint.keep, league)
            ctx.report({**metrics, "env_steps": steps}, str(saved) if saved else None)
            if done:
                return metrics
    finally:
        if faults is not None and faults.watchdog is not None:
            faults.watchdog.stop()
        algo.stop()


def _share_cores(spec: "RLJob") -> None:
    """The driver (sampling with no remote runners, and the local learner) computes with
    `resources.cpus` torch threads when the job is given fewer cores than the machine has.
    torch's thread pool otherwise takes every core and its idle threads spin: two DQN CartPole
    runs side by side on 2 cores ran at 19-21 env steps/s each against 147 alone (7x, not
    2x); with one thread each, ~2x (README "Running jobs side by side")."""
    import os

    import torch

    cpus = spec.resources.cpus
    if cpus and cpus < (os.cpu_count() or cpus):
        torch.set_num_threads(cpus)


def _tag_kernels(algo, spec: "RLJob", ctx: "RunContext") -> None:
    """What the run computes with, as tags: the precision `agent.precision` resolved to on the
    learner's hardware, and which DQN training step runs (trainyard's lean one or RLlib's)."""
    from trainyard.agents import rllib_private

    try:
        precision = getattr(rllib_private.local_learner(algo), "precision", "fp32")
    except RuntimeError:  # remote learners decide on their own machines
        precision = f"{spec.agent.precision} (on the remote learners)"
    import torch

    tracking.set_tags(ctx.run, {f"{tracking.TAG}precision": precision,
                                f"{tracking.TAG}torch_threads": torch.get_num_threads(),
                                f"{tracking.TAG}dqn_step": "lean" if uses_lean_step(spec)
                                else "rllib"})


def _tag_nodes(algo, ctx: "RunContext") -> None:
    """Where the run's processes are, as Ray node ids: `trainyard.node.driver` (the algorithm,
    and the learner when it is local) and `trainyard.node.env_runner_<i>`."""
    import ray

    def where(runner) -> tuple[int, str]:
        import ray

        return runner.worker_index, ray.get_runtime_context().get_node_id()

    tags = {f"{tracking.TAG}node.driver": ray.get_runtime_context().get_node_id()}
    if algo.env_runner_group.num_remote_env_runners():
        for index, node in algo.env_runner_group.foreach_env_runner(
                where, local_env_runner=False, timeout_seconds=30):
            tags[f"{tracking.TAG}node.env_runner_{index}"] = node
    tracking.set_tags(ctx.run, tags)


def _league(spec: "RLJob", seed: int):
    if spec.selfplay is None:
        return None
    from trainyard.agents.league import League

    return League(spec.agent, spec.selfplay, seed, spec.heldout_opponents(),
                  spec.evaluation.opening_plies)


def _log_league(league, ctx: "RunContext") -> None:
    """The ratings table (CSV) and the Elo plot, as the run's `league/` artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp, "elo_ratings.csv")
        table.write_text(league.ratings_table())
        tracking.log_artifact(ctx.run, table, "league")
        if league.state.snapshots:
            plot = Path(tmp, "elo.png")
            league.plot(plot)
            tracking.log_artifact(ctx.run, plot, "league")


class _Evaluator:
    """Periodic evaluation episodes in the driver (see trainyard.agents.evaluate), with a GIF
    of one episode logged to MLflow every `evaluation.video_every` evaluations and at the end."""

    def __init__(self, spec: "RLJob", ctx: "RunContext"):
        self.spec, self.ctx, self.count = spec, ctx, 0
        self.recorded = False  # the last evaluation left a GIF

    def run(self, algo, steps: int, final: bool) -> dict[str, float]:
        from trainyard.agents.evaluate import play

        config = self.spec.evaluation
        self.count += 1
        record = config.video and (final or (config.video_every > 0
                                             and self.count % config.video_every == 0))
        started = time.monotonic()
        episodes = (config.final_episodes or config.episodes) if final else config.episodes
        result = play(algo.get_module(), self.spec.agent, episodes, config.epsilon,
                      config.max_steps, seed=10_000 * self.ctx.seed + self.count, record=record)
        metrics = {**result.metrics(), "perf/eval_s": time.monotonic() - started}
        self._log_gif(result.frames, steps)
        return metrics

    def video_of_final(self, algo, steps: int) -> None:
        """The run ends on an evaluation that was not known to be the last (its return reached
        `stop.eval_return_target`): one more episode of it, recorded, so the run ends with a
        GIF as a run that ends on its step budget does."""
        from trainyard.agents.evaluate import play

        config = self.spec.evaluation
        if self.recorded or not config.video:
            return
        result = play(algo.get_module(), self.spec.agent, 1, config.epsilon, config.max_steps,
                      seed=10_000 * self.ctx.seed + self.count, record=True)
        self._log_gif(result.frames, steps)

    def _log_gif(self, frames, steps: int) -> None:
        from trainyard.media import write_gif

        self.recorded = bool(frames)
        if frames:
            with tempfile.TemporaryDirectory() as tmp:
                gif = write_gif(frames, Path(tmp, f"eval_{steps:010d}_steps.gif"))
                tracking.log_artifact(self.ctx.run, gif, "videos")


class _FaultRecorder:
    """Turns RLlib's fault counters into `faults/*` metrics, and tags the run when an env runner
    was restarted (`trainyard.faults.env_runner_restarts`: how many times, so far)."""

    def __init__(self, ctx: "RunContext", algo):
        self.ctx, self.algo = ctx, algo
        self.restarts = 0
        self.watchdog: _HangWatchdog | None = None

    def record(self, result: dict) -> dict[str, float]:
        found = {name: float(v) for path, name in FAULT_METRICS.items()
                 if isinstance(v := _dig(result, path), (int, float))}
        if self.watchdog is not None:
            found["faults/hung_env_runners_killed"] = float(self.watchdog.killed)
        restarts = int(found.get("faults/env_runner_restarts", 0))
        if restarts > self.restarts:
            self.restarts = restarts
            tracking.set_tags(self.ctx.run,
                              {f"{tracking.TAG}faults.env_runner_restarts": str(restarts)})
            _tag_nodes(self.algo, self.ctx)  # a runner may have come back on another node
        return found


class _HangWatchdog:
    """Kills a remote env runner that stops answering, so that Ray restarts it.

    RLlib drops a late runner's samples (`sample_timeout_s`) but goes on waiting for the runner:
    one whose env never returns from `step` would stall the run for good, as an env runner runs
    one call at a time. This thread pings every runner; a ping unanswered for `timeout_s` (it
    waits behind the hung call) gets the runner killed. Ray restarts the actor and RLlib brings
    it back into service like any failed runner (counted in `faults/env_runner_restarts`).
    """

    def __init__(self, algo, timeout_s: float):
        import threading

        # The runners' actor handles (RLlib 2.60 keeps them in its actor manager); a restarted
        # actor keeps its handle.
        from trainyard.agents import rllib_private

        self.handles = rllib_private.env_runner_actors(algo)
        self.timeout_s = timeout_s
        self.killed = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, name="trainyard-hang-watchdog", daemon=True).start()

    def _watch(self) -> None:
        import ray

        while not self.stopped.wait(min(5.0, self.timeout_s / 4)):
            try:
                pings = {handle.ping.remote(): handle for handle in self.handles}
                _, hung = ray.wait(list(pings), num_returns=len(pings), timeout=self.timeout_s)
                for ref in hung:
                    if self.stopped.is_set():
                        return
                    print(f"env runner did not answer for {self.timeout_s:g} s (an env hung "
                          "in step?): restarting it", flush=True)
                    ray.kill(pings[ref], no_restart=False)
                    self.killed += 1
            except Exception:  # Ray is shutting down under us: the run is ending
                return

    def stop(self) -> None:
        self.stopped.set()


def _should_stop(spec: "RLJob", progress: dict, metrics: dict, elapsed_s: float) -> bool:
    stop = spec.stop
    return bool(
        (stop.env_steps and progress["env_steps"] >= stop.env_steps)
        or (stop.iterations and progress["iteration"] >= stop.iterations)
        or (stop.minutes and elapsed_s >= 60 * stop.minutes)
        or (stop.return_target is not None
            and metrics.get("train/return_mean", float("-inf")) >= stop.return_target))

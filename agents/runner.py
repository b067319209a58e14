"""The RL training loop: an RLlib algorithm driven by the job spec, logged to MLflow.

RLlib does the sampling and learning (`Algorithm.train()`); this loop adds what a trainyard
run needs around it: stop conditions in the spec's units, one progress line per iteration,
metrics under trainyard's names, and atomic checkpoints that `trainyard resume` continues from.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainyard import checkpoints, tracking

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
}
STEPS_KEY = ("env_runners", "num_env_steps_sampled_lifetime")
# Fault counters, logged when the job has remote env runners (counted since the algorithm was
# built: a resumed run counts again from 0).
FAULT_METRICS = {
    ("fault_tolerance", "num_remote_worker_restarts"): "faults/env_runner_restarts",
    ("fault_tolerance", "num_healthy_workers"): "faults/healthy_env_runners",
    ("env_runners", "num_env_step_failures"): "faults/env_step_failures",
}


# RLlib 2.60 warns about its own defaults on every build; a user can do nothing about these.
_NOISE = ("You are running DQN on the new API stack", "RLModule(config=[RLModuleConfig object])",
          "Install gputil for GPU system monitoring")


def _quiet_rllib() -> None:
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)

    for name in ("ray.rllib.algorithms.algorithm_config", "ray._common.deprecation",
                 "ray.rllib.utils.deprecation", "ray.tune.utils.util"):
        logger = logging.getLogger(name)
        if keep not in logger.filters:
            logger.addFilter(keep)


def _dig(result: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def build_config(spec: "RLJob", seed: int):
    """The RLlib AlgorithmConfig for the spec (new API stack)."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from trainyard.agents.envs import is_atari
    from trainyard.agents.learner import DQNLearner

    agent, res, faults = spec.agent, spec.resources, spec.fault_tolerance
    replay = replay_config(agent, "EpisodeReplayBuffer", "PrioritizedEpisodeReplayBuffer")
    config = (
        DQNConfig()
        .environment(agent.env, env_config=agent.env_config)
        .env_runners(num_env_runners=res.env_runners,
                     num_envs_per_env_runner=res.envs_per_env_runner,
                     num_cpus_per_env_runner=res.cpus_per_env_runner,
                     num_gpus_per_env_runner=res.gpus_per_env_runner,
                     custom_resources_per_env_runner=res.custom,
                     rollout_fragment_length=agent.rollout_fragment_length,
                     sample_timeout_s=faults.sample_timeout_s)
        .fault_tolerance(restart_failed_env_runners=faults.restart_failed_env_runners,
                         max_num_env_runner_restarts=faults.max_env_runner_restarts,
                         delay_between_env_runner_restarts_s=faults.restart_delay_s,
                         restart_failed_sub_environments=faults.restart_failed_envs,
                         env_runner_health_probe_timeout_s=faults.health_probe_timeout_s,
                         env_runner_restore_timeout_s=faults.restore_timeout_s)
        .learners(num_learners=res.learners, num_gpus_per_learner=res.gpus_per_learner)
        .training(lr=agent.lr, gamma=agent.gamma, train_batch_size_per_learner=agent.batch_size,
                  n_step=agent.n_step, double_q=agent.double_q, dueling=agent.dueling,
                  target_network_update_freq=agent.target_update_every,
                  num_steps_sampled_before_learning_starts=agent.learning_starts,
                  epsilon=[(0, agent.epsilon_start), (agent.epsilon_steps, agent.epsilon_end)],
                  training_intensity=agent.training_intensity,
                  replay_buffer_config=replay)
        .learners(learner_class=DQNLearner,
                  learner_config_dict={"optimizer": agent.optimizer,
                                       "optimizer_eps": agent.optimizer_eps,
                                       "rmsprop_decay": agent.rmsprop_decay,
                                       "value_bound": agent.value_bound,
                                       "precision": agent.precision,
                                       "channels_last": agent.channels_last,
                                       "compile": agent.compile})
        .framework(torch_skip_nan_gradients=True)  # DQNLearner checks them, once
        .rl_module(model_config=_model_config(agent, DefaultModelConfig))
        .debugging(seed=seed)
    )
    if is_atari(agent.env):
        _atari(config, agent, lean=uses_lean_step(spec))
    from trainyard.agents.doom import is_doom

    if not is_atari(agent.env) and not is_doom(agent.env) and agent.recurrent is None \
            and spec.selfplay is None:  # RLlib's Q-network, acting and kernels made lean
        from ray.rllib.core.rl_module.rl_module import RLModuleSpec

        from trainyard.agents.learner import QModule

        config.rl_module(rl_module_spec=RLModuleSpec(
            module_class=QModule, model_config=_model_config(agent, DefaultModelConfig)))

    if agent.recurrent is not None:
        _recurrent(config, agent)
    elif is_doom(agent.env):  # uint8 screens, scaled on the way into the network
        from ray.rllib.core.rl_module.rl_module import RLModuleSpec

        from trainyard.agents.atari import AtariQModule

        config.rl_module(rl_module_spec=RLModuleSpec(
            module_class=AtariQModule, model_config=_model_config(agent, DefaultModelConfig)))
    if spec.selfplay is not None:
        from trainyard.agents.selfplay import configure

        configure(config, agent, spec.selfplay, _model_config(agent, DefaultModelConfig), seed,
                  replay_config(agent, "trainyard.agents.selfplay.MainOnlyEpisodeReplayBuffer",
                                "trainyard.agents.selfplay."
                                "MainOnlyPrioritizedEpisodeReplayBuffer"))
    if uses_lean_step(spec):
        _lean(config, spec)
    return config


def _atari(config, agent, lean: bool = False) -> None:
    """ALE games: ale-py's vector env hands out single frames; they are stacked for acting
    (an env-to-module connector) and for learning (the replay buffer), never stored stacked."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from trainyard.agents.atari import (
        ActionsToNumpy,
        AtariQModule,
        StackFrames,
        return_freed_frames_to_the_os,
    )

    if not lean:  # RLlib's episode replay lives in this process (the driver). Not for the
        # lean step's preallocated replay: a fixed mmap threshold also maps and unmaps every
        # activation tensor of every update (page faults: 45 ms against 33 ms per Nature-CNN
        # update, measured in one process before and after)
        return_freed_frames_to_the_os()
    if agent.recurrent is not None:  # single frames (84, 84, 1) into the LSTM network,
        # sequences of them in replay (see _recurrent)
        config.env_runners(gym_env_vectorize_mode="vector_entry_point")
        return
    k = agent.atari.frame_stack
    config.env_runners(gym_env_vectorize_mode="vector_entry_point",
                       env_to_module_connector=lambda env, spaces=None, device=None:
                       StackFrames(num_frames=k, device=device),
                       module_to_env_connector=lambda env, spaces=None: ActionsToNumpy(),
                       add_default_connectors_to_env_to_module_pipeline=False,
                       add_default_connectors_to_module_to_env_pipeline=False,
                       # Chunks of a running game are appended to its stored episode; a
                       # numpy'd episode is copied whole on each append (RLlib pops and
                       # concatenates its arrays): 18.5 ms per 4-step chunk at 3,000 steps
                       # against 0.8 ms as lists, and Pong games run to thousands of steps.
                       episodes_to_numpy=False,
                       episode_lookback_horizon=k)
    # by dotted name: RLlib tells episode buffers from the old stack's by "EpisodeReplayBuffer"
    # in the type's name
    config.training(replay_buffer_config=replay_config(
        agent, "trainyard.agents.atari.FrameStackEpisodeReplayBuffer",
        "trainyard.agents.atari.FrameStackPrioritizedEpisodeReplayBuffer", num_frames=k))
    config.rl_module(rl_module_spec=RLModuleSpec(
        module_class=AtariQModule, model_config=_model_config(agent, DefaultModelConfig)))


def uses_lean_step(spec: "RLJob") -> bool:
    """The lean DQN step (trainyard.agents.lean_dqn) runs feed-forward single-agent DQN with
    uniform replay and the learner in the driver (Atari, MinAtar, classic control); the rest
    (prioritized or sequence replay, self-play leagues, Doom's screen connectors, remote
    learners) takes RLlib's own step."""
    from trainyard.agents.doom import is_doom

    agent = spec.agent
    return (agent.lean_step and agent.recurrent is None and not agent.prioritized_replay
            and spec.selfplay is None and not is_doom(agent.env)
            and spec.resources.learners == 0)


def _lean(config, spec: "RLJob") -> None:
    from trainyard.agents.envs import is_atari
    from trainyard.agents.lean_dqn import LeanDQN

    agent, res = spec.agent, spec.resources
    config.algo_class = LeanDQN
    if not is_atari(agent.env):  # (Atari has its own frame-stacking pair)
        from trainyard.agents.atari import ActionsToNumpy
        from trainyard.agents.learner import LatestObservation

        # one connector each way in place of RLlib's default pieces and their timers
        config.env_runners(
            env_to_module_connector=lambda env, spaces=None, device=None:
            LatestObservation(device=device),
            module_to_env_connector=lambda env, spaces=None: ActionsToNumpy(),
            add_default_connectors_to_env_to_module_pipeline=False,
            add_default_connectors_to_module_to_env_pipeline=False)
    config.learner_config_dict.update(
        sync_every=agent.sync_every, async_sampling=agent.async_sampling,
        lean_replay={"capacity": agent.replay_capacity,
                     # Atari's episodes hold single frames (stacked by a connector for
                     # acting); other envs' hold what the Q-network takes
                     "num_frames": agent.atari.frame_stack if is_atari(agent.env) else 1,
                     "n_step": agent.n_step, "gamma": agent.gamma,
                     "lanes": res.envs_per_env_runner * max(res.env_runners, 1)})


def _recurrent(config, agent) -> None:
    """An LSTM Q-network on replayed sequences: RLlib's stateful DQN path (stored states,
    burn-in) with trainyard's sequence replay (prioritized or uniform) and sequence loss
    (n-step targets along the sequence), see trainyard.agents.recurrent."""
    rec = agent.recurrent
    replay = {"type": "trainyard.agents.recurrent.SequenceReplayBuffer",
              "capacity": agent.replay_capacity, "seq_len": rec.seq_len,
              "overlap": rec.overlap,
              "alpha": agent.priority_alpha if agent.prioritized_replay else 0.0,
              "beta": agent.priority_beta if agent.prioritized_replay else 0.0}
    config.training(n_step=1,  # RLlib's sequence sampler takes 1; the loss does n steps
                    burn_in_len=rec.burn_in,
                    # RLlib counts a sequence batch in time steps
                    train_batch_size_per_learner=agent.batch_size * rec.seq_len,
                    replay_buffer_config=replay)
    config.learner_config_dict.update(recurrent=True, seq_n_step=agent.n_step,
                                      priority_eta=rec.priority_eta)
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from trainyard.agents.recurrent import RecurrentQModule

    config.rl_module(rl_module_spec=RLModuleSpec(
        module_class=RecurrentQModule, model_config=_model_config(agent, DefaultModelConfig)))


def replay_config(agent, uniform: str, prioritized: str, **extra) -> dict:
    """RLlib's replay_buffer_config for the agent: the `prioritized` buffer type (with the
    spec's exponents) or the `uniform` one, the spec's capacity, and `extra` arguments."""
    if not agent.prioritized_replay:
        return {"type": uniform, "capacity": agent.replay_capacity, **extra}
    return {"type": prioritized, "capacity": agent.replay_capacity,
            "alpha": agent.priority_alpha, "beta": agent.priority_beta, **extra}


def _model_config(agent, model_config_class):
    """The Q-network: an MLP for vector observations; a conv stack then the MLP head for
    image observations (Atari frames, MinAtar's 10x10 channels)."""
    from trainyard.agents.doom import is_doom
    from trainyard.agents.envs import MINATAR_CNN, NATURE_CNN, is_minatar
    from trainyard.agents.games import is_game

    conv = agent.conv_filters or (MINATAR_CNN if is_minatar(agent.env) else
                                  NATURE_CNN if agent.env.startswith("ALE/")
                                  or is_doom(agent.env) else None)
    rec = agent.recurrent
    memory = {} if rec is None else dict(use_lstm=True, lstm_cell_size=rec.cell_size,
                                         max_seq_len=rec.seq_len,
                                         lstm_use_prev_action=rec.lstm_use_prev_action)
    if conv is None:
        return model_config_class(fcnet_hiddens=list(agent.hidden), **memory)
    # unpadded ("valid") convolutions, as in both papers: 84 -> 20 -> 9 -> 7 on Atari, 10 -> 8
    # on MinAtar (RLlib pads to "same" by default: 2.5x the features into the Q head); board
    # games keep the board's size (a line at the edge matters as much as one in the middle)
    padding = "same" if is_game(agent.env) else "valid"
    return model_config_class(conv_filters=[[*layer, padding] for layer in conv],
                              head_fcnet_hiddens=list(agent.hidden), **memory)


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
    _quiet_rllib()
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
            metrics = {name: float(v) for path, name in names.items()
                       if isinstance(v := _dig(result, path), (int, float))}
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
                    metrics.update(league.evaluate(algo, spec.evaluation.episodes))
                    if done and not done_rating:
                        _log_league(league, ctx)
                target = spec.stop.eval_return_target
                if not done and target is not None and metrics["eval/return_mean"] >= target:
                    done = True  # solved: this checkpoint is the one that scored
                    tracking.set_tags(ctx.run, {f"{tracking.TAG}stop_reason":
                                                f"eval/return_mean reached {target:g}"})
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


def _tag_kernels(algo, spec: "RLJob", ctx: "RunContext") -> None:
    """What the run computes with, as tags: the precision `agent.precision` resolved to on the
    learner's hardware, and which DQN training step runs (trainyard's lean one or RLlib's)."""
    from trainyard.agents import rllib_private

    try:
        precision = getattr(rllib_private.local_learner(algo), "precision", "fp32")
    except RuntimeError:  # remote learners decide on their own machines
        precision = f"{spec.agent.precision} (on the remote learners)"
    tracking.set_tags(ctx.run, {f"{tracking.TAG}precision": precision,
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
    from trainyard.agents.selfplay import League

    return League(spec.agent, spec.selfplay, seed)


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

    def run(self, algo, steps: int, final: bool) -> dict[str, float]:
        from trainyard.agents.evaluate import play, write_gif

        config = self.spec.evaluation
        self.count += 1
        record = config.video and (final or (config.video_every > 0
                                             and self.count % config.video_every == 0))
        started = time.monotonic()
        result = play(algo.get_module(), self.spec.agent, config.episodes, config.epsilon,
                      config.max_steps, seed=10_000 * self.ctx.seed + self.count, record=record)
        metrics = {**result.metrics(), "perf/eval_s": time.monotonic() - started}
        if result.frames:
            with tempfile.TemporaryDirectory() as tmp:
                gif = write_gif(result.frames, Path(tmp, f"eval_{steps:010d}_steps.gif"))
                tracking.log_artifact(self.ctx.run, gif, "videos")
        return metrics


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


def _latest_checkpoint(storage: Path) -> tuple[Path, dict]:
    """The run's latest valid checkpoint and its progress; a clear error when it has none."""
    from trainyard.spec import UserInputError

    found = checkpoints.latest_valid(storage)
    if found is None:
        raise UserInputError(f"no checkpoint under {storage}: the run saved none yet (it saves "
                             "every checkpoint.every_iterations and at the end)")
    return found


def evaluate_run(spec: "RLJob", storage: Path, seed: int, episodes: int, epsilon: float,
                 video: Path | None) -> dict[str, float]:
    """`trainyard eval`: play a run's latest checkpoint; print the returns, maybe a GIF."""
    from ray.tune.registry import register_env

    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.evaluate import play, write_gif

    folder, progress = _latest_checkpoint(storage)
    checkpoints.vet_rllib_checkpoint(folder)  # before anything of it is decoded
    _quiet_rllib()
    register_env(spec.agent.env, make_env_creator(spec.agent))
    local = spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"env_runners": 0, "learners": 0})})  # playing needs no remote actors
    algo = build_config(local, seed).build_algo()
    try:
        algo.restore_from_path(str(folder))
        result = play(algo.get_module(), spec.agent, episodes, epsilon,
                      spec.evaluation.max_steps, seed=seed, record=video is not None)
    finally:
        algo.stop()
    metrics = result.metrics()
    print(f"{spec.agent.env}, checkpoint at {progress.get('env_steps', 0):,} env steps: "
          f"{episodes} episodes, epsilon {epsilon:g}: return {metrics['eval/return_mean']:.2f} "
          f"+- {metrics['eval/return_std']:.2f} (min {min(result.returns):g}, max "
          f"{max(result.returns):g}), length {metrics['eval/episode_len_mean']:.0f}")
    if video is not None and result.frames:
        print(f"video of the first episode: {write_gif(result.frames, video)}")
    return metrics


def load_main(spec: "RLJob", storage: Path):
    """The learned `main` Q-module of a self-play run's latest checkpoint (msgpack state only),
    and the env steps it had trained for."""
    from trainyard.agents.games import game_info
    from trainyard.agents.selfplay import MAIN, main_spec

    folder, progress = _latest_checkpoint(storage)
    path = Path(folder) / "learner_group" / "learner" / "rl_module" / MAIN
    checkpoints.vet_rllib_checkpoint(path)  # before anything of it is decoded
    # the model config as the algorithm completes it (DQN adds dueling, double_q, ...)
    module = main_spec(game_info(spec.agent.env), build_config(spec, 0).model_config).build()
    module.restore_from_path(str(path))
    module.eval()
    return module, int(progress.get("env_steps", 0))


def evaluate_selfplay(spec: "RLJob", storage: Path, seed: int, games: int,
                      opponent: str) -> dict[str, float]:
    """`trainyard eval RUN_ID --opponent NAME`: win/draw/loss of the run's agent over `games`
    games, moving first in half of them."""
    from trainyard.agents.games import game_info, head_to_head, reference_player
    from trainyard.agents.selfplay import QPlayer
    from trainyard.spec import UserInputError

    info = game_info(spec.agent.env)
    try:  # the name first, before anything loads
        other = reference_player(opponent, info, seed)
    except ValueError as err:
        raise UserInputError(f"--opponent: {err}") from None
    module, steps = load_main(spec, storage)
    w, d, l_ = head_to_head(info, QPlayer(module), other, games)
    print(f"{spec.agent.env}, agent at {steps:,} env steps, against {opponent}: {games} games "
          f"(first move alternating): won {w}, drew {d}, lost {l_}; win rate {w / games:.1%}, "
          f"loss rate {l_ / games:.1%}")
    return {"eval/win_rate": w / games, "eval/draw_rate": d / games,
            "eval/loss_rate": l_ / games}


def play_human(spec: "RLJob", storage: Path, human_first: bool, read=input, write=print) -> int:
    """`trainyard play RUN_ID`: a person against the run's agent, in the terminal. Returns the
    person's result: 1 won, 0 draw, -1 lost."""
    from trainyard.agents.games import Match, game_info
    from trainyard.agents.selfplay import QPlayer

    info = game_info(spec.agent.env)
    module, steps = load_main(spec, storage)
    agent = QPlayer(module)
    match = Match(info)
    human = 0 if human_first else 1
    mark = info.marks[human]
    what = "a column" if info.gravity else "a cell number"
    write(f"{info.name} against the agent ({steps:,} env steps of training). You play "
          f"{mark} and move {'first' if human_first else 'second'}; type {what}, q to quit.")
    while not match.over:
        if match.to_move == human:
            write(match.draw())
            answer = read(f"your move ({mark}): ").strip().lower()
            if answer in ("q", "quit", "exit"):
                write("game abandoned")
                return -1
            if not answer.isdigit() or int(answer) not in match.legal():
                write(f"{answer!r} is not a legal move; legal: "
                      f"{', '.join(str(a) for a in match.legal())}")
                continue
            match.apply(int(answer))
        else:
            action = agent.act(match.observation(match.to_move), match.mask())
            write(f"agent plays {action}")
            match.apply(action)
    write(match.draw())
    result = int(match.returns()[human])
    write({1: "you won", 0: "a draw", -1: "the agent won"}[result])
    return result

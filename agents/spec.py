"""The `kind: rl` job: the agent section and RL units (env steps, training iterations)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from trainyard.agents.doom import DoomSettings
from trainyard.agents.envs import AtariSettings, check_env_id, check_user_env, is_atari, is_user_env
from trainyard.agents.spec_selfplay import SelfPlay
from trainyard.spec import Checkpoint, Count, JobBase, Resources, Section, Stop

ALGOS = ("dqn",)


class RLResources(Resources):
    """RLlib's actors: env runners sample, learners update."""

    env_runners: int = Field(0, ge=0, description="remote env runners (0: sample in the "
                             "driver, fastest on a 2-core machine)")
    envs_per_env_runner: int = Field(1, ge=1, description="vectorised envs in each runner")
    cpus_per_env_runner: float = Field(1.0, gt=0, description="CPUs per remote env runner")
    gpus_per_env_runner: float = Field(0.0, ge=0, description="GPUs per env runner "
                                       "(fractions share one GPU)")
    learners: int = Field(0, ge=0, description="remote learners (0: learn in the driver)")
    gpus_per_learner: float = Field(0.0, ge=0, description="GPUs for each learner (or for "
                                    "the driver's learner when learners is 0)")


class RLFaultTolerance(Section):
    """What happens when an env runner fails: its process dies, or its env raises or hangs.

    RLlib takes a failed remote env runner out of service, Ray restarts its actor, and RLlib
    brings it back (with the current weights) at the next training step: the run goes on.
    The `faults/*` metrics and the `trainyard.faults.*` tags record it.
    """

    restart_failed_env_runners: bool = Field(
        True, description="restart a remote env runner that died or whose env raised (false: "
        "the run fails with it)")
    max_env_runner_restarts: int = Field(1000, ge=0, description="restarts allowed per env "
                                         "runner over the run")
    restart_delay_s: float = Field(
        5.0, ge=0, description="seconds an env runner whose env raised waits before it exits "
        "to be restarted (RLlib's default, 60, holds back a crash loop)")
    restart_failed_envs: bool = Field(
        False, description="rebuild an env that raises inside its runner (also with "
        "env_runners 0) instead of failing the runner; the episode is dropped")
    sample_timeout_s: float = Field(
        60.0, gt=0, description="wait this long for a remote runner's samples each step; a "
        "slower or hung runner's samples are dropped for that step")
    hang_timeout_s: float | None = Field(
        300.0, gt=0, description="kill a remote env runner that has not answered a ping for "
        "this long (an env hung in step), so that Ray restarts it; None: wait for ever")
    health_probe_timeout_s: float = Field(
        30.0, gt=0, description="how long a ping to a failed runner may take to count as back")
    restore_timeout_s: float = Field(
        1800.0, gt=0, description="how long a restarted runner may take to receive its state")


class RLStop(Stop):
    env_steps: Count | None = Field(100_000, ge=1, description="environment steps sampled")
    iterations: Count | None = Field(None, ge=1, description="RLlib training iterations")
    return_target: float | None = Field(None, description="stop once the mean episode return "
                                        "reaches this")
    eval_return_target: float | None = Field(
        None, description="stop once an evaluation's mean return reaches this (the last "
        "checkpoint is then the one that scored it; DQN on CartPole can unlearn later)")


class RLCheckpoint(Checkpoint):
    every_iterations: int = Field(20, ge=1, description="checkpoint every N training iterations")


class Recurrent(Section):
    """An LSTM core between the encoder and the Q head (DRQN / R2D2): training replays
    fixed-length sequences starting from the recurrent state stored when they were played."""

    cell_size: int = Field(128, ge=1, description="LSTM units")
    seq_len: int = Field(20, ge=2, description="time steps per replayed sequence")
    burn_in: int = Field(5, ge=0, description="leading steps of a sequence that only warm up "
                         "the LSTM state (no loss)")
    overlap: int = Field(10, ge=0, description="prioritized sequence replay: steps shared by "
                         "consecutive sequences of an episode (R2D2: half the length)")
    priority_eta: float = Field(0.9, ge=0, le=1, description="prioritized sequence replay: "
                                "a sequence's priority = eta x max |TD| + (1 - eta) x mean |TD|")
    lstm_use_prev_action: bool = Field(False, description="feed the previous action too")

    @model_validator(mode="after")
    def _lengths(self) -> "Recurrent":
        if self.burn_in >= self.seq_len:
            raise ValueError(f"agent.recurrent.burn_in ({self.burn_in}) must be below "
                             f"agent.recurrent.seq_len ({self.seq_len}): the steps after the "
                             "burn-in are the ones that train")
        if self.overlap >= self.seq_len:
            raise ValueError(f"agent.recurrent.overlap ({self.overlap}) must be below "
                             f"agent.recurrent.seq_len ({self.seq_len})")
        return self


class DQNAgent(Section):
    """DQN (double, dueling, n-step, prioritized replay) on RLlib's new API stack."""

    algo: Literal[ALGOS] = Field("dqn", description="algorithm: " + ", ".join(ALGOS))
    # env_config comes before env so that env's check can build a user env with it.
    env_config: dict[str, Any] = Field(default_factory=dict, description="keyword arguments "
                                       "for a user env's constructor (module:EnvId envs and "
                                       "plain Gymnasium ids; Atari, Doom and games have their "
                                       "own sections)")
    env: str = Field(..., description="Gymnasium env id, e.g. CartPole-v1 or ALE/Pong-v5, or "
                     "your own as module:EnvId (the module registers EnvId)")
    lr: float = Field(5e-4, gt=0, le=1, description="learning rate")
    optimizer: Literal["adam", "rmsprop"] = Field(
        "adam", description="adam, or rmsprop (centered, as the Nature DQN paper trained)")
    optimizer_eps: float = Field(1e-8, gt=0, description="the optimizer's epsilon (Adam "
                                 "1e-8 in torch, 1.5e-4 in Dopamine; RMSProp 0.01 in Nature)")
    rmsprop_decay: float = Field(0.95, gt=0, lt=1, description="RMSProp's squared-gradient "
                                 "decay (Nature: 0.95)")
    grad_clip: float | None = Field(40.0, gt=0, description="clip the gradients' global norm "
                                    "to this (RLlib's DQN default); null: no clipping, as the "
                                    "Nature paper (it clips the error: the Huber loss) and "
                                    "single-file DQNs train")
    gamma: float = Field(0.99, gt=0, le=1, description="discount factor")
    batch_size: int = Field(32, ge=1, description="transitions per gradient update")
    n_step: int = Field(1, ge=1, description="n-step returns")
    double_q: bool = Field(True, description="double-DQN targets")
    dueling: bool = Field(True, description="dueling value/advantage heads")
    hidden: list[int] = Field([64, 64], min_length=1, description="MLP layer widths (for "
                              "image observations: the Q head's layers after the conv stack)")
    conv_filters: list[list[int]] | None = Field(
        None, description="conv layers [channels, kernel, stride] for image observations "
        "(unpadded; padded to keep the board's size for OpenSpiel/ games); default: the "
        "Nature DQN stack for ALE/ games, one [16, 3, 1] layer for MinAtar/, none (an MLP) "
        "for board games")
    value_bound: float | None = Field(
        None, gt=0, description="clip bootstrapped Q-values to [-bound, bound] (a game that "
        "pays +1/-1 has values in [-1, 1]: 1.0 stops the max over noisy estimates from "
        "feeding on itself); none: unclipped")
    play_search_depth: int = Field(
        0, ge=0, le=4, description="two-player games: when the agent plays (trainyard play, "
        "trainyard eval, the final evaluation) look this many plies ahead with the rules, "
        "the network scoring the leaves; training never searches, and the raw network "
        "(depth 0) is still what in-run evaluations report")
    replay_capacity: Count = Field(50_000, ge=1, description="transitions kept in replay")
    prioritized_replay: bool = Field(True, description="prioritized experience replay "
                                     "(default off for ALE/ games: the Nature recipe is "
                                     "uniform)")
    priority_alpha: float = Field(0.6, ge=0, le=1, description="prioritized replay: how much "
                                  "priorities count (0: uniform)")
    priority_beta: float = Field(0.4, ge=0, le=1, description="prioritized replay: strength "
                                 "of the importance-sampling correction")
    learning_starts: Count = Field(1_000, ge=0, description="env steps before learning")
    target_update_every: Count = Field(500, ge=1, description="env steps between target syncs")
    epsilon_start: float = Field(1.0, ge=0, le=1, description="initial exploration rate")
    epsilon_end: float = Field(0.05, ge=0, le=1, description="final exploration rate")
    epsilon_steps: Count = Field(10_000, ge=1, description="env steps of linear epsilon decay")
    rollout_fragment_length: int = Field(4, ge=1, description="env steps per sample call")
    training_intensity: float | None = Field(
        None, gt=0, description="replayed / sampled transitions ratio (None: RLlib default; "
        "the Nature recipe's one batch of 32 per 4 env steps is 8)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="arithmetic of conv Q-networks' learner passes: fp32; bf16 "
        "autocast (TD targets, loss and optimizer state stay fp32); or auto: bf16 where the "
        "learner's hardware computes it natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs), fp32 "
        "elsewhere and for MLP Q-networks. The decision is the run's trainyard.precision tag")
    channels_last: bool = Field(True, description="conv Q-network weights in channels-last "
                                "memory order (the frames arrive that way)")
    compile: bool = Field(False, description="torch.compile the Q-network's modules on the "
                          "learner (compile time is paid at the first updates; a failure "
                          "falls back to eager with a warning)")
    lean_step: bool = Field(True, description="feed-forward DQN with uniform replay "
                            "(single-agent or self-play): trainyard's training step "
                            "(preallocated replay straight "
                            "into tensors, one update at a time) instead of RLlib's "
                            "episode-based one; same math")
    sync_every: int = Field(1, ge=1, description="lean step: updates between copies of the "
                            "learner's weights to the acting module (1: act with the newest)")
    async_sampling: bool = Field(False, description="lean step with remote env runners "
                                 "(resources.env_runners >= 1): runners sample the next chunk "
                                 "while the learner updates; updates are still granted per "
                                 "sampled step, so the replay ratio is the configured one")
    atari: AtariSettings = Field(default_factory=AtariSettings,
                                 description="frame preprocessing of ALE/ games")
    recurrent: Recurrent | None = Field(None, description="an LSTM Q-network trained on "
                                        "replayed sequences (none: feed-forward DQN)")
    doom: DoomSettings = Field(default_factory=DoomSettings,
                               description="ViZDoom settings of Doom/ scenarios")

    @field_validator("env")
    @classmethod
    def _known_env(cls, env: str, info: ValidationInfo) -> str:
        # the user's own module is imported, and its env built and checked, only where the
        # job is about to run (or `validate --check-env`), see trainyard.usercode
        deep = bool((info.context or {}).get("user_code"))
        env = check_env_id(env, deep)
        config = info.data.get("env_config") or {}
        if config and (is_atari(env) or env.startswith(("Doom/", "OpenSpiel/"))):
            raise ValueError(f"agent.env_config is for Gymnasium envs built from their id; "
                             f"{env} takes its settings from agent.atari, agent.doom or the "
                             "game itself: move them there")
        if deep and is_user_env(env):
            check_user_env(env, config)
        return env

    @model_validator(mode="after")
    def _fragment_holds_n_step(self) -> "DQNAgent":
        if self.recurrent is None and self.rollout_fragment_length < self.n_step:
            raise ValueError(f"agent.rollout_fragment_length ({self.rollout_fragment_length}) "
                             f"must be at least agent.n_step ({self.n_step}): RLlib builds "
                             "n-step returns within one sampled fragment")
        return self

    @model_validator(mode="after")
    def _atari_replay(self) -> "DQNAgent":
        if is_atari(self.env) and "prioritized_replay" not in self.model_fields_set:
            self.prioritized_replay = False  # the default there: the Nature recipe's uniform
        return self

    @field_validator("conv_filters")
    @classmethod
    def _check_conv(cls, layers: list[list[int]] | None) -> list[list[int]] | None:
        if layers is not None and (not layers or any(
                len(layer) != 3 or min(layer) < 1 for layer in layers)):
            raise ValueError("conv_filters: give each layer as [channels, kernel, stride] of "
                             "positive whole numbers, e.g. [[32, 8, 4], [64, 4, 2]]")
        return layers


class RLEvaluation(Section):
    """Evaluation episodes: full episodes, unclipped rewards, a small exploration rate."""

    every_iterations: int = Field(10, ge=1, description="evaluate every N training iterations "
                                  "(and at the end)")
    episodes: int = Field(5, ge=1, description="episodes per evaluation")
    final_episodes: int | None = Field(None, ge=1, description="episodes of the run's last "
                                       "evaluation, the one its model is judged by (None: "
                                       "`episodes`)")
    epsilon: float = Field(0.05, ge=0, le=1, description="chance of a random action")
    max_steps: Count = Field(27_000, ge=1, description="steps after which an evaluation "
                             "episode is cut (27k agent steps = Atari's 30 minutes)")
    video_every: int = Field(5, ge=0, description="record one episode as a GIF every N "
                             "evaluations (and at the end); 0: only at the end")
    video: bool = Field(True, description="record evaluation GIFs at all")
    opponents: list[str] | None = Field(
        None, description="two-player games: who the agent is judged against, held out from "
        "its training pool (selfplay.opponents): random, alphabeta:<depth> or "
        "mcts:<simulations> (OpenSpiel's MCTS, random rollouts); None: alphabeta:3 and "
        "mcts:100. An opponent also in the pool is reported apart (eval/training_pool/...)")
    opening_plies: int | None = Field(
        None, ge=0, le=8, description="two-player games: evaluation games start from random "
        "openings of this many moves (the same seeded set for every run, each played with "
        "both colours); None: 4 for Connect Four, 2 for tic-tac-toe; 0: the empty board")

    @field_validator("opponents")
    @classmethod
    def _known_opponents(cls, names: list[str] | None) -> list[str] | None:
        from trainyard.agents.games import GAMES, evaluation_player

        for name in names or []:
            if not name.startswith("mcts:"):  # (an MCTS bot is built only to play)
                evaluation_player(name, GAMES["tic_tac_toe"])
            elif not name[5:].isdigit() or int(name[5:]) < 1:
                raise ValueError(f"unknown opponent {name!r}: mcts:<simulations>, e.g. "
                                 "mcts:400")
        if names is not None and len(set(names)) != len(names):
            raise ValueError("evaluation.opponents: each opponent once")
        return names


class RLJob(JobBase):
    kind: Literal["rl"] = Field(..., description="a reinforcement-learning job")
    resources: RLResources = Field(default_factory=RLResources)
    stop: RLStop = Field(default_factory=RLStop)
    checkpoint: RLCheckpoint = Field(default_factory=RLCheckpoint)
    fault_tolerance: RLFaultTolerance = Field(default_factory=RLFaultTolerance)
    evaluation: RLEvaluation = Field(default_factory=RLEvaluation)
    agent: DQNAgent
    selfplay: SelfPlay | None = Field(None, description="the league, for two-player games "
                                      "(OpenSpiel/...); filled in with defaults for them")

    @model_validator(mode="after")
    def _selfplay_for_games(self) -> "RLJob":
        from trainyard.agents.games import is_game

        if is_game(self.agent.env) and self.selfplay is None:
            self.selfplay = SelfPlay()
        elif self.agent.play_search_depth and not is_game(self.agent.env):
            raise ValueError(f"agent.play_search_depth: {self.agent.env} is not a two-player "
                             "game; a search over the rules needs OpenSpiel/connect_four or "
                             "OpenSpiel/tic_tac_toe (remove the field)")
        elif self.selfplay is not None and not is_game(self.agent.env):
            raise ValueError(f"selfplay: {self.agent.env} is not a two-player game; self-play "
                             "needs agent.env OpenSpiel/connect_four or OpenSpiel/tic_tac_toe")
        if self.selfplay is not None and self.selfplay.rotations:
            from trainyard.agents.games import game_info

            info = game_info(self.agent.env)
            if not info.turns:
                raise ValueError(f"selfplay.rotations: {info.name} has no rotational symmetry "
                                 "(pieces fall down the columns); use selfplay.mirror alone")
        if self.selfplay is not None and (self.agent.n_step > 1
                                          or self.selfplay.targets == "negamax"):
            from trainyard.agents.rl_config import uses_lean_step

            if not uses_lean_step(self):
                if self.selfplay.targets == "negamax":
                    raise ValueError(
                        "selfplay.targets: negamax replays whole games on trainyard's lean "
                        "step; use uniform replay (agent.prioritized_replay: false, "
                        "agent.lean_step: true) or selfplay.targets: opponent")
                raise ValueError(
                    f"agent.n_step: {self.agent.n_step} with self-play on RLlib's own step "
                    "(prioritized replay or agent.lean_step: false): its multi-agent replay "
                    "never samples a move closer than n to the end of its game (the winning "
                    "and blocking moves), so set agent.n_step: 1, or use uniform replay "
                    "(agent.prioritized_replay: false) and the lean step")
        return self

    def warnings(self) -> list[str]:
        if self.selfplay is None:
            return []
        shared = sorted(set(self.heldout_opponents()) & set(self.selfplay.opponents))
        return [f"evaluation.opponents {shared} are also in selfplay.opponents (the training "
                "pool): a win rate against them measures what the agent learned of them, not "
                "its strength; they are reported apart as eval/training_pool/..."] \
            if shared else []

    def heldout_opponents(self) -> list[str]:
        """Who a self-play agent is evaluated against (`evaluation.opponents` or default)."""
        return self.evaluation.opponents or ["alphabeta:3", "mcts:100"]

    @model_validator(mode="after")
    def _check_epsilon(self) -> "RLJob":
        if self.agent.epsilon_end > self.agent.epsilon_start:
            raise ValueError("agent.epsilon_end must not exceed agent.epsilon_start")
        return self

    @model_validator(mode="after")
    def _check_async(self) -> "RLJob":
        if not self.agent.async_sampling:
            return self
        if self.resources.env_runners < 1:
            raise ValueError("agent.async_sampling needs remote env runners to sample while "
                             "the learner updates: set resources.env_runners to 1 or more")
        from trainyard.agents.rl_config import uses_lean_step

        if not uses_lean_step(self):
            raise ValueError("agent.async_sampling runs in trainyard's lean DQN step, which "
                             "takes feed-forward DQN with uniform replay and a local "
                             "learner: set agent.prioritized_replay: false, no "
                             "agent.recurrent, resources.learners: 0")
        return self

    @model_validator(mode="after")
    def _check_custom(self) -> "RLJob":
        if self.resources.custom and self.resources.env_runners < 1:
            raise ValueError("resources.custom is asked for by each remote env runner, and "
                             "there are none: set resources.env_runners to 1 or more")
        return self

    def resource_demand(self) -> dict[str, float]:
        res = self.resources
        demand = {"CPU": 1 + res.env_runners * res.cpus_per_env_runner + res.learners}
        gpus = (res.env_runners * res.gpus_per_env_runner
                + max(res.learners, 1) * res.gpus_per_learner)
        if gpus:
            demand["GPU"] = gpus
        demand.update({name: res.env_runners * amount for name, amount in res.custom.items()})
        return demand

    def worker_bundles(self) -> list[dict[str, float]]:
        res = self.resources
        runner = {"CPU": res.cpus_per_env_runner, **res.custom}
        if res.gpus_per_env_runner:
            runner["GPU"] = res.gpus_per_env_runner
        learner = {"CPU": 1.0, **({"GPU": res.gpus_per_learner} if res.gpus_per_learner else {})}
        return [dict(runner) for _ in range(res.env_runners)] + \
            [dict(learner) for _ in range(res.learners)]

    def driver_demand(self) -> dict[str, float]:
        res = self.resources
        demand = {"CPU": 1}  # the algorithm object: it samples and learns when nothing is remote
        if res.learners == 0 and res.gpus_per_learner:
            demand["GPU"] = res.gpus_per_learner
        return demand

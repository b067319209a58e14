"""The RLlib algorithm a job spec describes: `build_config` turns an `RLJob` into RLlib's
`AlgorithmConfig` (new API stack), with trainyard's Q-modules, connectors, replay buffers and
training step picked per env family (Atari, Doom, MinAtar, classic control, board games)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainyard.agents.spec import RLJob


# RLlib 2.60 warns about its own defaults on every build; a user can do nothing about these.
_NOISE = ("You are running DQN on the new API stack", "RLModule(config=[RLModuleConfig object])",
          "Install gputil for GPU system monitoring")


def quiet_rllib() -> None:
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)

    for name in ("ray.rllib.algorithms.algorithm_config", "ray._common.deprecation",
                 "ray.rllib.utils.deprecation", "ray.tune.utils.util",
                 "ray.rllib.core.rl_module.rl_module"):
        logger = logging.getLogger(name)
        if keep not in logger.filters:
            logger.addFilter(keep)


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
                  grad_clip=agent.grad_clip, grad_clip_by="global_norm",
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
    from trainyard.agents.lean_runner import LeanEnvRunner, LeanMultiAgentEnvRunner

    # RLlib's runners with their per-step timers sampled and their step counts logged when
    # read: the same metrics, whichever training step runs
    config.env_runners(env_runner_cls=LeanEnvRunner if spec.selfplay is None
                       else LeanMultiAgentEnvRunner)
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
    """The lean DQN step (trainyard.agents.lean_dqn) runs feed-forward DQN with uniform replay
    and the learner in the driver (Atari, MinAtar, classic control, self-play leagues); the
    rest (prioritized or sequence replay, Doom's screen connectors, remote learners) takes
    RLlib's own step."""
    from trainyard.agents.doom import is_doom

    agent = spec.agent
    return (agent.lean_step and agent.recurrent is None and not agent.prioritized_replay
            and not is_doom(agent.env) and spec.resources.learners == 0)


def _lean(config, spec: "RLJob") -> None:
    from trainyard.agents.envs import is_atari
    from trainyard.agents.lean_dqn import LeanDQN

    agent, res = spec.agent, spec.resources
    config.algo_class = LeanDQN
    lanes = res.envs_per_env_runner * max(res.env_runners, 1)
    gamma = agent.gamma
    if spec.selfplay is not None:  # (multi-agent episodes keep RLlib's connectors)
        from trainyard.agents.lean_selfplay import LeanSelfPlay

        config.algo_class = LeanSelfPlay
        lanes = 1  # games are stored whole, one after another, when they end
        # negamax: a transition's next board is the opponent's (trainyard.agents.lean_selfplay)
        negamax = spec.selfplay.targets == "negamax"
        config.learner_config_dict["negamax"] = negamax
        gamma = -agent.gamma if negamax else agent.gamma
    elif not is_atari(agent.env):  # (Atari has its own frame-stacking pair)
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
                     "n_step": agent.n_step, "gamma": gamma,
                     "lanes": lanes})


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

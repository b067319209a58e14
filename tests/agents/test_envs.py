"""The env registry: MinAtar games are known ids, reach a conv Q-network as float frames, and
unknown ids name their close matches."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from trainyard.agents.envs import MINATAR_CNN, NATURE_CNN, check_env_id, rllib_env_creator
from trainyard.agents.rl_config import _model_config
from trainyard.agents.spec import DQNAgent


@pytest.mark.parametrize("game", ["Breakout", "SpaceInvaders", "Asterix", "Freeway", "Seaquest"])
def test_minatar_games_build_with_float_frames(game):
    env = rllib_env_creator(f"MinAtar/{game}-v1")({})
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape[:2] == (10, 10)
    assert env.observation_space.contains(obs)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert set(np.unique(obs)) <= {0.0, 1.0}


def test_unknown_minatar_id_lists_close_matches():
    with pytest.raises(ValueError, match="MinAtar/Breakout-v1"):
        check_env_id("MinAtar/Breakout-v9")


def test_q_network_is_a_conv_stack_for_frames_and_an_mlp_for_vectors():
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    minatar = _model_config(DQNAgent(env="MinAtar/Breakout-v1", hidden=[128]), DefaultModelConfig)
    valid = [[*layer, "valid"] for layer in MINATAR_CNN]  # unpadded, as in the paper
    assert minatar.conv_filters == valid and minatar.head_fcnet_hiddens == [128]
    atari = _model_config(DQNAgent(env="ALE/Pong-v5", hidden=[512]), DefaultModelConfig)
    assert atari.conv_filters == [[*layer, "valid"] for layer in NATURE_CNN]
    cartpole = _model_config(DQNAgent(env="CartPole-v1", hidden=[64, 64]), DefaultModelConfig)
    assert cartpole.conv_filters is None and cartpole.fcnet_hiddens == [64, 64]
    mine = _model_config(DQNAgent(env="MinAtar/Breakout-v1", conv_filters=[[8, 3, 1]]),
                         DefaultModelConfig)
    assert mine.conv_filters == [[8, 3, 1, "valid"]]


def test_bad_conv_filters_are_refused():
    with pytest.raises(ValueError, match=r"\[channels, kernel, stride\]"):
        DQNAgent(env="MinAtar/Breakout-v1", conv_filters=[[16, 3]])


def test_gymnasium_registry_is_untouched_for_plain_ids():
    before = dict(gym.registry)
    assert check_env_id("CartPole-v1") == "CartPole-v1"
    assert dict(gym.registry) == before  # nothing registered, nothing replaced

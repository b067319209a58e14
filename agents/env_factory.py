"""Which env a job's agent trains and is evaluated on: the dispatch from `agent.env` to the
Atari, Doom, board-game, partially observed or plain Gymnasium builders. It sits above them
all (envs.py is the registry they share), so no builder imports another."""

from __future__ import annotations

from trainyard.agents.envs import POMDP, is_atari, rllib_env_creator


def make_eval_env(agent, render: bool = False):
    """The env evaluation plays: whole episodes on the game's own rewards. Atari games through
    Gymnasium's wrappers with the training preprocessing (stacked frames, rendered screens);
    any other env as training builds it."""
    if is_atari(agent.env):
        from trainyard.agents.atari import make_single_env

        recurrent = agent.recurrent is not None  # single frames, the LSTM is the memory
        return make_single_env(agent.env, agent.atari, training=False, stack=not recurrent,
                               render=render, channel=recurrent)
    from trainyard.agents import doom

    if doom.is_doom(agent.env):
        return doom.make_env(agent.env, agent.doom, training=False,
                             render_mode="rgb_array" if render else None)
    if agent.env in POMDP:
        return POMDP[agent.env]({"render_mode": "rgb_array"} if render else {})
    creator = rllib_env_creator(agent.env)
    if render:
        try:
            return creator({**agent.env_config, "render_mode": "rgb_array"})
        except TypeError:  # a user env that cannot render: evaluated without a GIF
            pass
    return creator(dict(agent.env_config))


def make_env_creator(agent):
    """What `register_env` gets for the spec's env (remote env runners build it from this)."""
    from trainyard.agents.games import is_game

    if is_game(agent.env):
        from trainyard.agents.selfplay import make_env_creator as game_env_creator

        return game_env_creator(agent.env)
    if is_atari(agent.env):
        from trainyard.agents.atari import rllib_creator

        return rllib_creator(agent.env, agent.atari, channel=agent.recurrent is not None)
    from trainyard.agents import doom

    if doom.is_doom(agent.env):
        return doom.rllib_creator(agent.env, agent.doom)
    if agent.env in POMDP:
        return POMDP[agent.env]
    return rllib_env_creator(agent.env)

"""The environment registry: which `agent.env` ids a job may name.

Every Gymnasium id is accepted, with the Atari (ALE) ids registered from ale-py. An unknown id
is an error that lists the closest known ids.
"""

from __future__ import annotations

import difflib
from functools import cache, partial


@cache
def known_env_ids() -> frozenset[str]:
    import gymnasium as gym

    try:
        import ale_py

        gym.register_envs(ale_py)
    except ImportError:  # Atari is optional for a job that does not use it
        pass
    try:  # MinAtar/Breakout-v1 etc.: the CPU-sized Atari benchmark
        from minatar.gym import register_envs

        register_envs()
    except ImportError:
        pass
    return frozenset(gym.envs.registry)


def is_minatar(env_id: str) -> bool:
    return env_id.startswith("MinAtar/")


#: Conv layers ([channels, kernel, stride], ...) for image observations, by game family:
#: the Nature DQN network for 84x84 Atari frames, Young & Tian's one layer for MinAtar's 10x10.
NATURE_CNN = [[32, 8, 4], [64, 4, 2], [64, 3, 1]]
MINATAR_CNN = [[16, 3, 1]]


def check_env_id(env_id: str) -> str:
    """Return `env_id` if it is known; ValueError naming close matches if not."""
    known = known_env_ids()
    if env_id in known:
        return env_id
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(env_id.lower(), list(lowered), n=4, cutoff=0.5)
    hint = (f"; did you mean: {', '.join(lowered[c] for c in close)}?" if close
            else "; see gymnasium.envs.registry for the known ids")
    raise ValueError(f"unknown environment {env_id!r}{hint}")


def _make_from_spec(spec, config) -> object:
    import gymnasium as gym

    env = gym.make(spec, **dict(config))
    if is_minatar(spec.id):  # bool channels -> float32, what a conv layer takes
        import numpy as np

        space = gym.spaces.Box(0.0, 1.0, env.observation_space.shape, np.float32)
        env = gym.wrappers.TransformObservation(env, lambda obs: obs.astype(np.float32), space)
    return env


def rllib_env_creator(env_id: str):
    """An RLlib env creator (`ray.tune.registry.register_env`) that builds `env_id` from this
    process's Gymnasium registration.

    Remote env runners are other processes with their own, fresh registry: an id registered
    here only (Atari ids, which ale-py registers on import; an env a plugin or a test
    registers) is unknown there. The creator carries the id's EnvSpec to them instead.
    """
    import gymnasium as gym

    known_env_ids()  # registers the Atari ids
    return partial(_make_from_spec, gym.spec(env_id))

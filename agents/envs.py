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
    return frozenset(gym.envs.registry)


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

    return gym.make(spec, **dict(config))


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

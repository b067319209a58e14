"""The environment registry: which `agent.env` ids a job may name.

Every Gymnasium id is accepted, with the Atari (ALE) ids registered from ale-py. A user's own
env is named as Gymnasium's `make` names it, `module:EnvId`: the module is imported (from the
working folder or PYTHONPATH) and registers the id. An unknown id is an error that lists the
closest known ids.
"""

from __future__ import annotations

import difflib
import re
from functools import cache, partial

from pydantic import Field

from trainyard import usercode
from trainyard.spec import Section

SCREEN = 84  # Atari frames are SCREEN x SCREEN grayscale


# What minatar.gym registers (checked against minatar 1.0.15), known without importing it.
MINATAR_IDS = frozenset(f"MinAtar/{game}-v{version}" for version in (0, 1) for game in (
    "Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"))


@cache
def _register_ale() -> None:
    import gymnasium as gym

    try:
        import ale_py

        gym.register_envs(ale_py)
    except ImportError:  # Atari is optional for a job that does not use it
        pass


@cache
def _register_minatar() -> None:
    try:  # MinAtar/Breakout-v1 etc.: the CPU-sized Atari benchmark
        from minatar.gym import register_envs

        register_envs()
    except ImportError:
        pass


def _family_ids(env_id: str) -> frozenset[str]:
    """Gymnasium's registry once the package of `env_id`'s family has registered its ids."""
    import gymnasium as gym

    (_register_ale if env_id.startswith("ALE/") else _register_minatar)()
    return frozenset(gym.envs.registry)


@cache
def known_env_ids() -> frozenset[str]:
    import gymnasium as gym

    _register_ale()
    _register_minatar()
    return frozenset(gym.envs.registry)


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def rom_name(env_id: str) -> str:
    """'ALE/SpaceInvaders-v5' -> 'space_invaders' (ale-py's ROM id)."""
    game = env_id.split("/", 1)[1].rsplit("-v", 1)[0]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


class AtariSettings(Section):
    """The DQN preprocessing of ALE games (Mnih et al. 2015; Machado et al. 2018 for sticky
    actions). Used for `ALE/...` envs only."""

    frame_skip: int = Field(4, ge=1, description="emulator frames per agent step (the last "
                            "two max-pooled)")
    frame_stack: int = Field(4, ge=1, description="frames the Q-network sees at once")
    noop_max: int = Field(30, ge=0, description="up to this many no-op steps after a reset")
    sticky_actions: float = Field(0.0, ge=0, lt=1, description="chance the emulator repeats "
                                  "the previous action (0: the Nature recipe; 0.25: ALE v5)")
    terminal_on_life_loss: bool = Field(True, description="end a training episode when a "
                                        "life is lost (evaluation plays whole games)")
    clip_rewards: bool = Field(True, description="train on the reward's sign (evaluation "
                               "reports the game's own score)")
    fire_reset: bool = Field(True, description="press FIRE after a reset in games that need "
                             "it to start")
    flicker: float = Field(0.0, ge=0, lt=1, description="chance each frame is blanked, in "
                           "training and evaluation (flickering Atari, Hausknecht & Stone "
                           "2015: with frame_stack 1, only a memory can track the ball)")
    max_episode_steps: int = Field(27_000, ge=1, description="agent steps after which a "
                                   "training episode is cut (27k = 30 minutes of play)")


def is_minatar(env_id: str) -> bool:
    return env_id.startswith("MinAtar/")


#: Conv layers ([channels, kernel, stride], ...) for image observations, by game family:
#: the Nature DQN network for 84x84 Atari frames, Young & Tian's one layer for MinAtar's 10x10.
NATURE_CNN = [[32, 8, 4], [64, 4, 2], [64, 3, 1]]
MINATAR_CNN = [[16, 3, 1]]


def _cartpole_no_velocity(config=None):
    """CartPole with the velocities hidden (cart position and pole angle only): one
    observation cannot tell which way the pole is moving; a memory can. Both are scaled to
    about unit spread (x / 0.5 m, angle / 0.05 rad): the velocity a memory must infer is the
    step-to-step change, tiny in raw units."""
    import gymnasium as gym
    import numpy as np

    env = gym.make("CartPole-v1", render_mode=(config or {}).get("render_mode"))
    scale = np.array([0.5, 0.05], np.float32)
    high = env.observation_space.high[[0, 2]] / scale
    space = gym.spaces.Box(-high, high, (2,), np.float32)
    return gym.wrappers.TransformObservation(
        env, lambda obs: (obs[[0, 2]] / scale).astype(np.float32), space)


#: partially observed variants of known tasks, by the id a spec names
POMDP = {"CartPoleNoVelocity-v1": _cartpole_no_velocity}


def is_user_env(env_id: str) -> bool:
    """`module:EnvId`: an env the user's own module registers."""
    return ":" in env_id


def registered_id(env_id: str) -> str:
    """The id in Gymnasium's registry: `EnvId` of `module:EnvId` once the module is imported
    (each process imports it: remote env runners have their own registry)."""
    if not is_user_env(env_id):
        return env_id
    module, name = usercode.split(env_id, "a user env", "mypkg.envs:MyEnv-v0")
    usercode.load(module, env_id)
    return name


def _check_user_env_id(env_id: str, deep: bool) -> str:
    """`module:EnvId` written right and its module found; with `deep`, the module imported
    and the id registered by it."""
    import gymnasium as gym

    module, name = usercode.split(env_id, "a user env", "mypkg.envs:MyEnv-v0")
    if not deep:
        usercode.find(module, env_id)
        return env_id
    registered_id(env_id)
    if name not in gym.registry:
        def home(spec) -> str:
            return str(getattr(spec.entry_point, "__module__", spec.entry_point))

        mine = sorted(k for k, spec in gym.registry.items() if home(spec).startswith(module))
        raise ValueError(f"module {module!r} registered no environment {name!r}; "
                         + (f"it registers: {', '.join(mine)}" if mine else
                            "register it there with gymnasium.register(id, entry_point=...)"))
    return env_id


def check_user_env(env_id: str, config: dict) -> None:
    """Build the user's env once and hold it to what DQN here takes: a Box observation of 1
    dimension (MLP torso) or 3 (height, width, channels: conv torso), Discrete actions, and
    Gymnasium's API as its env checker sees it. ValueError naming what breaks."""
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    try:
        env = gym.make(registered_id(env_id), **config)
    except Exception as err:  # noqa: BLE001 - the user's constructor: one line, its words
        raise ValueError(f"{env_id!r} could not be built with agent.env_config {config}: "
                         f"{type(err).__name__}: {err}") from None
    try:
        obs, act = env.observation_space, env.action_space
        if not isinstance(obs, gym.spaces.Box) or len(obs.shape) not in (1, 3):
            raise ValueError(f"{env_id!r} observes {obs}; DQN here takes a Box of 1 dimension "
                             "(MLP) or 3 (height, width, channels: conv); wrap a Dict or Tuple "
                             "space in gymnasium.wrappers.FlattenObservation where you "
                             "register it")
        if not isinstance(act, gym.spaces.Discrete):
            raise ValueError(f"{env_id!r} acts in {act}; DQN needs a Discrete action space")
        try:
            check_env(env.unwrapped, skip_render_check=True)
        except Exception as err:  # noqa: BLE001 - the checker's assertion is the message
            raise ValueError(f"{env_id!r} breaks the Gymnasium API: {err}") from None
    finally:
        env.close()


def check_env_id(env_id: str, deep: bool = False) -> str:
    """Return `env_id` if it is known; ValueError naming close matches if not. A user's
    `module:EnvId` is imported only with `deep` (see trainyard.usercode)."""
    import gymnasium as gym

    from trainyard.agents import doom
    from trainyard.agents.games import GAMES, PREFIX

    if is_user_env(env_id):
        return _check_user_env_id(env_id, deep)
    # Each family is looked up alone: a CartPole job imports neither ale-py nor MinAtar
    # (MinAtar pulls in seaborn: 4 s of a 5.5 s `trainyard validate`), a game no ViZDoom.
    games = {PREFIX + game for game in GAMES}
    if env_id in gym.registry or env_id in POMDP or env_id in games:
        return env_id
    if env_id.startswith("Doom/") and env_id in doom.env_ids():
        return env_id
    if env_id in MINATAR_IDS or env_id.startswith("ALE/") and env_id in _family_ids(env_id):
        return env_id
    known = known_env_ids() | games | doom.env_ids() | set(POMDP)
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

    if env_id.startswith(("ALE/", "MinAtar/")):
        _family_ids(env_id)  # registers the family's ids in this process
    return partial(_make_from_spec, gym.spec(registered_id(env_id)))

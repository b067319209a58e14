"""ViZDoom scenarios as Gymnasium envs: `Doom/defend_the_center`, `Doom/health_gathering`, ...

Built on `vizdoom.DoomGame` directly (headless; the scenarios and the freedoom WADs ship with
the `vizdoom` package): each agent step repeats one button press for `frame_skip` tics, the
screen comes back as one grayscale frame (uint8, `screen` = [height, width], 1 channel: no
frame stacking, so a feed-forward agent sees no motion and a recurrent one must remember).

- Actions: one per button of the scenario (defend_the_center: turn left, turn right, attack).
- `game_variables` (health, ammo, ...): each becomes one more constant image channel, scaled to
  0..255, so the observation stays one uint8 image a conv net and RLlib's replay take as is.
- `flicker`: each observation is blanked with that chance (Hausknecht & Stone's flickering
  Atari, on Doom): memory becomes necessary.
- Rewards are the scenario's own; `shaping` adds `coef x change` of a game variable per step
  and `reward_scale` multiplies the training reward, both only where the spec asks and only
  in training: evaluation reports the scenario's own return.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache

import gymnasium as gym
import numpy as np
from pydantic import Field

from trainyard.spec import Section

PREFIX = "Doom/"
#: scenarios with a published DRQN/R2D2 story; any other bundled .cfg works too
SCENARIOS = ("basic", "defend_the_center", "health_gathering", "deadly_corridor",
             "defend_the_line", "health_gathering_supreme", "my_way_home", "take_cover",
             "predict_position", "rocket_basic", "simpler_basic")
#: value ranges for turning a game variable into an image channel
VARIABLE_SCALE = {"HEALTH": 100.0, "AMMO2": 50.0, "ARMOR": 100.0, "KILLCOUNT": 30.0}


class DoomSettings(Section):
    """ViZDoom preprocessing (used for `Doom/...` envs only)."""

    frame_skip: int = Field(4, ge=1, description="game tics per agent step (one button press "
                            "repeated)")
    screen: list[int] = Field([60, 80], min_length=2, max_length=2, description="observation "
                              "[height, width] in pixels (the 160x120 screen resized)")
    game_variables: list[str] = Field([], description="game variables added to the "
                                      "observation as constant channels, e.g. [HEALTH, AMMO2]")
    shaping: dict[str, float] = Field({}, description="training reward += coef x change of "
                                      "the game variable, e.g. {HEALTH: 0.01}")
    reward_scale: float = Field(1.0, gt=0, description="training reward multiplier "
                                "(evaluation reports the scenario's own return)")
    flicker: float = Field(0.0, ge=0, lt=1, description="chance each observation is blanked "
                           "(all planes zero), in training and evaluation: flickering Doom, "
                           "a pixel task a feed-forward agent cannot solve from one frame")


def is_doom(env_id: str) -> bool:
    return env_id.startswith(PREFIX)


@cache
def scenario_names() -> tuple[str, ...]:
    try:
        import vizdoom
    except ImportError:
        return SCENARIOS
    return tuple(sorted(f[:-4] for f in os.listdir(vizdoom.scenarios_path) if f.endswith(".cfg")
                        and os.path.exists(os.path.join(vizdoom.scenarios_path,
                                                        f[:-4] + ".wad"))))


def env_ids() -> set[str]:
    return {PREFIX + name for name in scenario_names()}


class DoomEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 35}

    def __init__(self, scenario: str, settings: DoomSettings | None = None, *,
                 training: bool = True, render_mode: str | None = None):
        import vizdoom as vzd

        self.settings = settings = settings or DoomSettings()
        self.training, self.render_mode = training, render_mode
        game = vzd.DoomGame()
        game.load_config(os.path.join(vzd.scenarios_path, f"{scenario}.cfg"))
        # ViZDoom writes its settings file to the working directory unless told otherwise.
        game.set_doom_config_path(os.path.join(tempfile.gettempdir(), "trainyard_vizdoom.ini"))
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.RGB24 if render_mode else vzd.ScreenFormat.GRAY8)
        names = list(dict.fromkeys(list(settings.game_variables) + list(settings.shaping)))
        unknown = [n for n in names if not hasattr(vzd.GameVariable, n)]
        if unknown:
            raise ValueError(f"unknown ViZDoom game variable(s) {unknown}: names are "
                             "vizdoom.GameVariable members such as HEALTH, AMMO2, KILLCOUNT")
        game.set_available_game_variables([getattr(vzd.GameVariable, n) for n in names])
        game.init()
        self.game, self.names = game, names
        buttons = game.get_available_buttons_size()
        self._actions = [[float(i == b) for i in range(buttons)] for b in range(buttons)]
        self.action_space = gym.spaces.Discrete(buttons)
        h, w = settings.screen
        self.observation_space = gym.spaces.Box(
            0, 255, (h, w, 1 + len(settings.game_variables)), np.uint8)
        self._last_obs = np.zeros(self.observation_space.shape, np.uint8)
        self._picture = None
        self._vars = np.zeros(len(names), np.float64)

    def _read(self) -> np.ndarray:
        import cv2

        state = self.game.get_state()
        if state is None:  # the episode is over: the last picture stands
            return self._last_obs
        screen = state.screen_buffer
        if self.render_mode:
            self._picture = screen
            screen = cv2.cvtColor(screen, cv2.COLOR_RGB2GRAY)
        h, w = self.settings.screen
        frame = cv2.resize(screen, (w, h), interpolation=cv2.INTER_AREA)
        self._vars = np.asarray(state.game_variables, np.float64) if self.names else self._vars
        planes = [frame]
        for name in self.settings.game_variables:
            value = self._vars[self.names.index(name)] / VARIABLE_SCALE.get(name, 100.0)
            planes.append(np.full((h, w), np.clip(value, 0, 1) * 255, np.uint8))
        self._last_obs = np.stack(planes, axis=-1)
        return self._last_obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.game.set_seed(int(seed) % (2**31))
        self.game.new_episode()
        return self._flicker(self._read()), {}

    def _flicker(self, obs: np.ndarray) -> np.ndarray:
        if self.settings.flicker and self.np_random.random() < self.settings.flicker:
            return np.zeros_like(obs)
        return obs

    def step(self, action):
        reward = self.game.make_action(self._actions[int(action)], self.settings.frame_skip)
        before = self._vars.copy()
        terminated = self.game.is_episode_finished()
        obs = self._flicker(self._read())
        if self.training:
            for name, coef in self.settings.shaping.items():
                i = self.names.index(name)
                reward += coef * (self._vars[i] - before[i])
            reward *= self.settings.reward_scale
        # the scenario's timeout ends an episode too: ViZDoom does not say which it was
        truncated = terminated and self.game.get_episode_time() >= self.game.get_episode_timeout()
        return obs, float(reward), terminated and not truncated, truncated, {}

    def render(self):
        if self._picture is None:
            return np.repeat(self._last_obs[..., :1], 3, axis=-1)
        return self._picture

    def close(self):
        self.game.close()


def make_env(env_id: str, settings: DoomSettings, training: bool = True, **kwargs) -> DoomEnv:
    name = env_id[len(PREFIX):]
    return DoomEnv(name, settings, training=training, render_mode=kwargs.get("render_mode"))


def rllib_creator(env_id: str, settings: DoomSettings):
    def create(config=None):
        return make_env(env_id, settings, training=True)
    return create

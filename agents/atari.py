"""Atari (ALE) games played the way the DQN papers play them, with each frame stored once.

Training samples from ale-py's threaded C++ vector env (`AtariVectorEnv`), which does the
standard preprocessing itself: no-op starts, frame skip with max-pooling of the last two frames,
84x84 grayscale, terminal on life loss, reward clipping, FIRE on reset, sticky actions. It hands
out *single* uint8 frames. The frames are stacked where they are used:

- `StackFrames`, an env-to-module connector, stacks each episode's last k frames for the
  Q-network when acting;
- `FrameStackEpisodeReplayBuffer`, the replay buffer, keeps episodes of single frames (7 KiB
  a step, so the Nature recipe's 1M transitions fit in ~7 GB) and stacks frames when it
  samples a batch; `FrameStackPrioritizedEpisodeReplayBuffer` does the same with
  prioritized sampling (RLlib's sum trees, importance weights, TD-error priorities);
- `AtariQModule`, the Q-network, takes uint8 frames and scales them to [0, 1] itself.

Evaluation plays full games (no life-loss terminal) on unclipped rewards through Gymnasium's
`AtariPreprocessing` wrapper with the same settings, which can also render the screen.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils import force_list
from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer
from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import (
    PrioritizedEpisodeReplayBuffer,
)

from trainyard.agents.envs import SCREEN, AtariSettings, rom_name
from trainyard.agents.learner import LeanActing, LeanDoubleQ


class _SingleFrames(gym.vector.VectorWrapper):
    """(N, 1, 84, 84) -> (N, 84, 84) frames (`channel`: (N, 84, 84, 1), what a recurrent
    conv network takes without a frame-stacking connector), each blanked with probability
    `flicker`; no per-step infos: RLlib keeps each step's info with the episode, and the
    ALE's (lives, frame numbers) would be stored a million times for nothing."""

    def __init__(self, env, flicker: float = 0.0, channel: bool = False, seed: int | None = None):
        super().__init__(env)
        self.flicker, self.channel = flicker, channel
        self.rng = np.random.default_rng(seed)
        frame = gym.spaces.Box(0, 255, (SCREEN, SCREEN, 1) if channel else (SCREEN, SCREEN),
                               np.uint8)
        self.single_observation_space = frame
        self.observation_space = gym.vector.utils.batch_space(frame, env.num_envs)

    def _frames(self, obs):
        frames = obs[:, 0]
        if self.flicker:
            frames[self.rng.random(len(frames)) < self.flicker] = 0
        return frames[..., None] if self.channel else frames

    def reset(self, **kwargs):
        obs, _ = self.env.reset(**kwargs)
        return self._frames(obs), {}

    def step(self, actions):
        obs, rewards, terminated, truncated, _ = self.env.step(actions)
        return self._frames(obs), rewards, terminated, truncated, {}


def make_vector_env(env_id: str, settings: AtariSettings, num_envs: int,
                    channel: bool = False):
    """The training env: `num_envs` games in ale-py's threaded vector env, single frames."""
    import ale_py

    env = ale_py.AtariVectorEnv(
        game=rom_name(env_id), num_envs=num_envs, frameskip=settings.frame_skip,
        img_height=SCREEN, img_width=SCREEN, grayscale=True, stack_num=1, maxpool=True,
        noop_max=settings.noop_max, repeat_action_probability=settings.sticky_actions,
        episodic_life=settings.terminal_on_life_loss, reward_clipping=settings.clip_rewards,
        use_fire_reset=settings.fire_reset,
        max_num_frames_per_episode=settings.max_episode_steps * settings.frame_skip,
        autoreset_mode="NextStep")
    return _SingleFrames(env, flicker=settings.flicker, channel=channel)


class _FireReset(gym.Wrapper):
    """Press FIRE after each reset in games that wait for it (Breakout, ...)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


class _Flicker(gym.ObservationWrapper):
    """Each frame blanked with probability p."""

    def __init__(self, env, p: float):
        super().__init__(env)
        self.p = p

    def observation(self, obs):
        return np.zeros_like(obs) if self.np_random.random() < self.p else obs


def make_single_env(env_id: str, settings: AtariSettings, *, training: bool,
                    stack: bool, render: bool = False, channel: bool = False) -> gym.Env:
    """One game through Gymnasium's wrappers with the same preprocessing. Training: life-loss
    terminals and clipped rewards as the spec says; evaluation (`training=False`): whole games,
    the game's score. `stack`: observations are (84, 84, k) stacks, else single frames."""
    from trainyard.agents.envs import known_env_ids

    known_env_ids()  # registers the ALE ids
    env = gym.make(env_id, frameskip=1, repeat_action_probability=settings.sticky_actions,
                   max_episode_steps=settings.max_episode_steps * settings.frame_skip,
                   render_mode="rgb_array" if render else None)
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=settings.noop_max, frame_skip=settings.frame_skip, screen_size=SCREEN,
        terminal_on_life_loss=training and settings.terminal_on_life_loss,
        grayscale_obs=True, scale_obs=False)
    if settings.fire_reset and "FIRE" in env.unwrapped.get_action_meanings()[1:2]:
        env = _FireReset(env)
    if training and settings.clip_rewards:
        env = gym.wrappers.TransformReward(env, lambda r: float(np.sign(r)))
    if settings.flicker:
        env = _Flicker(env, settings.flicker)
    if channel and not stack:
        env = gym.wrappers.TransformObservation(
            env, lambda obs: obs[..., None], gym.spaces.Box(0, 255, (SCREEN, SCREEN, 1), np.uint8))
    if stack:
        env = gym.wrappers.FrameStackObservation(env, settings.frame_stack)
        space = gym.spaces.Box(0, 255, (SCREEN, SCREEN, settings.frame_stack), np.uint8)
        env = gym.wrappers.TransformObservation(
            env, lambda obs: np.ascontiguousarray(np.moveaxis(np.asarray(obs), 0, -1)), space)
    return env


def rllib_creator(env_id: str, settings: AtariSettings, channel: bool = False):
    """For `register_env`: RLlib asks for `num_envs` games at once (`vector_entry_point`)."""
    def create(config: dict[str, Any]):
        if "num_envs" in config:
            return make_vector_env(env_id, settings, int(config["num_envs"]), channel=channel)
        return make_single_env(env_id, settings, training=True, stack=False, channel=channel)
    return create


def return_freed_frames_to_the_os() -> None:
    """Have glibc serve large blocks from mmap, always.

    A stored episode grows by concatenation (RLlib appends each sampled chunk: a new array,
    the old one freed). glibc raises its mmap threshold after such frees, so later blocks of
    up to 32 MB come from the heap, where freed episode arrays linger as fragments: filling a
    100k Pong replay, the process grew 8.9 KiB per 6.9 KiB frame. A fixed threshold keeps
    every large array in its own mapping, handed back on free.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD: fixed, no dynamic raise
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def stacked(frames: np.ndarray) -> np.ndarray:
    """(k, 84, 84) -> (84, 84, k): the layout RLlib's conv encoder takes."""
    return np.ascontiguousarray(np.moveaxis(frames, 0, -1))


def stack_indices(t: int, k: int) -> list[int]:
    """Indices of the k frames ending at t; before an episode's first frame, the first frame
    again (what Gymnasium's FrameStackObservation does after a reset)."""
    return [max(i, 0) for i in range(t - k + 1, t + 1)]


class StackFrames(ConnectorV2):
    """Env-to-module, the whole pipeline for Atari acting: each game's last k frames, stacked,
    as one uint8 tensor [games, 84, 84, k] on the module's device.

    It replaces RLlib's default pieces (observations from episodes, batching, numpy to tensor)
    and their per-piece timers, which cost ~10% of Pong sampling (py-spy). A rolling stack per
    game takes the newest frame each step; whenever a game's episode is not the one it holds
    one step later (a new episode, a first call), its stack is rebuilt from the episode.
    Stacks are held frame-major ([games, k, 84, 84]: rolling one is a contiguous move, where
    the frame axis last made it a strided one, 0.6 ms a step for 4 games) and handed on as a
    permuted view, as the replay's batches are (a frame-last copy costs more than the
    module gains from it: 0.33 against ~0.1 ms for 4 games)."""

    def __init__(self, input_observation_space=None, input_action_space=None, *,
                 num_frames: int = 4, device=None, **kwargs):
        self.num_frames = num_frames
        self.device = device
        self._stacks: np.ndarray | None = None
        self._held: list[tuple[str, int] | None] = []  # (episode id, t) each stack is at
        super().__init__(input_observation_space, input_action_space, **kwargs)

    def recompute_output_observation_space(self, input_observation_space,
                                           input_action_space):
        return gym.spaces.Box(0, 255, (*input_observation_space.shape[:2], self.num_frames),
                              np.uint8)

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs):
        k = self.num_frames
        newest = kwargs.get(Columns.OBS)  # this step's frames, one per game, when stepping
        if self._stacks is None or len(self._stacks) != len(episodes):
            height, width = self.observation_space.shape[:2]
            self._stacks = np.zeros((len(episodes), k, height, width), np.uint8)
            self._held = [None] * len(episodes)
        for i, episode in enumerate(episodes):
            if newest is not None and self._held[i] == (episode.id_, episode.t - 1):
                self._stacks[i, :-1] = self._stacks[i, 1:]
                self._stacks[i, -1] = newest[i]
            else:
                seen = episode.t + 1  # frames since the reset (earlier chunks included)
                frames = np.asarray(
                    episode.get_observations(indices=slice(-min(k, seen), None)))
                if len(frames) < k:
                    frames = np.concatenate([np.repeat(frames[:1], k - len(frames), 0),
                                             frames])
                self._stacks[i] = frames
            self._held[i] = (episode.id_, episode.t)
        stacks = torch.from_numpy(self._stacks.copy()).to(self.device or "cpu")
        batch[Columns.OBS] = stacks.permute(0, 2, 3, 1)  # as the replay's batches are
        return batch


class ActionsToNumpy(ConnectorV2):
    """Module-to-env for the Q-module's actions: the batch of actions as one numpy array (in
    place of RLlib's default pieces: unbatching, clipping, listifying, and their timers)."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs):
        batch[Columns.ACTIONS] = batch[Columns.ACTIONS].cpu().numpy()
        return batch


def _numpy_finished_games(buffer, episodes) -> None:
    """Running games are stored as lists, so that appending a chunk costs the chunk (a numpy'd
    episode is copied whole on every append); a finished game becomes one array (a frame as
    its own array costs ~0.7 KiB more per step: 1M steps 7.9 against 7.2 GiB, measured)."""
    for episode in force_list(episodes):
        index = buffer.episode_id_to_index.get(episode.id_) if episode.is_done else None
        if index is not None:
            stored = buffer.episodes[index - buffer._num_episodes_evicted]
            if not stored.is_numpy:
                stored.to_numpy()


class FrameStackEpisodeReplayBuffer(EpisodeReplayBuffer):
    """Uniform replay of episodes stored as single uint8 frames; a sampled transition's
    observation and next observation are stacked from the stored frames.

    RLlib's own sampler (`EpisodeReplayBuffer`) returns each transition as a 2-observation
    episode, with no earlier frames to stack from; this one builds the same 2-observation
    episodes with (84, 84, k) observations. n-step returns as RLlib computes them.
    """

    def __init__(self, capacity: int = 10000, *, num_frames: int = 4, **kwargs):
        super().__init__(capacity, **kwargs)
        self.num_frames = num_frames
        self._space = gym.spaces.Box(0, 255, (SCREEN, SCREEN, num_frames), np.uint8)

    def add(self, episodes) -> None:
        super().add(episodes)
        _numpy_finished_games(self, episodes)

    def sample(self, num_items: int | None = None, *, batch_size_B: int | None = None,
               n_step: int | tuple | None = 1, gamma: float = 0.99, **kwargs):
        size = num_items or batch_size_B or self.batch_size_B
        out: list[SingleAgentEpisode] = []
        while len(out) < size:
            index, t = self._indices[self.rng.integers(len(self._indices))]
            sample = _stacked_transition(self, index, t, n_step, gamma, 1.0)
            if sample is not None:
                out.append(sample)
        self.sampled_timesteps += size
        return out


class FrameStackPrioritizedEpisodeReplayBuffer(PrioritizedEpisodeReplayBuffer):
    """Prioritized replay (Schaul et al. 2016) of single uint8 frames, stacked when sampled.

    RLlib's sum and min trees hold one priority per stored step (a new step gets the highest
    priority so far); a step is drawn with probability p^alpha / sum, weighted by
    (N * P)^-beta / max weight; the DQN loop then sets the drawn steps' priorities to their
    TD errors (`update_priorities`)."""

    def __init__(self, capacity: int = 10000, *, num_frames: int = 4, **kwargs):
        super().__init__(capacity, **kwargs)
        self.num_frames = num_frames
        self._space = gym.spaces.Box(0, 255, (SCREEN, SCREEN, num_frames), np.uint8)

    def add(self, episodes, weight: float | None = None) -> None:
        super().add(episodes, weight)
        _numpy_finished_games(self, episodes)

    def sample(self, num_items: int | None = None, *, batch_size_B: int | None = None,
               n_step: int | tuple | None = 1, gamma: float = 0.99, beta: float = 0.0,
               **kwargs):
        size = num_items or batch_size_B or self.batch_size_B
        total, stored = self._sum_segment.sum(), self.get_num_timesteps()
        max_weight = (self._min_segment.min() / total * stored) ** (-beta)
        self._last_sampled_indices = []
        out: list[SingleAgentEpisode] = []
        while len(out) < size:
            node = self._sum_segment.find_prefixsum_idx(self.rng.random() * total)
            index, t = self._indices[self._tree_idx_to_sample_idx[node]][:2]
            weight = (self._sum_segment[node] / total * stored) ** (-beta) / max_weight
            sample = _stacked_transition(self, index, t, n_step, gamma, weight)
            if sample is not None:
                out.append(sample)
                self._last_sampled_indices.append(node)
        self.sampled_timesteps += size
        return out


def _stacked_transition(buffer, index: int, t: int, n_step, gamma: float,
                        weight: float) -> SingleAgentEpisode | None:
    """Stored step t of episode `index` as RLlib's 2-observation episode: the stacked frames
    at t and at t + n, the n-step discounted reward (n shortened at the episode's end), the
    importance weight. None if the step cannot start a transition."""
    episode = buffer.episodes[index - buffer._num_episodes_evicted]
    k = buffer.num_frames
    n = n_step if isinstance(n_step, int) else int(buffer.rng.integers(*n_step))
    n = min(n, len(episode) - t)
    if n < 1:
        return None
    frames = np.asarray(episode.get_observations(indices=stack_indices(t + n, k + n)))
    rewards = np.asarray(episode.get_rewards(indices=list(range(t, t + n))), dtype=np.float64)
    end = t + n == len(episode)
    sample = SingleAgentEpisode(
        id_=episode.id_, agent_id=episode.agent_id, module_id=episode.module_id,
        observation_space=buffer._space, action_space=episode.action_space,
        observations=[stacked(frames[:k]), stacked(frames[n:])],
        actions=[episode.get_actions(t)],
        rewards=[float(np.sum(rewards * gamma ** np.arange(n)))],
        infos=[{}, {}], terminated=end and episode.is_terminated,
        truncated=end and episode.is_truncated, t_started=t, len_lookback_buffer=0)
    sample.extra_model_outputs["n_step"] = InfiniteLookbackBuffer(np.array([n]))
    sample.extra_model_outputs["weights"] = InfiniteLookbackBuffer(np.array([weight]))
    return sample


class AtariQModule(LeanActing, LeanDoubleQ, DefaultDQNTorchRLModule):
    """RLlib's DQN Q-network (conv encoder, Q head; dueling and distributional as configured)
    taking uint8 frames, scaled to [0, 1] on the way in (on the learner's device)."""

    def _qf_forward_helper(self, batch, encoder, head):
        frames = batch[Columns.OBS]
        # one pass over the batch where `.float() / 255` makes two (~2x faster on 32 stacks)
        floats = (frames.to(torch.float32).mul_(1.0 / 255.0) if frames.dtype == torch.uint8
                  else frames.float() / 255.0)
        scaled = {**batch, Columns.OBS: floats}
        return super()._qf_forward_helper(scaled, encoder, head)

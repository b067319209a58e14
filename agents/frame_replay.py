"""Uniform replay in preallocated rings: stacks and n-step returns are gathered with array
indexing, straight into the tensors one update takes.

Each observation the env runner's episodes hold is stored once: an 84x84 uint8 frame on
Atari (stacks of `num_frames` are gathered from consecutive slots), a vector or board
elsewhere (`num_frames: 1`, stored as it comes).

A *lane* holds whole games one after another (RLlib's env runner plays `num_envs` games at
once, so there is a lane per concurrent game); an episode's frames are contiguous in its lane,
and its last observation (after the terminal or truncated step) gets a slot of its own, from
which no transition starts.

Stacking matches acting (`trainyard.agents.atari.StackFrames`): the k frames ending at t, the
episode's first frame repeated before it (Gymnasium's FrameStackObservation after a reset).
n-step returns stop at the episode's end, as RLlib's buffers do; a truncated episode
bootstraps from its last observation, a terminated one does not.
"""

from __future__ import annotations

import numpy as np
import torch


class FrameReplay:
    """Ring buffers of single frames, one per lane; `sample` returns torch tensors.

    RLlib builds its replay buffer from `replay_buffer_config` (`type`, `capacity`, the rest
    as keyword arguments), so this class is named there by its dotted path.
    """

    def __init__(self, capacity: int = 100_000, *, lanes: int = 1, num_frames: int = 4,
                 n_step: int = 1, gamma: float = 0.99, seed: int | None = None, **_ignored):
        self.lanes, self.k, self.n, self.gamma = lanes, num_frames, n_step, gamma
        self.size = max(capacity // lanes, num_frames + n_step + 1)
        shape = (lanes, self.size)
        self.frames: np.ndarray | None = None      # allocated at the first observation
        self.t = np.zeros(shape, np.int64)          # step of the frame within its episode
        self.action = np.zeros(shape, np.int64)     # action taken from this frame
        self.reward = np.zeros(shape, np.float32)
        self.terminated = np.zeros(shape, bool)     # the step from this frame ended the game
        self.ended = np.zeros(shape, bool)          # ... terminated or truncated it
        self.final = np.ones(shape, bool)           # a last observation: no step from here
        self.written = np.zeros(lanes, np.int64)    # slots ever written, per lane
        self.rng = np.random.default_rng(seed)
        self._lane_of: dict[str, int] = {}          # running episode id -> its lane
        self._free = list(range(lanes))
        self._seen = np.zeros(lanes, np.int64)      # when each lane last got a chunk
        self._chunks = 0
        self.added = 0
        self.abandoned = 0  # games cut short because their runner was lost (see _take_lane)

    # -- adding ---------------------------------------------------------------------------
    def add(self, episodes) -> None:
        """Add chunks of episodes (RLlib's `SingleAgentEpisode`s, as an env runner returns
        them). Chunks that finish a game go first, so their lanes are free for new games."""
        for episode in sorted(episodes, key=lambda e: not e.is_done):
            self._add_chunk(episode)

    def _add_chunk(self, episode) -> None:
        frames = np.asarray(episode.get_observations())
        steps = len(episode)
        if episode.t_started == 0 or episode.id_ not in self._lane_of:
            if episode.id_ in self._lane_of:  # (cannot happen: an episode starts once)
                self._free.append(self._lane_of.pop(episode.id_))
            # (an episode first seen mid-way, after a restore, starts its lane's count at 0)
            lane = self._lane_of[episode.id_] = self._take_lane()
            self._write(lane, frames[:1], 0)
        lane = self._lane_of[episode.id_]
        self._chunks += 1
        self._seen[lane] = self._chunks
        if steps:
            # the chunk's first observation is the previous chunk's last: already written
            first = self._slot(lane, self.written[lane] - 1)
            actions = np.asarray(episode.get_actions())
            rewards = np.asarray(episode.get_rewards(), np.float32)
            self.action[lane, first] = actions[0]
            self.reward[lane, first] = rewards[0]
            self.final[lane, first] = False
            self._write(lane, frames[1:], self.t[lane, first] + 1)
            slots = self._slot(lane, np.arange(self.written[lane] - steps - 1,
                                               self.written[lane] - 1))
            self.action[lane, slots[1:]] = actions[1:]
            self.reward[lane, slots[1:]] = rewards[1:]
            self.final[lane, slots[1:]] = False
            self.added += steps
        if episode.is_done:
            last = self._slot(lane, self.written[lane] - 2)  # the step into the final frame
            self.ended[lane, last] = True
            self.terminated[lane, last] = episode.is_terminated
            self._free.append(self._lane_of.pop(episode.id_))

    def _take_lane(self) -> int:
        if self._free:
            return self._free.pop(0)
        # A game starts while every lane holds a running one: an env runner was lost (a
        # node died, a hung runner was killed) and its games will never send another chunk;
        # its restarted self plays new ones. The lane that waited longest is such a game:
        # it ends there as truncated (its n-step returns stop and bootstrap from its last
        # frame instead of running into the next game's frames) and the lane is reused.
        episode, lane = min(self._lane_of.items(), key=lambda item: self._seen[item[1]])
        del self._lane_of[episode]
        last = self._slot(lane, self.written[lane] - 2)  # its last step, if it made one
        if self.written[lane] >= 2 and not self.final[lane, last]:
            self.ended[lane, last] = True
        self.abandoned += 1
        return lane

    def _slot(self, lane: int, absolute):  # noqa: ARG002 (lane: for the reader)
        return np.asarray(absolute) % self.size

    def _write(self, lane: int, frames: np.ndarray, first_t: int) -> None:
        count = len(frames)
        if self.frames is None:  # the observations' shape and dtype, as the env gives them
            self.frames = np.zeros((self.lanes, self.size, *frames.shape[1:]), frames.dtype)
        slots = self._slot(lane, np.arange(self.written[lane], self.written[lane] + count))
        self.frames[lane, slots] = frames
        self.t[lane, slots] = np.arange(first_t, first_t + count)
        self.final[lane, slots] = True  # until its step is known
        self.ended[lane, slots] = self.terminated[lane, slots] = False
        self.written[lane] += count

    # -- sampling -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(np.minimum(self.written, self.size).sum())

    def _window(self) -> tuple[np.ndarray, np.ndarray]:
        """Per lane, the absolute slots a transition may start from: [low, high). The oldest
        k-1 slots of a full ring are left out: their stacks would reach overwritten frames."""
        low = np.maximum(self.written - self.size + self.k - 1, 0)
        return low, np.maximum(self.written, low)

    def _complete(self, lane: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Transitions whose n-step return is known: not from an episode's last frame, and n
        more frames written or the episode's end met before them."""
        reach = self.written[lane] - 1 - start  # frames written after the start
        complete = reach >= self.n
        for d in range(self.n):
            complete |= (d < reach) & self.ended[lane, (start + d) % self.size]
        return complete & ~self.final[lane, start % self.size]

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """`batch_size` transitions drawn uniformly: `obs`/`next_obs` (Atari: uint8 stacks
        [B, 84, 84, k]; else [B, *observation shape]), `actions`, the n-step discounted
        `rewards`, `discounts` (gamma^n, 0 after a terminal) and `n_step`, all torch tensors
        on the CPU."""
        low, high = self._window()
        widths = high - low
        total, offsets = widths.sum(), np.cumsum(widths) - widths
        lanes, starts, found = [], [], 0
        for _ in range(100 if total else 0):
            draw = self.rng.integers(total, size=2 * batch_size)
            lane = np.searchsorted(offsets + widths, draw, side="right")
            absolute = low[lane] + draw - offsets[lane]
            ok = self._complete(lane, absolute)
            lanes.append(lane[ok])
            starts.append(absolute[ok])
            found += int(ok.sum())
            if found >= batch_size:
                break
        else:
            raise ValueError("FrameReplay.sample: no complete transition stored yet (start "
                             "learning after more env steps)")
        lane = np.concatenate(lanes)[:batch_size]
        start = np.concatenate(starts)[:batch_size]
        return self._gather(lane, start)

    def _gather(self, lane: np.ndarray, start: np.ndarray) -> dict[str, torch.Tensor]:
        size, gamma = self.size, self.gamma
        returns = np.zeros(len(lane), np.float32)
        steps = np.zeros(len(lane), np.int64)
        open_ = np.ones(len(lane), bool)   # no episode end met yet
        terminal = np.zeros(len(lane), bool)
        for d in range(self.n):
            slot = (start + d) % size
            returns += open_ * (gamma ** d) * self.reward[lane, slot]
            steps += open_
            end = open_ & self.ended[lane, slot]
            terminal |= end & self.terminated[lane, slot]
            open_ &= ~end
        discounts = np.where(terminal, 0.0, gamma ** steps).astype(np.float32)
        return {"obs": self._stack(lane, start), "next_obs": self._stack(lane, start + steps),
                "actions": torch.from_numpy(self.action[lane, start % size]),
                "rewards": torch.from_numpy(returns), "discounts": torch.from_numpy(discounts),
                "n_step": torch.from_numpy(steps)}

    def _stack(self, lane: np.ndarray, absolute: np.ndarray) -> torch.Tensor:
        """[B, 84, 84, k] uint8: a permuted view of a [B, k, 84, 84] gather, so the conv
        encoder's permute back to channels-first is free. Unstacked: [B, *shape]."""
        if self.k == 1:
            return torch.from_numpy(self.frames[lane, absolute % self.size])
        back = np.minimum(np.arange(self.k - 1, -1, -1)[None, :],
                          self.t[lane, absolute % self.size][:, None])
        slots = (absolute[:, None] - back) % self.size
        return torch.from_numpy(self.frames[lane[:, None], slots]).permute(0, 2, 3, 1)

    # -- RLlib's replay-buffer interface, as the algorithm calls it -------------------------
    def get_metrics(self) -> dict:
        return {"num_env_steps_added": self.added, "stored_frames": len(self)}

    def get_state(self) -> dict:  # the replay is not checkpointed (as RLlib's default)
        return {}

    def set_state(self, state: dict) -> None:
        pass

"""A user's own Gymnasium env, as trainyard takes it: `agent.env: "myenvs:CueRecall-v0"`.

CueRecall is the smallest task that needs memory: the first observation shows one of
`cues` signals, the next `delay` observations show nothing of it (only the time), and the
last step pays 1 for the action that names the cue. An agent that sees only the current
observation can do no better than guess (1 / cues on average); one that remembers scores 1.
"""

import gymnasium as gym
import numpy as np


class CueRecall(gym.Env):
    def __init__(self, cues: int = 4, delay: int = 6):
        self.cues, self.delay = cues, delay
        # the cue (one-hot, first step only) and the share of the episode gone
        self.observation_space = gym.spaces.Box(0.0, 1.0, (cues + 1,), np.float32)
        self.action_space = gym.spaces.Discrete(cues)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.cues + 1, np.float32)
        if self.t == 0:
            obs[self.cue] = 1.0
        obs[-1] = self.t / (self.delay + 1)
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.cue = 0, int(self.np_random.integers(self.cues))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        done = self.t > self.delay
        reward = float(done and int(action) == self.cue)
        return self._obs(), reward, done, False, {}


gym.register("CueRecall-v0", entry_point=CueRecall)

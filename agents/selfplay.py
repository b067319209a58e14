"""Self-play on RLlib's multi-agent stack: the game env, masked Q-modules, the league, Elo.

- `GameEnv`: an OpenSpiel two-player game as an RLlib `MultiAgentEnv` (agents `player_0`,
  `player_1`; only the player to move gets an observation; the terminal step rewards both).
- `MaskedQModule`: RLlib's DQN module; illegal actions get a Q-value of -inf, which RLlib's
  DQN already reads as "never": its epsilon-greedy draws among finite values and its targets
  turn -inf into 0. Nothing is "punished" into the reward.
- `ReferenceModule`: a fixed opponent (uniform random, alpha-beta) as an RLModule.
- `LeagueMapping`: which module plays which side of an episode: `main` (the learner) on a
  random side, its opponent drawn from the league's weights.
- `LeagueCallback`: the env runners' side: counts each episode's outcome per opponent.
- `League`: the driver's side, after each training iteration: win rates per opponent, frozen
  snapshots of `main` (deep copies) when it beats the pool, opponent weights (uniform or
  prioritized fictitious self-play), Elo ratings from evaluation games.

Nothing here depends on which RLlib algorithm trains `main`; DQN is the default learner.
"""

from __future__ import annotations

import random
import zlib

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.dqn.dqn_learner import QF_PREDS
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module import RLModule
from ray.rllib.env.multi_agent_env import MultiAgentEnv
from ray.rllib.utils.replay_buffers.multi_agent_episode_buffer import MultiAgentEpisodeReplayBuffer
from ray.rllib.utils.replay_buffers.multi_agent_prioritized_episode_buffer import (
    MultiAgentPrioritizedEpisodeReplayBuffer,
)

from trainyard.agents.elo import MAIN, opponent_weights
from trainyard.agents.games import (
    GameInfo,
    Match,
    actions_are_columns,
    game_info,
    legal_mask,
    reference_player,
)
from trainyard.agents.learner import LeanDoubleQ
from trainyard.agents.qsearch import QSearch

AGENTS = ("player_0", "player_1")


def module_id(opponent: str) -> str:
    """`alphabeta:2` -> `alphabeta2` (a ModuleID must be a plain name)."""
    return opponent.replace(":", "")


# --------------------------------------------------------------------------- the env


def _spaces(info: GameInfo):
    obs = gym.spaces.Box(0.0, 1.0, (info.rows, info.cols, 3), np.float32)
    return obs, gym.spaces.Discrete(info.num_actions)


class GameEnv(MultiAgentEnv):
    """`config`: `game`, and `opening_plies` (each game starts after 0 to that many random
    moves, drawn per game)."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        config = config or {}
        self.info = game_info(config.get("game", "connect_four"))
        self.opening_plies = int(config.get("opening_plies", 0))
        self.rng = np.random.default_rng()
        obs_space, action_space = _spaces(self.info)
        self.possible_agents = list(AGENTS)
        self.agents = list(AGENTS)
        self.observation_spaces = {a: obs_space for a in AGENTS}
        self.action_spaces = {a: action_space for a in AGENTS}
        self.match: Match | None = None

    def _obs(self, player: int) -> np.ndarray:
        return self.match.observation(player)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.match = Match(self.info)
        for _ in range(self.rng.integers(self.opening_plies + 1)):
            self.match.apply(int(self.rng.choice(self.match.legal())))
            if self.match.over:  # (a short game can end within 8 random moves)
                self.match = Match(self.info)
        mover = self.match.to_move
        return {AGENTS[mover]: self._obs(mover)}, {}

    def step(self, action_dict):
        mover = self.match.to_move
        self.match.apply(int(action_dict[AGENTS[mover]]))
        if not self.match.over:
            nxt = self.match.to_move
            return ({AGENTS[nxt]: self._obs(nxt)}, {}, {"__all__": False},
                    {"__all__": False}, {})
        returns = self.match.returns()
        obs = {AGENTS[p]: self._obs(p) for p in (0, 1)}
        rewards = {AGENTS[p]: returns[p] for p in (0, 1)}
        done = {AGENTS[0]: True, AGENTS[1]: True, "__all__": True}
        return obs, rewards, done, {"__all__": False}, {}


# --------------------------------------------------------------------------- modules


class MaskedQModule(LeanDoubleQ, DefaultDQNTorchRLModule):
    """DQN's Q-network on the board planes; the Q-values of illegal actions are -inf (the
    mask is read off the observation's plane 2, see trainyard.agents.games)."""

    def __init__(self, *, observation_space=None, action_space=None, model_config=None,
                 **kwargs):
        self.board_space = observation_space
        conv = (model_config.get("conv_filters") if isinstance(model_config, dict)
                else getattr(model_config, "conv_filters", None))
        self.flatten = not conv  # an MLP sees the planes as one vector
        if self.flatten:
            observation_space = gym.spaces.Box(
                0.0, 1.0, (int(np.prod(observation_space.shape)),), np.float32)
        super().__init__(observation_space=observation_space, action_space=action_space,
                         model_config=model_config, **kwargs)

    def setup(self):
        super().setup()
        self.observation_space = self.board_space

    def _qf_forward_helper(self, batch, encoder, head):
        board = batch[Columns.OBS]
        planes = board.reshape(board.shape[0], -1) if self.flatten else board
        out = super()._qf_forward_helper({**batch, Columns.OBS: planes}, encoder, head)
        targets = board[..., 2]  # the cells legal moves would fill
        mask = (targets.amax(dim=-2) if actions_are_columns(self.action_space.n,
                                                            *targets.shape[-2:])
                else targets.flatten(-2))
        out[QF_PREDS] = out[QF_PREDS].masked_fill(mask <= 0, -torch.inf)
        return out


class ReferenceModule(RLModule):
    """A fixed opponent (`model_config`: game, player, seed) that acts from the
    observation alone and is never trained."""

    def setup(self):
        config = self.model_config
        self.player = reference_player(config["player"], game_info(config["game"]),
                                       config.get("seed"))

    def _forward(self, batch, **kwargs):
        boards = np.asarray(batch[Columns.OBS])
        masks = legal_mask(boards, self.action_space.n)
        actions = [self.player.act(boards[i], masks[i]) for i in range(len(boards))]
        return {Columns.ACTIONS: torch.as_tensor(actions, dtype=torch.int64)}

    def _forward_train(self, *args, **kwargs):
        raise NotImplementedError("a reference opponent is not trained")

    def compile(self, *args, **kwargs):
        pass


class QPlayer:
    """A Q-module as a games.Player: the best legal action (greedy), or with `epsilon` a
    random legal one."""

    def __init__(self, module, name: str = MAIN, epsilon: float = 0.0, seed: int | None = None,
                 search_depth: int = 0, info: GameInfo | None = None):
        self.module, self.name, self.epsilon = module, name, epsilon
        self.rng = np.random.default_rng(seed)
        # a shallow search over the rules with this network at the leaves (play and
        # evaluation only: agent.play_search_depth)
        self.search = QSearch(info, search_depth, self.q_values, seed) if search_depth else None

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.module.compute_q_values({Columns.OBS: torch.as_tensor(obs)})
        return out[QF_PREDS].numpy()

    def act(self, obs: np.ndarray, mask: np.ndarray) -> int:
        if self.epsilon and self.rng.random() < self.epsilon:
            return int(self.rng.choice(np.flatnonzero(mask)))
        if self.search is not None:
            return self.search.act(obs, mask)
        with torch.no_grad():
            batch = {Columns.OBS: torch.as_tensor(obs[None])}
            return int(self.module.forward_inference(batch)[Columns.ACTIONS][0])


# --------------------------------------------------------------------------- the league


class LeagueMapping:
    """Agent -> module for one episode: `main` plays a side drawn at random, the other side
    an opponent drawn by weight. Both calls of an episode draw from the same seed (the episode
    id), so they agree."""

    def __init__(self, opponents: list[str], weights: list[float], seed: int = 0):
        self.opponents, self.weights, self.seed = list(opponents), list(weights), seed

    def __call__(self, agent_id, episode, **kwargs) -> str:
        rng = random.Random(zlib.crc32(f"{self.seed}/{episode.id_}".encode()))
        main_side = rng.randrange(2)
        if agent_id == AGENTS[main_side]:
            return MAIN
        return rng.choices(self.opponents, self.weights)[0]


class LeagueCallback(RLlibCallback):
    """Counts each finished game under ("league", opponent): games, and main's score
    (1 win, 0.5 draw, 0 loss). Games of main against itself are not counted."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs):
        modules = {aid: episode.module_for(aid) for aid in AGENTS}
        if list(modules.values()).count(MAIN) != 1:
            return
        main_agent = next(a for a, m in modules.items() if m == MAIN)
        other = next(m for a, m in modules.items() if a != main_agent)
        ret = episode.agent_episodes[main_agent].get_return()
        score = 1.0 if ret > 0 else 0.5 if ret == 0 else 0.0
        metrics_logger.log_value(("league", other, "games"), 1, reduce="sum")
        metrics_logger.log_value(("league", other, "score"), score, reduce="sum")


# --------------------------------------------------------------------------- replay


class _SampleMainOnly:
    """Replay for the modules that learn: RLlib's DQN samples a batch for every module in the
    buffer, frozen opponents included, unless told which (`modules_to_sample`)."""

    def __init__(self, *args, modules_to_sample=(MAIN,), **kwargs):
        super().__init__(*args, **kwargs)
        self.modules_to_sample = list(modules_to_sample)

    def sample(self, *args, **kwargs):
        kwargs["modules_to_sample"] = kwargs.get("modules_to_sample") or self.modules_to_sample
        return super().sample(*args, **kwargs)


class MainOnlyEpisodeReplayBuffer(_SampleMainOnly, MultiAgentEpisodeReplayBuffer):
    pass


class MainOnlyPrioritizedEpisodeReplayBuffer(_SampleMainOnly,
                                             MultiAgentPrioritizedEpisodeReplayBuffer):
    pass


# --------------------------------------------------------------------------- config


def make_env_creator(env_id: str):
    """What `register_env` gets for an `OpenSpiel/<game>` id."""
    name = game_info(env_id).name

    def create(config=None):
        return GameEnv({**(config or {}), "game": name})

    return create


def reference_spec(info: GameInfo, opponent: str, seed: int):
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    obs_space, action_space = _spaces(info)
    return RLModuleSpec(module_class=ReferenceModule, observation_space=obs_space,
                        action_space=action_space,
                        model_config={"game": info.name, "player": opponent, "seed": seed})


def main_spec(info: GameInfo, model_config):
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    obs_space, action_space = _spaces(info)
    return RLModuleSpec(module_class=MaskedQModule, observation_space=obs_space,
                        action_space=action_space, model_config=model_config)


def configure(config, agent, league, model_config, seed: int, replay: dict) -> None:
    """Make a DQN AlgorithmConfig a self-play one: the modules (`main`, the reference
    opponents), who plays whom, the outcome counter, and `replay` (a MainOnly buffer: replay
    of `main`'s games only)."""
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec

    info = game_info(agent.env)
    specs = {MAIN: main_spec(info, model_config)}
    for i, opponent in enumerate(league.opponents):
        specs[module_id(opponent)] = reference_spec(info, opponent, 1000 * seed + i)
    refs = tuple(module_id(o) for o in league.opponents)
    names, weights = opponent_weights(list(refs), {}, league.sampling, league.self_play_share,
                                      refs, league.reference_min_share)
    config.multi_agent(policies=set(specs), policies_to_train=[MAIN],
                       policy_mapping_fn=LeagueMapping(names, weights, seed))
    config.rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs=specs))
    config.callbacks(LeagueCallback)
    config.environment(env_config={**config.env_config, "opening_plies": league.opening_plies})
    config.training(replay_buffer_config=replay)
    if league.mirror or league.rotations:
        config.learner_config_dict["board_symmetries"] = {
            "game": info.name, "mirror": league.mirror, "rotations": league.rotations}

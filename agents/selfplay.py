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

import math
import random
import zlib
from dataclasses import dataclass, field

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

from trainyard.agents.games import (
    GameInfo,
    Match,
    Player,
    actions_are_columns,
    game_info,
    head_to_head,
    legal_mask,
    reference_player,
)
from trainyard.agents.learner import LeanDoubleQ

MAIN = "main"
AGENTS = ("player_0", "player_1")


def module_id(opponent: str) -> str:
    """`alphabeta:2` -> `alphabeta2` (a ModuleID must be a plain name)."""
    return opponent.replace(":", "")


# --------------------------------------------------------------------------- the env


def _spaces(info: GameInfo):
    obs = gym.spaces.Box(0.0, 1.0, (info.rows, info.cols, 3), np.float32)
    return obs, gym.spaces.Discrete(info.num_actions)


class GameEnv(MultiAgentEnv):
    def __init__(self, config: dict | None = None):
        super().__init__()
        self.info = game_info((config or {}).get("game", "connect_four"))
        obs_space, action_space = _spaces(self.info)
        self.possible_agents = list(AGENTS)
        self.agents = list(AGENTS)
        self.observation_spaces = {a: obs_space for a in AGENTS}
        self.action_spaces = {a: action_space for a in AGENTS}
        self.match: Match | None = None

    def _obs(self, player: int) -> np.ndarray:
        return self.match.observation(player)

    def reset(self, *, seed=None, options=None):
        self.match = Match(self.info)
        return {AGENTS[0]: self._obs(0)}, {}

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

    def __init__(self, module, name: str = MAIN, epsilon: float = 0.0, seed: int | None = None):
        self.module, self.name, self.epsilon = module, name, epsilon
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, mask: np.ndarray) -> int:
        if self.epsilon and self.rng.random() < self.epsilon:
            return int(self.rng.choice(np.flatnonzero(mask)))
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


@dataclass
class Rated:
    """A player of the Elo table."""

    name: str
    kind: str                    # "reference" | "snapshot"
    env_steps: int = 0           # when it was added (snapshots)
    rating: float = 0.0


@dataclass
class LeagueState:
    snapshots: list[str] = field(default_factory=list)
    win_rate: dict[str, float] = field(default_factory=dict)   # main's, per opponent (EMA)
    games_since_snapshot: int = 0
    results: list[tuple[str, str, int, int, int]] = field(default_factory=list)  # a, b, w/d/l
    players: dict[str, Rated] = field(default_factory=dict)


def fit_elo(results: list[tuple[str, str, int, int, int]], anchor: str,
            prior_draws: float = 1.0, iterations: int = 500) -> dict[str, float]:
    """Elo ratings by maximum likelihood (Bradley-Terry, a draw = half a win each), `anchor`
    at 0. Each pair that played gets `prior_draws` virtual draws, so that a player that never
    lost still gets a finite rating."""
    names = sorted({r[0] for r in results} | {r[1] for r in results} | {anchor})
    index = {n: i for i, n in enumerate(names)}
    n = len(names)
    games = np.zeros((n, n))
    wins = np.zeros(n)
    for a, b, w, d, l_ in results:
        i, j = index[a], index[b]
        total = w + d + l_ + prior_draws
        games[i, j] += total
        games[j, i] += total
        wins[i] += w + 0.5 * (d + prior_draws)
        wins[j] += l_ + 0.5 * (d + prior_draws)
    gamma = np.ones(n)
    for _ in range(iterations):  # Hunter's MM updates
        denom = (games / (gamma[:, None] + gamma[None, :])).sum(axis=1)
        new = np.where(denom > 0, wins / np.maximum(denom, 1e-300), gamma)
        new /= new[index[anchor]]
        if np.allclose(new, gamma, rtol=1e-9):
            gamma = new
            break
        gamma = new
    return {name: float(400 * math.log10(max(gamma[i], 1e-300))) for name, i in index.items()}


def fit_one(results: list[tuple[str, str, int, int, int]], name: str,
            fixed: dict[str, float]) -> float:
    """The rating of `name` from its games against players of `fixed` rating (one virtual
    draw per opponent), by Newton steps on the likelihood."""
    rows = [(fixed[b], w + 0.5 * (d + 1), w + d + l_ + 1) for a, b, w, d, l_ in results
            if a == name and b in fixed]
    if not rows:
        return float("nan")
    rating = float(np.mean([r for r, _, _ in rows]))
    for _ in range(50):
        grad = hess = 0.0
        for r, score, n in rows:
            p = 1.0 / (1.0 + 10 ** ((r - rating) / 400))
            grad += score - n * p
            hess += n * p * (1 - p)
        step = grad / max(hess, 1e-9) * 400 / math.log(10)
        rating += max(-400.0, min(400.0, step))
        if abs(step) < 1e-6:
            break
    return rating


def opponent_weights(names: list[str], win_rate: dict[str, float], sampling: str,
                     self_play_share: float, references: tuple[str, ...] = (),
                     reference_min_share: float = 0.0) -> tuple[list[str], list[float]]:
    """The opponents `main` is drawn against and their weights: uniform over the pool, or
    prioritized fictitious self-play (AlphaStar's weightings of main's win rate p against
    each): `pfsp`, (1 - p)^2, more games against what it loses to; `pfsp_even`, p (1 - p),
    more games against what it beats half the time (a curriculum while main is weak);
    `self_play_share` of the games against the current `main` itself. Each of `references`
    keeps at least `reference_min_share` of the league games (the others scaled down to make
    room): pfsp would otherwise starve a reference main mostly beats, and what main no
    longer plays it forgets."""
    if sampling == "pfsp":
        raw = [max((1.0 - win_rate.get(n, 0.5)) ** 2, 0.02) for n in names]
    elif sampling == "pfsp_even":
        raw = [max(win_rate.get(n, 0.5) * (1.0 - win_rate.get(n, 0.5)), 0.02) for n in names]
    else:
        raw = [1.0] * len(names)
    total = sum(raw)
    base = shares = [w / total for w in raw]
    kept = [i for i, n in enumerate(names) if n in references]
    floored: set[int] = set()
    while True:  # raise the references below the floor; scaling the rest may push more below
        low = {i for i in kept if i not in floored and shares[i] < reference_min_share}
        if not low or len(floored | low) == len(names):
            break
        floored |= low
        room = 1.0 - reference_min_share * len(floored)
        scale = room / sum(base[i] for i in range(len(names)) if i not in floored)
        shares = [reference_min_share if i in floored else base[i] * scale
                  for i in range(len(names))]
    weights = [(1.0 - self_play_share) * w for w in shares]
    if self_play_share > 0:
        return [*names, MAIN], [*weights, self_play_share]
    return list(names), weights


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
        return GameEnv({"game": name})

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
    config.training(replay_buffer_config=replay)
    if league.mirror or league.rotations:
        config.learner_config_dict["board_symmetries"] = {
            "game": info.name, "mirror": league.mirror, "rotations": league.rotations}


# --------------------------------------------------------------------------- the driver's side


def _numpy_copy(state):
    """A deep copy of a module state as numpy arrays: nothing shared with the live module."""
    if isinstance(state, dict):
        return {k: _numpy_copy(v) for k, v in state.items()}
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().numpy().copy()
    if isinstance(state, np.ndarray):
        return state.copy()
    return state


def _set_on_env_runners(algo, module_id: str, weights: dict) -> None:
    """Put a module's weights on every env runner (the local one included) now. (RLlib's
    `sync_weights` skips an env runner whose weights carry the learner's current sequence
    number: weights set on the learner between two updates would not arrive.)"""

    def put(runner, _module_id=module_id, _weights=weights):
        module = runner.module[_module_id]
        own = module.get_state()
        module.set_state({k: v for k, v in _weights.items() if k in own})

    algo.env_runner_group.foreach_env_runner(put, local_env_runner=True)


class League:
    """The league around `main`, run by the driver after every training iteration."""

    def __init__(self, agent, league, seed: int):
        self.config, self.seed = league, seed
        self.info = game_info(agent.env)
        self.references = [module_id(o) for o in league.opponents]
        self.state = LeagueState()
        for name in self.references:
            self.state.players[name] = Rated(name, "reference")
        self._reference_players = {module_id(o): o for o in league.opponents}

    # --- who plays whom

    def pool(self) -> list[str]:
        return [*self.references, *self.state.snapshots[-self.config.pool_size:]]

    def pool_win_rate(self) -> float:
        """Main's recent score against its frozen selves: the mean over the snapshots in the
        pool of the decayed win rate (a draw counts half; one not met yet counts 0.5). The
        references stay out of it: a search main cannot beat yet must not stop the league
        from growing."""
        snapshots = self.state.snapshots[-self.config.pool_size:]
        return float(np.mean([self.state.win_rate.get(o, 0.5) for o in snapshots]))

    def mapping(self) -> LeagueMapping:
        names, weights = opponent_weights(self.pool(), self.state.win_rate,
                                          self.config.sampling, self.config.self_play_share,
                                          tuple(self.references),
                                          self.config.reference_min_share)
        return LeagueMapping(names, weights, self.seed + len(self.state.snapshots))

    def _push_mapping(self, algo) -> None:
        mapping = self.mapping()

        def set_mapping(runner, _mapping=mapping):
            runner.config.multi_agent(policy_mapping_fn=_mapping)

        algo.env_runner_group.foreach_env_runner(set_mapping)

    # --- after each iteration

    def after_iteration(self, algo, result: dict, env_steps: int) -> dict[str, float]:
        counts = (result.get("env_runners") or {}).get("league") or {}
        decay = self.config.win_rate_decay
        for opponent, c in counts.items():
            games, score = float(c.get("games", 0)), float(c.get("score", 0))
            if not games > 0:  # none this iteration (RLlib reports an empty sum as nan)
                continue
            old = self.state.win_rate.get(opponent)
            rate = score / games
            self.state.win_rate[opponent] = rate if old is None else (
                decay ** games * old + (1 - decay ** games) * rate)
            self.state.games_since_snapshot += int(games)
        metrics = {f"league/win_rate/{o}": r for o, r in self.state.win_rate.items()}
        if not self.state.snapshots:  # the league starts with main as it starts out
            metrics.update(self.snapshot(algo, env_steps))
        pool_rate = self.pool_win_rate()
        metrics["league/win_rate_vs_pool"] = pool_rate
        if (self.state.games_since_snapshot >= self.config.snapshot_min_games
                and pool_rate >= self.config.snapshot_win_rate):
            metrics.update(self.snapshot(algo, env_steps))
        metrics["league/snapshots"] = float(len(self.state.snapshots))
        self._push_mapping(algo)
        return metrics

    def snapshot(self, algo, env_steps: int) -> dict[str, float]:
        """Freeze a deep copy of `main` into the pool, and rate it."""
        sid = f"snapshot_{len(self.state.snapshots)}"
        weights = _numpy_copy(algo.learner_group.get_weights(module_ids=[MAIN])[MAIN])
        self._add_module(algo, sid)
        algo.learner_group.set_weights({sid: weights})
        _set_on_env_runners(algo, sid, weights)
        self.state.snapshots.append(sid)
        self.state.players[sid] = Rated(sid, "snapshot", env_steps)
        self.state.win_rate[sid] = 0.5
        self.state.games_since_snapshot = 0
        return self.rate(algo, sid)

    def _add_module(self, algo, sid: str) -> None:
        # the model config as the algorithm completed it (DQN adds dueling, double_q, ...)
        algo.add_module(sid, main_spec(self.info, algo.config.model_config),
                        new_agent_to_module_mapping_fn=self.mapping(),
                        new_should_module_be_updated=[MAIN])

    # --- Elo

    def player(self, algo, name: str, salt: int = 0) -> Player:
        if name in self._reference_players:
            return reference_player(self._reference_players[name], self.info,
                                    seed=zlib.crc32(f"{self.seed}/{name}/{salt}".encode()))
        return QPlayer(algo.get_module(name), name)

    def rate(self, algo, sid: str) -> dict[str, float]:
        """Games of the new snapshot against the references and the last few snapshots;
        then every rating again from all games so far."""
        games = self.config.elo_games
        if not self.state.results:  # the references among themselves, once
            for i, a in enumerate(self.references):
                for b in self.references[i + 1:]:
                    w, d, l_ = head_to_head(self.info, self.player(algo, a),
                                            self.player(algo, b), games)
                    self.state.results.append((a, b, w, d, l_))
        others = [*self.references, *self.state.snapshots[:-1][-self.config.elo_opponents:]]
        new = self.player(algo, sid)
        for other in others:
            opponent = self.player(algo, other, len(self.state.snapshots))
            w, d, l_ = head_to_head(self.info, new, opponent, games)
            self.state.results.append((sid, other, w, d, l_))
        ratings = fit_elo(self.state.results, anchor="random" if "random" in self.references
                          else self.references[0])
        for name, rating in ratings.items():
            self.state.players[name].rating = rating
        return {"elo/latest_snapshot": ratings[sid],
                **{f"elo/{name}": r for name, r in ratings.items()}}

    def evaluate(self, algo, games: int) -> dict[str, float]:
        """`main` (greedy) against each reference opponent, moving first in half the games."""
        main = QPlayer(algo.get_module(MAIN))
        metrics, returns, results = {}, [], []
        for name in self.references:
            w, d, l_ = head_to_head(self.info, main, self.player(algo, name, -1), games)
            metrics[f"eval/win_rate_vs_{name}"] = w / games
            metrics[f"eval/loss_rate_vs_{name}"] = l_ / games
            returns.extend([1.0] * w + [0.0] * d + [-1.0] * l_)
            results.append((MAIN, name, w, d, l_))
        metrics["eval/return_mean"] = float(np.mean(returns))
        rated = {n: p.rating for n, p in self.state.players.items()}
        if self.state.snapshots:
            metrics["eval/elo"] = fit_one(results, MAIN, rated)
        return metrics

    def ratings_table(self) -> str:
        rows = ["player,kind,env_steps,elo,games"]
        played = {}
        for a, b, w, d, l_ in self.state.results:
            played[a] = played.get(a, 0) + w + d + l_
            played[b] = played.get(b, 0) + w + d + l_
        for p in sorted(self.state.players.values(), key=lambda p: (p.kind, p.env_steps)):
            rows.append(f"{p.name},{p.kind},{p.env_steps},{p.rating:.1f},{played.get(p.name, 0)}")
        return "\n".join(rows) + "\n"

    def plot(self, path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        snaps = [self.state.players[s] for s in self.state.snapshots]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([p.env_steps for p in snaps], [p.rating for p in snaps], "o-",
                label="snapshots of main")
        for name in self.references:
            ax.axhline(self.state.players[name].rating, linestyle="--", color="grey")
            ax.annotate(name, (0, self.state.players[name].rating), fontsize=8)
        ax.set_xlabel("env steps (moves) when frozen")
        ax.set_ylabel("Elo (random = 0)")
        ax.set_title(f"{self.info.name}: league ratings")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    # --- checkpoints

    def to_json(self) -> dict:
        s = self.state
        return {"snapshots": s.snapshots, "win_rate": s.win_rate,
                "games_since_snapshot": s.games_since_snapshot,
                "results": [list(r) for r in s.results],
                "players": [vars(p) for p in s.players.values()]}

    def load_json(self, data: dict) -> None:
        self.state = LeagueState(
            snapshots=list(data["snapshots"]), win_rate=dict(data["win_rate"]),
            games_since_snapshot=int(data["games_since_snapshot"]),
            results=[tuple(r) for r in data["results"]],
            players={p["name"]: Rated(**p) for p in data["players"]})

    def restore_modules(self, algo) -> None:
        """Before restoring a checkpoint: add the snapshot modules it holds (their weights
        come with the checkpoint, into the learner)."""
        for sid in self.state.snapshots:
            self._add_module(algo, sid)

    def restored(self, algo) -> None:
        """After restoring: the snapshots' weights from the learner to the env runners."""
        if self.state.snapshots:
            weights = algo.learner_group.get_weights(module_ids=self.state.snapshots)
            for sid in self.state.snapshots:
                _set_on_env_runners(algo, sid, _numpy_copy(weights[sid]))

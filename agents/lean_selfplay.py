"""The lean DQN step (`trainyard.agents.lean_dqn`) for self-play: `main`'s moves into a flat
replay, the board symmetries applied to each replayed batch, `dqn_loss` on the masked
Q-network.

RLlib's multi-agent replay stores whole `MultiAgentEpisode`s and, for every sampled move,
builds a single-agent episode around it, then runs the learner's episode-to-batch connectors:
on tic-tac-toe that was half of a training step (cProfile: 31% sampling the replay, 19% the
connectors), against 10% for playing the games. Here a game goes into the replay once, when it
ends: its chunks are joined (RLlib's own `concat_episode`), and the agent episode of each
side `main` played (both sides in a game against itself) is stored as `FrameReplay` stores
any episode, one board per move of that side. A transition is then `main`'s board, its move,
the reward and `main`'s next board (after the opponent's reply), as in RLlib's per-agent
episodes; n-step returns stop at the game's end, so `n_step` > 1 loses no move.
"""

from __future__ import annotations

import numpy as np
import torch

from trainyard.agents.elo import MAIN
from trainyard.agents.lean_dqn import LeanDQN


class FinishedGames:
    """Chunks of games in, the games that ended out (RLlib's `MultiAgentEpisode`s). A game's
    chunks are joined with RLlib's own `concat_episode` until it ends."""

    def __init__(self, max_running: int = 4096):
        self.max_running = max_running
        self.running: dict[str, object] = {}  # game id -> its chunks so far, joined

    def __call__(self, chunks) -> list:
        finished = []
        for chunk in chunks:
            game = self.running.pop(chunk.id_, None)
            if game is None:
                game = chunk
            else:
                game.concat_episode(chunk)
            if game.is_done:
                finished.append(game)
            else:  # (re-inserted: the dict's order is the order games were last seen)
                self.running[chunk.id_] = game
        while len(self.running) > self.max_running:  # games of a lost remote runner never
            del self.running[next(iter(self.running))]  # end: forget the longest unseen
        return finished


def learner_sides(games, learner: str = MAIN) -> list:
    """The agent episodes `learner` played in `games` (both sides when it played itself)."""
    return [game.agent_episodes[agent] for game in games
            for agent in game.agent_episodes if game.module_for(agent) == learner]


def both_sides(game):
    """A finished two-player game as one `SingleAgentEpisode` of all its plies in order: each
    board from the side to move, its move; the last move's reward is its mover's return (a
    move cannot lose the game for its mover), every other reward 0. The final observation is
    the finished board from the side that did not make the last move."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    sides = list(game.agent_episodes.values())
    # the side that moved first saw fewer pieces on its first board (openings included)
    sides.sort(key=lambda side: float(np.asarray(side.get_observations(0))[..., :2].sum()))
    first, second = sides
    moves = [len(side.get_actions()) for side in sides]
    boards, actions = [], []
    for i in range(moves[0]):
        for side, count in ((first, moves[0]), (second, moves[1])):
            if i < count:
                boards.append(side.get_observations(i))
                actions.append(int(side.get_actions(i)))
    last_mover = first if len(actions) % 2 else second
    other = second if last_mover is first else first
    rewards = [0.0] * len(actions)
    rewards[-1] = float(last_mover.get_return())
    return SingleAgentEpisode(observations=[*boards, other.get_observations(-1)],
                              actions=actions, rewards=rewards, terminated=True,
                              len_lookback_buffer=0)


class LeanSelfPlay(LeanDQN):
    """`LeanDQN` for a league: trains `main` only (frozen snapshots and reference opponents
    play, never learn). Reads `board_symmetries` and `negamax` from `learner_config_dict`;
    with `negamax` the replay's discount is already negative (see the module's docstring)."""

    def setup(self, config) -> None:
        super().setup(config)
        self._module_id = MAIN
        self._games = FinishedGames()
        self._negamax = bool(config.learner_config_dict.get("negamax"))
        self._tables = None
        symmetries = config.learner_config_dict.get("board_symmetries")
        if symmetries:
            from trainyard.agents.games import game_info
            from trainyard.agents.symmetry import board_symmetries

            self._tables = board_symmetries(game_info(symmetries["game"]),
                                            symmetries["mirror"], symmetries["rotations"])

    def _replayed(self, episodes) -> list:
        games = self._games(episodes)
        return [both_sides(g) for g in games] if self._negamax else learner_sides(games)

    def _augmented(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._tables is None:
            return batch
        from trainyard.agents.symmetry import symmetric_batch

        return symmetric_batch(batch, self._tables, boards=("obs", "next_obs"))

    def _acting_module(self):
        return self.env_runner.module[MAIN]

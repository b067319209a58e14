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

import torch

from trainyard.agents.elo import MAIN
from trainyard.agents.lean_dqn import LeanDQN


class FinishedGames:
    """Chunks of games in, the agent episodes of `main` in every game that ended out (both
    sides when `main` played itself). A game's chunks are joined with RLlib's own
    `concat_episode` until it ends."""

    def __init__(self, learner: str = MAIN, max_running: int = 4096):
        self.learner, self.max_running = learner, max_running
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
        return [game.agent_episodes[agent] for game in finished
                for agent in game.agent_episodes if game.module_for(agent) == self.learner]


class LeanSelfPlay(LeanDQN):
    """`LeanDQN` for a league: replays and trains `main` only (frozen snapshots and reference
    opponents play, never learn). Reads `board_symmetries` from `learner_config_dict`."""

    def setup(self, config) -> None:
        super().setup(config)
        self._module_id = MAIN
        self._games = FinishedGames(MAIN)
        self._tables = None
        symmetries = config.learner_config_dict.get("board_symmetries")
        if symmetries:
            from trainyard.agents.games import game_info
            from trainyard.agents.symmetry import board_symmetries

            self._tables = board_symmetries(game_info(symmetries["game"]),
                                            symmetries["mirror"], symmetries["rotations"])

    def _replayed(self, episodes) -> list:
        return self._games(episodes)

    def _augmented(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._tables is None:
            return batch
        from trainyard.agents.symmetry import symmetric_batch

        return symmetric_batch(batch, self._tables, boards=("obs", "next_obs"))

    def _acting_module(self):
        return self.env_runner.module[MAIN]

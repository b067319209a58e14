"""A shallow search on top of a learned Q-network, for play and evaluation only.

`agent.play_search_depth: d` looks `d` plies ahead with the game's rules (`games.Rules`):
every line of play of `d` moves is expanded, a position where the game ended scores exactly
(a win more the sooner it comes), and every other leaf is scored by the network from the side
of the player to move there (its best legal Q-value), then negamax backs the values up. All
leaves of one move go through the network as one batch, so depth 2 in Connect Four (<= 49
leaves) costs about one forward pass. Depth 0 is the raw network (argmax Q).

This measures what a search adds to what the network learned; training never uses it, and
evaluations report the raw network unless asked (`trainyard eval --search-depth`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trainyard.agents.games import GameInfo, Rules, legal_mask

# Q-values of a game agent are bounded by 1 (`agent.value_bound`), so any finished game
# scores beyond every leaf estimate; quicker wins (more plies left) score higher.
_WIN = 2.0
_STEP = 0.01


class QSearch:
    """Negamax over the rules to `depth` plies with Q-network leaves; `values(boards)` takes
    a batch of observations (N, rows, cols, 3) and returns their Q-values (N, actions), -inf
    or anything for illegal actions (only legal ones are read)."""

    def __init__(self, info: GameInfo, depth: int,
                 values: Callable[[np.ndarray], np.ndarray], seed: int | None = None):
        if depth < 1:
            raise ValueError("play_search_depth must be at least 1 to search")
        self.info, self.rules, self.depth, self.values = info, Rules(info), depth, values
        self.rng = np.random.default_rng(seed)

    def observation(self, board: np.ndarray) -> np.ndarray:
        """The planes the network sees for the player to move on `board` (+1 its pieces)."""
        return self.planes(board[None])[0]

    def planes(self, boards: np.ndarray) -> np.ndarray:
        """`observation` of a batch of boards (N, cells) in one go: a depth-4 search in
        Connect Four has up to 2,401 leaves, and building their planes one at a time in
        Python took about half as long as the network's forward pass over all of them."""
        info = self.info
        grid = boards.reshape(-1, info.rows, info.cols)
        free = grid == 0
        targets = free.copy()
        if info.gravity:  # a column's lowest free cell: row 0, or a piece under it
            targets[:, 1:] &= ~free[:, :-1]
        return np.stack([grid == 1, grid == -1, targets], axis=-1).astype(np.float32)

    def act(self, obs: np.ndarray, mask: np.ndarray) -> int:
        scores = self.scores(self.rules.board(obs))
        best = max(scores.values())
        return int(self.rng.choice([a for a, v in scores.items() if v >= best - 1e-6]))

    def scores(self, board: np.ndarray) -> dict[int, float]:
        """Each legal action's backed-up value from the mover's side."""
        leaves: list[np.ndarray] = []
        tree = {a: self._expand(board.copy(), a, self.depth, leaves)
                for a in self.rules.legal(board)}
        leaf_values = np.zeros(0)
        if leaves:
            planes = self.planes(np.stack(leaves))
            q = np.asarray(self.values(planes), np.float64)
            legal = legal_mask(planes, self.info.num_actions) > 0  # read off plane 2
            leaf_values = np.where(legal, q, -np.inf).max(axis=1)
        return {a: self._backup(node, leaf_values) for a, node in tree.items()}

    def _expand(self, board: np.ndarray, action: int, depth: int, leaves: list):
        """The node after the mover plays `action`: a float (the game ended; mover's side),
        an int (index of a leaf whose value is from the *next* mover's side) or a list of
        the next mover's children."""
        cell = self.rules.target(board, action)
        board[cell] = 1
        if self.rules.wins(board, cell):
            return _WIN + _STEP * depth
        if not (board == 0).any():
            return 0.0
        opponent = -board  # the next mover's view
        if depth == 1:
            leaves.append(opponent)
            return len(leaves) - 1
        return [self._expand(opponent.copy(), a, depth - 1, leaves)
                for a in self.rules.legal(opponent)]

    def _backup(self, node, leaf_values: np.ndarray) -> float:
        """The value of a node from the side of the player who just moved into it."""
        if isinstance(node, float):
            return node
        if isinstance(node, int):
            return -float(leaf_values[node])
        return -max(self._backup(child, leaf_values) for child in node)

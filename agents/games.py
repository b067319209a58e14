"""Two-player board games for self-play: OpenSpiel plays the game; players see planes.

A game is named `OpenSpiel/<game>` in a job (`OpenSpiel/connect_four`, `OpenSpiel/tic_tac_toe`).
OpenSpiel (C++) keeps the state and its rules; every player, learned or not, sees the same
thing: an observation of shape (rows, cols, 3) from the side of the player to move. Plane 0
holds its own pieces, plane 1 the opponent's, plane 2 the cells a legal move would fill (the
lowest free cell of each open column in Connect Four, every empty cell in tic-tac-toe; none
once the game is over). The legal-move mask is read off plane 2 (`legal_mask`): one array
per observation, where a separate mask entry would make RLlib's replay handle a Dict space
(10x slower to sample, measured).

The reference players (uniform random; a depth-limited alpha-beta search) act from that
observation alone, so that they can also run inside RLlib as modules. The search has its own
small model of the rules (`Rules`: an m,n,k-game, with gravity for Connect Four), which the
tests check against OpenSpiel's on random games.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import numpy as np

PREFIX = "OpenSpiel/"


@dataclass(frozen=True)
class GameInfo:
    name: str        # OpenSpiel's name
    rows: int
    cols: int
    k: int           # pieces in a row that win
    gravity: bool    # pieces fall to the lowest free row of a column (actions are columns)
    planes: tuple[int, int]  # OpenSpiel observation planes of player 0's and player 1's pieces
    marks: tuple[str, str] = ("x", "o")

    @property
    def turns(self) -> bool:
        """Quarter turns are symmetries: a square board without gravity."""
        return not self.gravity and self.rows == self.cols

    @property
    def num_actions(self) -> int:
        return self.cols if self.gravity else self.rows * self.cols

    @property
    def opening_plies(self) -> int:
        """Random moves before an evaluation game when the job does not say: enough that
        each opening is a different position, few enough that it is rarely decided."""
        return 4 if self.gravity else 2


GAMES = {
    "connect_four": GameInfo("connect_four", 6, 7, 4, gravity=True, planes=(0, 1)),
    "tic_tac_toe": GameInfo("tic_tac_toe", 3, 3, 3, gravity=False, planes=(2, 1)),
}


def is_game(env_id: str) -> bool:
    return env_id.startswith(PREFIX)


def game_info(env_id: str) -> GameInfo:
    """`OpenSpiel/connect_four` -> its GameInfo; ValueError naming the games there are."""
    name = env_id[len(PREFIX):] if is_game(env_id) else env_id
    if name not in GAMES:
        raise ValueError(f"unknown two-player game {env_id!r}; the games are: "
                         + ", ".join(PREFIX + g for g in GAMES))
    return GAMES[name]


@cache
def _pyspiel_game(name: str):
    import pyspiel

    return pyspiel.load_game(name)


class Match:
    """One game in OpenSpiel, seen as trainyard's players see it."""

    def __init__(self, info: GameInfo):
        self.info = info
        self.state = _pyspiel_game(info.name).new_initial_state()

    @property
    def to_move(self) -> int:
        return self.state.current_player()

    @property
    def over(self) -> bool:
        return self.state.is_terminal()

    def returns(self) -> tuple[float, float]:
        r = self.state.returns()
        return float(r[0]), float(r[1])

    def legal(self) -> list[int]:
        return [] if self.over else list(self.state.legal_actions())

    def mask(self) -> np.ndarray:
        out = np.zeros(self.info.num_actions, np.float32)
        out[self.legal()] = 1.0
        return out

    def pieces(self) -> np.ndarray:
        """(rows, cols) int8: 1 = player 0's piece, 2 = player 1's, 0 = empty (row 0 is the
        bottom in gravity games)."""
        info = self.info
        tensor = np.asarray(self.state.observation_tensor(0), np.float32).reshape(
            -1, info.rows, info.cols)
        return (tensor[info.planes[0]] + 2 * tensor[info.planes[1]]).astype(np.int8)

    def observation(self, player: int) -> np.ndarray:
        """(rows, cols, 3) float32 from `player`'s side: its pieces, the opponent's, the
        cells the legal moves would fill."""
        info, pieces = self.info, self.pieces()
        own, other = (1, 2) if player == 0 else (2, 1)
        targets = np.zeros(info.rows * info.cols, np.float32)
        for action in self.legal():
            if info.gravity:  # the lowest free cell of the column
                targets[int(np.argmax(pieces[:, action] == 0)) * info.cols + action] = 1.0
            else:
                targets[action] = 1.0
        return np.stack([pieces == own, pieces == other,
                         targets.reshape(info.rows, info.cols)], axis=-1).astype(np.float32)

    def apply(self, action: int) -> None:
        if action not in self.legal():
            raise ValueError(f"illegal action {action} in {self.info.name}; legal: "
                             f"{self.legal()}")
        self.state.apply_action(int(action))

    def draw(self) -> str:
        """The board for a terminal: top row first, with the action numbers to type."""
        info = self.info
        pieces = self.pieces()
        rows = pieces[::-1] if info.gravity else pieces
        symbol = {0: ".", 1: info.marks[0], 2: info.marks[1]}
        lines = []
        for r, row in enumerate(rows):
            if info.gravity:
                lines.append(" ".join(symbol[int(v)] for v in row))
            else:  # empty cells show the action that takes them
                lines.append(" ".join(symbol[int(v)] if v else str(r * info.cols + c)
                                      for c, v in enumerate(row)))
        if info.gravity:
            lines.append(" ".join(str(c) for c in range(info.cols)))
        return "\n".join(lines)


def actions_are_columns(num_actions: int, rows: int, cols: int) -> bool:
    """An action is a column when there are as many actions as columns (gravity games), else
    a cell."""
    return num_actions == cols and num_actions != rows * cols


def legal_mask(obs: np.ndarray, num_actions: int) -> np.ndarray:
    """The legal-move mask of an observation (or a batch: (..., rows, cols, 3)), read off its
    plane 2."""
    targets = obs[..., 2]
    if actions_are_columns(num_actions, *targets.shape[-2:]):
        return targets.max(axis=-2)
    return targets.reshape(*targets.shape[:-2], -1)


class Player(Protocol):
    def act(self, obs: np.ndarray, mask: np.ndarray) -> int: ...


class RandomPlayer:
    """Uniformly random among the legal actions: the anchor of the Elo scale."""

    name = "random"

    def __init__(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, mask: np.ndarray) -> int:
        return int(self.rng.choice(np.flatnonzero(mask)))


class Rules:
    """An m,n,k-game from the side of the player to move: a flat board of +1 (own pieces),
    -1 (the opponent's) and 0; with gravity, an action is a column (row 0 is the bottom)."""

    def __init__(self, info: GameInfo):
        self.info = info
        rows, cols, k = info.rows, info.cols, info.k
        windows = []
        for r in range(rows):
            for c in range(cols):
                for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                    cells = [(r + i * dr, c + i * dc) for i in range(k)]
                    if all(0 <= rr < rows and 0 <= cc < cols for rr, cc in cells):
                        windows.append([rr * cols + cc for rr, cc in cells])
        self.windows = np.array(windows, np.int64)
        self.through = [np.array([w for w in windows if cell in w], np.int64)
                        for cell in range(rows * cols)]
        # a small pull to the middle (the central cells take part in the most lines)
        self.centre = np.array([len(t) for t in self.through], np.float64) * 0.01

    def board(self, obs: np.ndarray) -> np.ndarray:
        return (obs[..., 0] - obs[..., 1]).astype(np.int8).reshape(-1)

    def target(self, board: np.ndarray, action: int) -> int:
        """The cell an action fills (-1 if it cannot be played)."""
        cols = self.info.cols
        if not self.info.gravity:
            return action if board[action] == 0 else -1
        for r in range(self.info.rows):
            if board[r * cols + action] == 0:
                return r * cols + action
        return -1

    def legal(self, board: np.ndarray) -> list[int]:
        if self.info.gravity:
            top = (self.info.rows - 1) * self.info.cols
            return [c for c in range(self.info.cols) if board[top + c] == 0]
        return [int(a) for a in np.flatnonzero(board == 0)]

    def wins(self, board: np.ndarray, cell: int) -> bool:
        """Did the piece on `cell` complete a line?"""
        lines = board[self.through[cell]]
        return bool((lines == board[cell]).all(axis=1).any())

    def heuristic(self, board: np.ndarray) -> float:
        """Open lines: each window holding only the mover's pieces counts 4^(pieces - 1), each
        holding only the opponent's counts against."""
        values = board[self.windows]
        own, other = (values == 1).sum(axis=1), (values == -1).sum(axis=1)
        score = np.where((other == 0) & (own > 0), 4.0 ** (own - 1), 0.0).sum()
        score -= np.where((own == 0) & (other > 0), 4.0 ** (other - 1), 0.0).sum()
        return float(score + self.centre @ board)


WIN = 1e6


class AlphaBetaPlayer:
    """Negamax with alpha-beta pruning to `depth` plies (depth 2: its move and the reply),
    a line-counting heuristic at the leaves, quicker wins preferred, and ties between equally
    good moves broken at random (so that games against it differ)."""

    def __init__(self, info: GameInfo, depth: int, seed: int | None = None):
        if depth < 1:
            raise ValueError("alpha-beta depth must be at least 1")
        self.rules, self.depth = Rules(info), depth
        self.name = f"alphabeta{depth}"
        self.rng = np.random.default_rng(seed)
        mid = (info.cols - 1) / 2 if info.gravity else (info.num_actions - 1) / 2
        self.order = sorted(range(info.num_actions), key=lambda a: abs(a - mid))

    def values(self, board: np.ndarray) -> dict[int, float]:
        """Each legal action's negamax value, from the mover's side."""
        return {a: self._after(board, a, self.depth, -math.inf, math.inf)
                for a in self.rules.legal(board)}

    def act(self, obs: np.ndarray, mask: np.ndarray) -> int:
        values = self.values(self.rules.board(obs))
        best = max(values.values())
        return int(self.rng.choice([a for a, v in values.items() if v >= best - 1e-9]))

    def _after(self, board: np.ndarray, action: int, depth: int, alpha: float,
               beta: float) -> float:
        cell = self.rules.target(board, action)
        board[cell] = 1
        try:
            if self.rules.wins(board, cell):
                return WIN + depth
            if not (board == 0).any():
                return 0.0
            if depth == 1:
                return self.rules.heuristic(board)  # from the mover's side
            return -self._negamax(-board, depth - 1, -beta, -alpha)
        finally:
            board[cell] = 0

    def _negamax(self, board: np.ndarray, depth: int, alpha: float, beta: float) -> float:
        best = -math.inf
        legal = set(self.rules.legal(board))
        for action in self.order:
            if action not in legal:
                continue
            value = self._after(board, action, depth, alpha, beta)
            best = max(best, value)
            alpha = max(alpha, value)
            if alpha >= beta:
                break
        return best


def reference_player(name: str, info: GameInfo, seed: int | None = None) -> Player:
    """`random` or `alphabeta:<depth>`."""
    if name == "random":
        return RandomPlayer(seed)
    kind, _, depth = name.partition(":")
    if kind == "alphabeta" and depth.isdigit() and int(depth) >= 1:
        return AlphaBetaPlayer(info, int(depth), seed)
    raise ValueError(f"unknown opponent {name!r}: use random or alphabeta:<depth>, "
                     "e.g. alphabeta:2")


class MCTSPlayer:
    """OpenSpiel's own MCTSBot with random rollouts: a yardstick trainyard did not write.
    It searches OpenSpiel's state, so it plays in `play_game` (evaluation), not in training."""

    def __init__(self, info: GameInfo, simulations: int, seed: int | None = None):
        from open_spiel.python.algorithms import mcts

        rng = np.random.RandomState(seed)
        self.name = f"mcts:{simulations}"
        self.bot = mcts.MCTSBot(_pyspiel_game(info.name), uct_c=2.0,
                                max_simulations=simulations,
                                evaluator=mcts.RandomRolloutEvaluator(1, rng), random_state=rng)

    def act_in(self, state) -> int:
        return int(self.bot.step(state))

    def act(self, obs: np.ndarray, mask: np.ndarray) -> int:
        raise TypeError("mcts plays from OpenSpiel's state: use it in play_game")


def evaluation_player(name: str, info: GameInfo, seed: int | None = None) -> Player:
    """A reference player (see reference_player) or `mcts:<simulations>`."""
    kind, _, count = name.partition(":")
    if kind == "mcts":
        if not (count.isdigit() and int(count) >= 1):
            raise ValueError(f"unknown opponent {name!r}: mcts:<simulations>, e.g. mcts:400")
        return MCTSPlayer(info, int(count), seed)
    try:
        return reference_player(name, info, seed)
    except ValueError:
        raise ValueError(f"unknown opponent {name!r}: use random, alphabeta:<depth> or "
                         "mcts:<simulations>, e.g. mcts:400") from None


def openings(info: GameInfo, plies: int, count: int, seed: int = 0) -> list[tuple[int, ...]]:
    """`count` distinct random openings of `plies` moves that leave the game open: the same
    set for every run (the seed is fixed), so that win rates of runs compare."""
    rng, found = np.random.default_rng(seed), {}
    for _ in range(50 * count):
        match, moves = Match(info), []
        for _ in range(plies):
            moves.append(int(rng.choice(match.legal())))
            match.apply(moves[-1])
            if match.over:
                break
        if not match.over:
            found.setdefault(tuple(moves), None)
        if len(found) == count:
            break
    return list(found)


def play_game(info: GameInfo, first: Player, second: Player,
              opening: tuple[int, ...] = ()) -> tuple[float, float]:
    """One game, from the position `opening` leaves; the players' returns (+1 win, -1 loss,
    0 draw), first mover's first."""
    match, players = Match(info), (first, second)
    for move in opening:
        match.apply(move)
    while not match.over:
        mover, player = match.to_move, players[match.to_move]
        if hasattr(player, "act_in"):
            match.apply(player.act_in(match.state))
        else:
            match.apply(player.act(match.observation(mover), match.mask()))
    return match.returns()


def head_to_head(info: GameInfo, a: Player, b: Player, games: int,
                 starts: list[tuple[int, ...]] | None = None) -> tuple[int, int, int]:
    """`games` games of a against b, a moving first in every other one: (wins, draws,
    losses) of a. With `starts` (openings), games 2i and 2i + 1 begin from opening i, a
    playing each colour once: a rate over positions, not one line of play."""
    wins = draws = losses = 0
    for g in range(games):
        opening = starts[(g // 2) % len(starts)] if starts else ()
        if g % 2 == 0:
            result = play_game(info, a, b, opening)[0]
        else:
            result = play_game(info, b, a, opening)[1]
        wins, draws, losses = wins + (result > 0), draws + (result == 0), losses + (result < 0)
    return wins, draws, losses

"""The board symmetries self-play trains on: a game's left-right mirror and, for a square board
without gravity, its quarter turns. The learner sees each replayed transition through one of
them (the board augmentation of AlphaGo Zero)."""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.core.columns import Columns

from trainyard.agents.games import GameInfo


def board_symmetries(info: GameInfo, mirror: bool = True,
                     rotations: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetries the league trains on, identity first, as two tables with a row each:
    `cells[g, j]`, the cell (row-major) of the original board that cell j of the transformed
    board shows; `moves[g, a]`, where action a goes. The left-right mirror (both games) and,
    for a square board without gravity (tic-tac-toe), the quarter turns: with both, the 8
    symmetries of the square."""
    if rotations and not info.turns:
        raise ValueError(f"{info.name}: only a square board without gravity has rotations")
    grid = np.arange(info.rows * info.cols).reshape(info.rows, info.cols)
    views = [np.rot90(grid, k) for k in range(4)] if rotations else [grid]
    if mirror:
        views += [np.fliplr(view) for view in views]
    cells = np.stack([view.reshape(-1) for view in views])
    # An action is a cell, or (gravity) a column: the column that row 0 of the view shows.
    sources = cells if not info.gravity else np.stack([view[0] for view in views])
    moves = np.argsort(sources, axis=1)  # source -> where it shows in the view
    return torch.as_tensor(cells), torch.as_tensor(moves)


def symmetric_batch(batch: dict, tables: tuple[torch.Tensor, torch.Tensor],
                    generator: torch.Generator | None = None,
                    boards: tuple[str, str] = (Columns.OBS, Columns.NEXT_OBS)) -> dict:
    """A replayed batch with each transition seen through a symmetry of the board drawn
    uniformly (`board_symmetries`; the identity is one of them): both boards moved, the action
    with them. The game is symmetric, so the moved transition is as true as the stored one.
    Same batch size, several times the positions seen over training: the board augmentation
    of AlphaGo Zero. `boards`: the batch's keys of the boards before and after the move."""
    cells, moves = tables
    obs = batch[boards[0]]
    size = obs.shape[0]
    choice = torch.randint(len(cells), (size,), generator=generator)
    index = cells[choice].unsqueeze(-1).expand(-1, -1, obs.shape[-1])  # [B, cells, planes]
    out = dict(batch)
    for key in boards:
        if key in batch:
            planes = batch[key]
            out[key] = planes.reshape(size, -1, planes.shape[-1]).gather(1, index) \
                .reshape(planes.shape)
    actions = batch[Columns.ACTIONS]
    out[Columns.ACTIONS] = moves[choice, actions.long()].to(actions.dtype)
    return out

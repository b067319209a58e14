"""The league's arithmetic: Elo ratings fitted to game results (Bradley-Terry by maximum
likelihood) and the weights by which opponents are drawn (uniform, or prioritized fictitious
self-play). Plain Python and numpy: nothing here knows RLlib."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MAIN = "main"  # the learning module; its own games are not rated against itself


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
            prior_draws: float = 1.0, iterations: int = 500,
            fixed: dict[str, float] | None = None) -> dict[str, float]:
    """Elo ratings by maximum likelihood (Bradley-Terry, a draw = half a win each), `anchor`
    at 0. Each pair that played gets `prior_draws` virtual draws, so that a player that never
    lost still gets a finite rating. Players in `fixed` that played keep those ratings (the
    calibrated yardsticks, trainyard.agents.yardsticks): the others are then rated on their
    scale, which is the same for every run, instead of relative to `anchor` alone."""
    names = sorted({r[0] for r in results} | {r[1] for r in results} | {anchor})
    pinned = {n: r for n, r in (fixed or {}).items() if n in names}
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
    held = np.array([index[name] for name in pinned], int)
    held_gamma = np.array([10 ** (r / 400) for r in pinned.values()])
    gamma[held] = held_gamma
    for _ in range(iterations):  # Hunter's MM updates
        denom = (games / (gamma[:, None] + gamma[None, :])).sum(axis=1)
        new = np.where(denom > 0, wins / np.maximum(denom, 1e-300), gamma)
        if len(held):
            new[held] = held_gamma
        else:
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

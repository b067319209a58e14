"""Fixed Elo ratings for the players every self-play run can meet: random, our alpha-beta
searches and OpenSpiel's MCTS. Ratings fitted within one league (random at 0) drift from run to
run with whoever else is in it; pinned to these, a snapshot's and `main`'s ratings are on one
scale, so two runs' ratings compare (trainyard.agents.elo.fit_elo's `fixed`).

They were measured once per game by playing the yardsticks against each other from the seeded
evaluation openings and fitting Bradley-Terry ratings with random at 0:

    python -m trainyard.agents.yardsticks tic_tac_toe --games 40
    python -m trainyard.agents.yardsticks connect_four --games 30 --pairs ...  (README)

(README "Self-play" gives when and on what machine.) Re-measure them when a yardstick's code
changes; ratings of runs measured against different tables do not compare.
"""

from __future__ import annotations

import argparse
import itertools
import zlib

from trainyard.agents.elo import fit_elo
from trainyard.agents.selfplay import module_id

PLAYERS = ["random", "alphabeta:1", "alphabeta:2", "alphabeta:3", "alphabeta:4", "mcts:100",
           "mcts:400", "mcts:1600"]

# game -> player -> Elo (random = 0); see the module's docstring for how they were measured
RATINGS: dict[str, dict[str, float]] = {
    # 5 December, 40 games a pair (every pair), the 2-ply openings
    "tic_tac_toe": {"random": 0.0, "alphabeta:1": 330.0, "alphabeta:2": 382.0,
                    "alphabeta:3": 401.0, "alphabeta:4": 377.0, "mcts:100": 361.0,
                    "mcts:400": 396.0, "mcts:1600": 398.0},
    # 5 December, 30 games a pair over 11 pairs that connect them all (README "Self-play"),
    # the 4-ply openings. Random lost all 60 of its games: its gap to the rest is what one
    # virtual draw per pair allows, a floor, not a measurement
    "connect_four": {"random": 0.0, "alphabeta:1": 728.0, "alphabeta:2": 943.0,
                     "alphabeta:3": 952.0, "alphabeta:4": 1019.0, "mcts:100": 701.0,
                     "mcts:400": 969.0, "mcts:1600": 1045.0},
}


def fixed_ratings(game: str) -> dict[str, float]:
    """The game's yardstick ratings under the league's module ids (`alphabeta:2` ->
    `alphabeta2`); empty for a game not measured."""
    return {module_id(name): r for name, r in RATINGS.get(game, {}).items()}


def calibrate(game: str, games: int, players: list[str] | None = None, seed: int = 0,
              log=print, pairs: list[tuple[str, str]] | None = None) -> dict[str, float]:
    """Every pair of `players` (or the given `pairs`: a connected set is enough, and MCTS
    with 1,600 simulations takes seconds a move) plays `games` games from the game's seeded
    evaluation openings, each with both colours; the Elo fit of all of them, random at 0."""
    from trainyard.agents.games import evaluation_player, game_info, head_to_head, openings

    info = game_info(game)
    starts = openings(info, info.opening_plies, max(1, games // 2))
    results = []
    for a, b in pairs or itertools.combinations(players or PLAYERS, 2):
        first, second = (evaluation_player(n, info, seed=zlib.crc32(f"{seed}/{n}/{a}-{b}".encode()))
                         for n in (a, b))
        w, d, l_ = head_to_head(info, first, second, games, starts)
        log(f"{game}: {a} vs {b}: won {w}, drew {d}, lost {l_}")
        results.append((a, b, w, d, l_))
    return fit_elo(results, anchor="random")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("game", choices=["connect_four", "tic_tac_toe"])
    parser.add_argument("--games", type=int, default=40, help="games per pair")
    parser.add_argument("--players", nargs="*", default=None,
                        help="every pair of these (default: all yardsticks)")
    parser.add_argument("--pairs", nargs="*", default=None, metavar="A,B",
                        help="only these pairs, e.g. random,alphabeta:2 mcts:400,mcts:1600")
    args = parser.parse_args(argv)
    pairs = [tuple(p.split(",")) for p in args.pairs] if args.pairs else None
    ratings = calibrate(args.game, args.games, args.players, pairs=pairs)
    print({name: round(r) for name, r in ratings.items()})


if __name__ == "__main__":
    main()

"""The `selfplay:` section of an RL job: the league a two-player game's agent trains in."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from trainyard.spec import Count, Section


class SelfPlay(Section):
    """Self-play for two-player games (`agent.env: OpenSpiel/<game>`): `main` learns against
    a league of its own frozen snapshots and fixed reference opponents, rated by Elo."""

    opponents: list[str] = Field(
        ["random", "alphabeta:2"], min_length=1,
        description="fixed reference opponents: random (the Elo anchor, rated 0) and "
        "alphabeta:<depth> (a depth-limited alpha-beta search)")
    targets: Literal["opponent", "negamax"] = Field(
        "opponent", description="what a move's Q-value bootstraps from: opponent (main's "
        "next board, after the opponent's reply: the value of beating the training pool) or "
        "negamax (every ply of every game, both sides, each from the side to move; the next "
        "board's value is the opponent's, so the target is -gamma * max Q(next): the value "
        "under both sides' best play, whoever played the game; needs the lean step)")
    sampling: Literal["pfsp", "pfsp_even", "uniform"] = Field(
        "pfsp", description="how main's opponents are drawn from the pool: pfsp (prioritized "
        "fictitious self-play: more games against the opponents it loses to), pfsp_even "
        "(more games against those it beats about half the time: a curriculum) or uniform")
    self_play_share: float = Field(0.2, ge=0, lt=1, description="share of games main plays "
                                   "against its current self")
    snapshot_win_rate: float = Field(0.7, gt=0, le=1, description="freeze a snapshot of main "
                                     "into the pool once its recent score against the "
                                     "snapshots in the pool (win 1, draw 0.5; their mean) "
                                     "reaches this; snapshot_0 is main before training")
    snapshot_min_games: Count = Field(1000, ge=1, description="league games (not counting "
                                      "self-play) between snapshots, at least")
    reference_min_share: float = Field(0.0, ge=0, le=0.5, description="each reference "
                                       "opponent gets at least this share of main's league "
                                       "games, whatever the sampling: pfsp starves a reference "
                                       "main mostly beats (random), and main forgets it")
    mirror: bool = Field(False, description="train on a random half of each replayed batch "
                         "seen left-right mirrored (Connect Four and tic-tac-toe are "
                         "symmetric): more positions for the same games")
    rotations: bool = Field(False, description="also see replayed boards turned by quarter "
                            "turns (tic-tac-toe: a square board without gravity); with "
                            "`mirror`, each transition through one of the square's 8 "
                            "symmetries")
    opening_plies: int = Field(0, ge=0, le=8, description="each training game starts after "
                               "0 to this many random moves (drawn uniformly per game), so "
                               "main learns positions, not one line of play against a nearly "
                               "deterministic opponent; evaluation has its own seeded openings")
    pool_size: int = Field(20, ge=1, description="the latest snapshots main is drawn against "
                           "(older ones stay rated)")
    win_rate_decay: float = Field(0.99, gt=0, lt=1, description="per game: how slowly the "
                                  "win rate against each opponent forgets")
    elo_games: int = Field(40, ge=2, description="games a new snapshot plays against each "
                           "reference and recent snapshot to be rated (first move alternates)")
    elo_opponents: int = Field(4, ge=0, description="recent snapshots a new one is rated "
                               "against (besides the references)")

    @field_validator("opponents")
    @classmethod
    def _known_opponents(cls, names: list[str]) -> list[str]:
        from trainyard.agents.games import GAMES, reference_player

        for name in names:
            reference_player(name, GAMES["tic_tac_toe"])  # ValueError naming the choices
        if len(set(names)) != len(names):
            raise ValueError("selfplay.opponents: each opponent once")
        return names

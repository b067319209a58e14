"""Self-play evaluation that measures strength: opponents held out of the training pool,
OpenSpiel's MCTS as a yardstick we did not write, games from a seeded set of openings."""

from __future__ import annotations

import pytest

from conftest import write
from trainyard.agents.games import (
    GAMES,
    AlphaBetaPlayer,
    Match,
    MCTSPlayer,
    RandomPlayer,
    evaluation_player,
    head_to_head,
    openings,
    play_game,
)
from trainyard.cli import main

C4, TTT = GAMES["connect_four"], GAMES["tic_tac_toe"]


def test_openings_are_the_same_distinct_open_positions_every_time():
    first, again = openings(C4, 4, 30), openings(C4, 4, 30)
    assert first == again and len(set(first)) == 30 and all(len(o) == 4 for o in first)
    assert len(openings(TTT, 2, 72)) == 72  # every 2-move tic-tac-toe opening there is


def test_each_opening_is_played_once_with_each_colour():
    seen = []

    class Recorder(RandomPlayer):
        def act(self, obs, mask):
            seen.append(obs[..., :2].sum())  # pieces on the board when it first moves
            return super().act(obs, mask)

    starts = openings(C4, 4, 3)
    wins, draws, losses = head_to_head(C4, RandomPlayer(0), Recorder(1), 6, starts)
    assert wins + draws + losses == 6
    assert seen[0] >= 5  # its first move came after the 4 opening moves (and one more)


def test_openspiels_mcts_plays_from_the_state_and_beats_random():
    mcts = evaluation_player("mcts:50", C4, seed=0)
    assert isinstance(mcts, MCTSPlayer) and mcts.name == "mcts:50"
    wins, _, losses = head_to_head(C4, mcts, RandomPlayer(1), 6, openings(C4, 4, 3))
    assert wins >= 5 and losses == 0
    assert play_game(TTT, AlphaBetaPlayer(TTT, 9, seed=0), evaluation_player("mcts:200", TTT,
                                                                              0))[0] >= 0


def test_an_mcts_opponent_replays_the_same_moves_for_a_seed():
    def game(seed):
        moves, match = [], Match(C4)
        bot = evaluation_player("mcts:30", C4, seed=seed)
        for _ in range(8):
            moves.append(bot.act_in(match.state))
            match.apply(moves[-1])
        return moves

    assert game(3) == game(3)
    assert any(game(3) != game(s) for s in (4, 5, 6))  # and the seed is what fixes them


@pytest.mark.parametrize("name", ["mcts", "mcts:0", "mcts:x", "minimax:2"])
def test_unknown_evaluation_opponents_name_the_choices(name):
    with pytest.raises(ValueError, match="random, alphabeta:<depth> or mcts:<simulations>|"
                                         "mcts:<simulations>, e.g. mcts:400"):
        evaluation_player(name, C4)


def test_validate_warns_when_an_evaluation_opponent_is_in_the_training_pool(workdir, capsys):
    job = write(workdir / "c4.yaml", "name: c4\nkind: rl\nagent: {env: OpenSpiel/connect_four}\n"
                                     'evaluation: {opponents: [random, "mcts:400"]}\n')
    assert main(["validate", str(job)]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "c4.yaml" in err and "['random'] are also in " \
        "selfplay.opponents (the training pool)" in err
    job = write(workdir / "c4b.yaml", "name: c4\nkind: rl\nagent: {env: OpenSpiel/connect_four}\n")
    assert main(["validate", str(job)]) == 0
    assert "warning" not in capsys.readouterr().err  # the defaults are held out

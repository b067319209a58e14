"""Self-play: game rules against OpenSpiel's, the reference players, Elo, the league's
bookkeeping, the masked Q-module (the league's runs: test_selfplay_league.py)."""

from __future__ import annotations

import numpy as np
import pytest

from trainyard.agents.games import (
    GAMES,
    AlphaBetaPlayer,
    Match,
    RandomPlayer,
    Rules,
    head_to_head,
    legal_mask,
    play_game,
    reference_player,
)
from trainyard.agents.qsearch import QSearch

C4, TTT = GAMES["connect_four"], GAMES["tic_tac_toe"]


def _match(info, moves):
    match = Match(info)
    for move in moves:
        match.apply(move)
    return match


@pytest.mark.parametrize("info", [C4, TTT], ids=lambda i: i.name)
def test_our_rules_agree_with_openspiel_on_random_games(info):
    """The search's model of the game (legal moves, wins, the planes its leaves show the
    network) matches OpenSpiel's at every position of 200 random games."""
    rules, rng = Rules(info), np.random.default_rng(0)
    search = QSearch(info, 1, lambda planes: np.zeros((len(planes), info.num_actions)))
    positions = 0
    for _ in range(200):
        match = Match(info)
        while not match.over:
            seen = match.observation(match.to_move)
            board = rules.board(seen)
            assert rules.legal(board) == match.legal()
            np.testing.assert_array_equal(search.observation(board), seen)
            action = int(rng.choice(match.legal()))
            cell = rules.target(board, action)
            board[cell] = 1
            won = rules.wins(board, cell)
            match.apply(action)
            positions += 1
            assert won == (match.over and max(match.returns()) > 0)
    assert positions > 1000


def test_known_positions():
    # Connect Four: four in a column wins for the first player
    match = _match(C4, [0, 1, 0, 1, 0, 1, 0])
    assert match.over and match.returns() == (1.0, -1.0)
    # a full column cannot be played
    match = _match(C4, [3, 3, 3, 3, 3, 3])
    assert 3 not in match.legal() and match.mask()[3] == 0 and match.mask().sum() == 6
    with pytest.raises(ValueError, match="illegal action 3"):
        match.apply(3)
    # a diagonal for the second player: o on (0,1) (1,2) (2,3) (3,4)
    match = _match(C4, [0, 1, 2, 2, 3, 3, 4, 3, 4, 4, 6, 4])
    assert match.over and match.returns() == (-1.0, 1.0)
    # tic-tac-toe: x's diagonal, and a full board without a line is a draw
    assert _match(TTT, [0, 1, 4, 2, 8]).returns() == (1.0, -1.0)
    draw = _match(TTT, [0, 1, 2, 4, 3, 5, 7, 6, 8])
    assert draw.over and draw.returns() == (0.0, 0.0)
    # what a player sees: its own pieces in plane 0, from either side; in plane 2 the cells
    # its legal moves would fill, which is the legal-move mask
    match = _match(TTT, [4, 0])
    assert match.observation(0)[1, 1, 0] == 1 and match.observation(0)[0, 0, 1] == 1
    assert match.observation(1)[0, 0, 0] == 1 and match.observation(1)[1, 1, 1] == 1
    assert list(legal_mask(match.observation(0), 9)) == list(match.mask())
    c4 = _match(C4, [3, 3, 3, 3, 3, 3, 0])
    landing = c4.observation(1)[..., 2]
    assert landing[1, 0] == 1 and landing[0, 1] == 1 and landing[:, 3].sum() == 0
    assert list(legal_mask(c4.observation(1), 7)) == list(c4.mask()) == [1, 1, 1, 0, 1, 1, 1]
    assert not legal_mask(_match(TTT, [0, 1, 4, 2, 8]).observation(1), 9).any()  # game over
    assert match.draw().splitlines() == ["o 1 2", "3 x 5", "6 7 8"]
    assert _match(C4, [3, 3]).draw().splitlines()[-3:] == [
        ". . . o . . .", ". . . x . . .", "0 1 2 3 4 5 6"]


def test_alphabeta_takes_a_win_and_blocks_one():
    # x has three in column 0 and moves: depth 1 sees the win
    win = _match(C4, [0, 1, 0, 1, 0, 2])
    player = AlphaBetaPlayer(C4, depth=1, seed=0)
    assert player.act(win.observation(win.to_move), win.mask()) == 0
    # o to move while x threatens column 0: depth 2 blocks
    block = _match(C4, [0, 1, 0, 2, 0])
    for seed in range(5):
        player = AlphaBetaPlayer(C4, depth=2, seed=seed)
        assert player.act(block.observation(block.to_move), block.mask()) == 0
    # tic-tac-toe at depth 4 never loses a game to random
    assert head_to_head(TTT, AlphaBetaPlayer(TTT, 4, seed=1), RandomPlayer(2), 40)[2] == 0


def test_alphabeta_beats_random_and_its_ties_vary():
    wins, draws, losses = head_to_head(C4, AlphaBetaPlayer(C4, 2, seed=0), RandomPlayer(1), 20)
    assert wins >= 19 and losses == 0
    # two depth-2 searches with different seeds do not replay one game over and over
    games = {tuple(_moves_of(C4, AlphaBetaPlayer(C4, 2, seed=s), AlphaBetaPlayer(C4, 2, s + 9)))
             for s in range(6)}
    assert len(games) > 1


def _moves_of(info, first, second):
    match, moves = Match(info), []
    while not match.over:
        action = (first, second)[match.to_move].act(match.observation(match.to_move),
                                                    match.mask())
        moves.append(action)
        match.apply(action)
    return moves


def test_reference_player_names():
    assert isinstance(reference_player("random", C4), RandomPlayer)
    assert reference_player("alphabeta:3", C4).depth == 3
    for bad in ("minimax:2", "alphabeta", "alphabeta:0", "alphabeta:x"):
        with pytest.raises(ValueError, match="use random or alphabeta:<depth>"):
            reference_player(bad, C4)
    assert play_game(TTT, RandomPlayer(0), RandomPlayer(1))[0] in (-1.0, 0.0, 1.0)


def test_elo_fit_recovers_a_known_gap_and_anchors_random_at_zero():
    from trainyard.agents.elo import fit_elo, fit_one

    # b scores 75% against random, c 75% against b: ~ +191 Elo per step
    results = [("b", "random", 750, 0, 250), ("c", "b", 750, 0, 250)]
    ratings = fit_elo(results, anchor="random")
    assert ratings["random"] == 0
    assert ratings["b"] == pytest.approx(191, abs=5)
    assert ratings["c"] == pytest.approx(382, abs=10)
    # a player that never lost gets a finite rating, above the one it beat
    unbeaten = fit_elo([("d", "random", 20, 0, 0)], anchor="random")["d"]
    assert 300 < unbeaten < 1000
    # one new player against fixed ratings
    assert fit_one([("m", "b", 500, 0, 500)], "m", {"b": 191.0}) == pytest.approx(191, abs=2)
    # pinned yardsticks keep their ratings and set the scale; `a` is rated on it
    pinned = fit_elo([("a", "random", 750, 0, 250), ("a", "mcts100", 250, 0, 750)],
                     anchor="random", fixed={"random": 0.0, "mcts100": 382.0, "absent": 9.0})
    assert pinned["random"] == 0 and pinned["mcts100"] == pytest.approx(382)
    assert pinned["a"] == pytest.approx(191, abs=5) and "absent" not in pinned


def test_yardsticks_are_calibrated_by_playing_each_other():
    from trainyard.agents.yardsticks import calibrate

    lines = []
    ratings = calibrate("tic_tac_toe", 20, ["random", "alphabeta:2", "mcts:50"],
                        log=lines.append)
    assert len(lines) == 3 and "random vs alphabeta:2: won" in lines[0]
    assert ratings["random"] == 0 and ratings["alphabeta:2"] > 150 and ratings["mcts:50"] > 150


def test_pinned_tables_rate_known_yardsticks_under_the_leagues_module_ids():
    """Each measured table has random at 0 and only yardsticks the league knows, and the
    league reads it under its module ids; a game not measured pins nothing."""
    from trainyard.agents.yardsticks import PLAYERS, RATINGS, fixed_ratings

    assert {"tic_tac_toe", "connect_four"} <= set(RATINGS)
    for game, table in RATINGS.items():
        assert table["random"] == 0 and set(table) <= set(PLAYERS), game
        assert all(r > 0 for name, r in table.items() if name != "random"), game
        assert fixed_ratings(game)["alphabeta2"] == table["alphabeta:2"]
    assert fixed_ratings("no_such_game") == {}


class _Episode:
    def __init__(self, i):
        self.id_ = f"episode-{i}"


def test_league_mapping_puts_main_on_one_side_at_random_and_draws_opponents_by_weight():
    from trainyard.agents.selfplay import AGENTS, MAIN, LeagueMapping

    mapping = LeagueMapping(["random", "alphabeta2"], [0.25, 0.75], seed=3)
    sides, opponents = [], []
    for i in range(2000):
        episode = _Episode(i)
        modules = [mapping(agent, episode) for agent in AGENTS]
        assert modules.count(MAIN) == 1
        assert [mapping(agent, episode) for agent in AGENTS] == modules  # stable per episode
        sides.append(modules.index(MAIN))
        opponents.append(next(m for m in modules if m != MAIN))
    assert 0.45 < np.mean(sides) < 0.55
    assert 0.70 < opponents.count("alphabeta2") / len(opponents) < 0.80


def test_pfsp_favours_what_main_loses_to():
    from trainyard.agents.elo import MAIN, opponent_weights

    names, weights = opponent_weights(["random", "alphabeta2", "snapshot_1"],
                                      {"random": 0.95, "alphabeta2": 0.2, "snapshot_1": 0.5},
                                      "pfsp", self_play_share=0.2)
    w = dict(zip(names, weights, strict=True))
    assert w["alphabeta2"] > w["snapshot_1"] > w["random"] > 0
    assert w[MAIN] == pytest.approx(0.2) and sum(weights) == pytest.approx(1.0)
    names, weights = opponent_weights(["random", "alphabeta2", "snapshot_1"],
                                      {"random": 0.95, "alphabeta2": 0.0, "snapshot_1": 0.5},
                                      "pfsp_even", self_play_share=0)
    w = dict(zip(names, weights, strict=True))
    assert w["snapshot_1"] > w["random"] > w["alphabeta2"] > 0
    # a reference kept at a minimum share: random, beaten 95%, still gets its 15%
    pool = ["random", "alphabeta2", "snapshot_1", "snapshot_2"]
    rates = {"random": 0.95, "alphabeta2": 0.2, "snapshot_1": 0.6, "snapshot_2": 0.5}
    names, weights = opponent_weights(pool, rates, "pfsp", 0.2)
    assert dict(zip(names, weights, strict=True))["random"] < 0.02
    names, weights = opponent_weights(pool, rates, "pfsp", 0.2, ("random", "alphabeta2"), 0.15)
    w = dict(zip(names, weights, strict=True))
    assert w["random"] == pytest.approx(0.8 * 0.15) and sum(weights) == pytest.approx(1.0)
    assert w["alphabeta2"] > w["snapshot_2"] > w["snapshot_1"]  # the rest keeps its order
    # scaling the others down to make room for random must not push alpha-beta below
    rates = {"random": 0.95, "alphabeta2": 0.44, "snapshot_1": 0.1, "snapshot_2": 0.1}
    names, weights = opponent_weights(pool, rates, "pfsp", 0.0, ("random", "alphabeta2"), 0.15)
    w = dict(zip(names, weights, strict=True))
    assert min(w["random"], w["alphabeta2"]) == pytest.approx(0.15) and sum(weights) == \
        pytest.approx(1.0)
    names, weights = opponent_weights(["random", "alphabeta2"], {"random": 0.9}, "uniform", 0)
    assert names == ["random", "alphabeta2"] and weights == [0.5, 0.5]


def test_masked_q_module_never_picks_an_illegal_move():
    import torch
    from ray.rllib.core.columns import Columns

    from trainyard.agents.rl_config import build_config
    from trainyard.agents.selfplay import main_spec
    from trainyard.agents.spec import RLJob

    for model in ({"hidden": [32]}, {"hidden": [32], "conv_filters": [[8, 3, 1]]}):
        spec = RLJob.model_validate({"name": "x", "kind": "rl", "agent": {
            "env": "OpenSpiel/connect_four", **model}})
        module = main_spec(C4, build_config(spec, 0).model_config).build()
        match = _match(C4, [3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0])  # columns 0 and 3 full
        batch = {Columns.OBS: torch.as_tensor(np.stack([match.observation(0)] * 64))}
        q = module.compute_q_values(batch)["qf_preds"]
        assert torch.isinf(q[:, [0, 3]]).all() and torch.isfinite(q[:, [1, 2, 4, 5, 6]]).all()
        module.epsilon_schedule.update(0)  # epsilon 1: every action random
        actions = module.forward_exploration(batch, t=0)[Columns.ACTIONS]
        assert not set(actions.tolist()) & {0, 3} and len(set(actions.tolist())) > 2
        assert int(module.forward_inference(batch)[Columns.ACTIONS][0]) not in (0, 3)


@pytest.mark.parametrize("info,rotations,count", [(C4, False, 2), (TTT, False, 2),
                                                  (TTT, True, 8)],
                         ids=["connect_four-mirror", "tic_tac_toe-mirror", "tic_tac_toe-all"])
def test_a_transformed_transition_is_the_transformed_game(info, rotations, count):
    """symmetric_batch sees each row through one of the board's symmetries, all of them used,
    and a transformed row is exactly what OpenSpiel gives for the transformed moves: boards,
    legal cells, action, and the game's outcome played out (a permutation of cells that is
    not a symmetry would break a winning line)."""
    import torch
    from ray.rllib.core.columns import Columns

    from trainyard.agents.symmetry import board_symmetries, symmetric_batch

    cells, moves_table = tables = board_symmetries(info, mirror=True, rotations=rotations)
    assert len(cells) == count and (cells[0] == torch.arange(info.rows * info.cols)).all()
    if not rotations:  # the mirror is the left-right flip: column c, or cell (r, c), to cols-1-c
        a, cols = torch.arange(info.num_actions), info.cols
        flipped = cols - 1 - a if info.gravity else a - a % cols + (cols - 1 - a % cols)
        assert moves_table[1].tolist() == flipped.tolist()
    rng = np.random.default_rng(0)
    obs, next_obs, actions, twins = [], [], [], []
    for _ in range(96):
        match, moves = Match(info), []
        for _ in range(int(rng.integers(0, 5))):
            moves.append(int(rng.choice(match.legal())))
            match.apply(moves[-1])
        action, player = int(rng.choice(match.legal())), match.to_move
        obs.append(match.observation(player))
        match.apply(action)
        next_obs.append(match.observation(player))
        actions.append(action)
        rest = []
        while not match.over:  # the game played out, for its outcome
            rest.append(int(rng.choice(match.legal())))
            match.apply(rest[-1])
        row = []
        for g in range(count):
            mapped = [int(moves_table[g, m]) for m in [*moves, action, *rest]]
            twin = _match(info, mapped[:len(moves)])
            before = twin.observation(player)
            twin.apply(mapped[len(moves)])
            row.append((before, twin.observation(player), mapped[len(moves)]))
            for m in mapped[len(moves) + 1:]:
                twin.apply(m)
            assert twin.returns() == match.returns()
        twins.append(row)
    batch = {Columns.OBS: torch.as_tensor(np.stack(obs)),
             Columns.NEXT_OBS: torch.as_tensor(np.stack(next_obs)),
             Columns.ACTIONS: torch.as_tensor(actions), Columns.REWARDS: torch.zeros(96)}
    out = symmetric_batch(batch, tables, torch.Generator().manual_seed(0))
    seen = set()
    for i, row in enumerate(twins):
        got = (out[Columns.OBS][i].numpy(), out[Columns.NEXT_OBS][i].numpy(),
               int(out[Columns.ACTIONS][i]))
        match_g = [g for g, (o, n, a) in enumerate(row)
                   if (o == got[0]).all() and (n == got[1]).all() and a == got[2]]
        assert match_g, f"row {i} is not the game seen through any symmetry"
        seen.add(match_g[0])
    assert len(seen) == count  # every symmetry drawn (96 rows)
    assert out[Columns.ACTIONS].dtype == batch[Columns.ACTIONS].dtype
    assert out[Columns.REWARDS] is batch[Columns.REWARDS]


def test_selfplay_spec_errors():
    from pydantic import ValidationError

    from trainyard.agents.spec import RLJob

    base = {"name": "x", "kind": "rl", "agent": {"env": "OpenSpiel/connect_four"}}
    job = RLJob.model_validate(base)
    assert job.selfplay is not None and job.selfplay.opponents == ["random", "alphabeta:2"]
    with pytest.raises(ValidationError, match="use random or alphabeta:<depth>"):
        RLJob.model_validate({**base, "selfplay": {"opponents": ["minimax:3"]}})
    with pytest.raises(ValidationError, match="CartPole-v1 is not a two-player game"):
        RLJob.model_validate({**base, "agent": {"env": "CartPole-v1"}, "selfplay": {}})
    with pytest.raises(ValidationError, match="selfplay.rotations: connect_four has no rot"):
        RLJob.model_validate({**base, "selfplay": {"rotations": True}})
    with pytest.raises(ValidationError, match="set agent.n_step: 1"):
        RLJob.model_validate({**base, "agent": {"env": "OpenSpiel/connect_four", "n_step": 3,
                                                "prioritized_replay": True}})
    assert RLJob.model_validate({**base, "agent": {  # the lean step replays every move
        "env": "OpenSpiel/connect_four", "n_step": 3, "prioritized_replay": False}})
    with pytest.raises(ValidationError, match="did you mean: OpenSpiel/connect_four"):
        RLJob.model_validate({**base, "agent": {"env": "OpenSpiel/connect4"}})

"""The shallow search on top of a Q-network (agent.play_search_depth): exact about finished
games, the network's judgement at the leaves, and only for games."""

from __future__ import annotations

import numpy as np
import pytest

from trainyard.agents.games import Match, game_info
from trainyard.agents.qsearch import QSearch

C4 = game_info("OpenSpiel/connect_four")


def _position(moves):
    match = Match(C4)
    for move in moves:
        match.apply(move)
    return match.observation(match.to_move), match.mask()


def _indifferent(obs):
    return np.zeros((len(obs), C4.num_actions))


def test_the_search_takes_a_win_and_blocks_one_that_the_network_cannot_see():
    # x has three in column 0 and moves: column 0 wins
    obs, mask = _position([0, 1, 0, 1, 0, 1])
    assert QSearch(C4, 1, _indifferent, seed=0).act(obs, mask) == 0
    # o to move against x's three in column 0: anything but 0 loses at once
    obs, mask = _position([0, 1, 0, 1, 0])
    scores = QSearch(C4, 2, _indifferent, seed=0).scores(
        (obs[..., 0] - obs[..., 1]).astype(np.int8).reshape(-1))
    assert max(scores, key=scores.get) == 0 and scores[0] == 0
    assert all(v < -2 for a, v in scores.items() if a != 0)


def test_leaves_are_scored_by_the_network_from_the_side_of_the_player_to_move():
    """Depth 1: each move is worth minus the opponent's best Q-value after it, read from the
    planes the network would see there (the opponent's pieces first, then the legal cells)."""
    seen = []

    def network(obs):
        seen.append(obs)
        # the opponent likes positions where its own pieces (plane 0) sit low in column 3
        return np.repeat(obs[:, 0, 3, 0][:, None] * 0.5 - 0.25, C4.num_actions, axis=1)

    obs, mask = _position([3])  # o to move; x holds the bottom of column 3
    scores = QSearch(C4, 1, network).scores((obs[..., 0] - obs[..., 1]).reshape(-1)
                                            .astype(np.int8))
    assert len(seen) == 1 and seen[0].shape == (7, 6, 7, 3)  # one batch of every leaf
    assert all(abs(v - -0.25) < 1e-9 for v in scores.values())  # x's piece stays its own
    after = seen[0][3]  # after o plays column 3: o's piece above x's, from x's side
    assert after[0, 3, 0] == 1 and after[1, 3, 1] == 1 and after[2, 3, 2] == 1


def test_play_search_depth_is_for_games_only():
    from pydantic import ValidationError

    from trainyard.agents.spec import RLJob

    RLJob.model_validate({"name": "c4", "kind": "rl", "agent": {
        "algo": "dqn", "env": "OpenSpiel/connect_four", "play_search_depth": 2}})
    with pytest.raises(ValidationError, match="play_search_depth: CartPole-v1 is not a two"):
        RLJob.model_validate({"name": "cp", "kind": "rl", "agent": {
            "algo": "dqn", "env": "CartPole-v1", "play_search_depth": 2}})

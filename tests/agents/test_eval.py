"""`trainyard eval RUN_ID` on runs it cannot play (the stop on an evaluation target and the
replay of a trained checkpoint: tests/agents/test_dqn_cartpole.py)."""

from __future__ import annotations

import pytest

from conftest import CARTPOLE, DIGITS, REPO
from trainyard import tracking
from trainyard.cli import main
from trainyard.loader import SpecError, dump_spec, load_spec


def test_eval_of_unknown_run_or_supervised_run_exits_2(workdir, store_uri, capsys):
    assert main(["eval", "0123456789abcdef", "--tracking-uri", store_uri]) == 2
    assert "cannot read run '0123456789abcdef'" in capsys.readouterr().err
    spec = load_spec(DIGITS).spec
    ref = tracking.open_run(store_uri, "digits", "cnn", {"trainyard.kind": "supervised"}, {},
                            dump_spec(spec))
    assert main(["eval", ref.run_id, "--tracking-uri", store_uri]) == 2
    assert "trainyard eval plays RL agents" in capsys.readouterr().err
    assert main(["eval", ref.run_id, "--episodes", "0", "--tracking-uri", store_uri]) == 2


def test_two_player_flags_are_refused_where_they_cannot_apply(workdir, store_uri, capsys):
    """Checked before anything loads: a flag for games on a CartPole run, a depth or an
    opening length out of range, each naming the flag."""
    def run_of(path, name):
        return tracking.open_run(store_uri, "rl", name, {"trainyard.kind": "rl"}, {},
                                 dump_spec(load_spec(path).spec)).run_id

    cartpole = run_of(CARTPOLE, "cartpole")
    for flag in ("--search-depth", "--opening-plies"):
        assert main(["eval", cartpole, flag, "0", "--tracking-uri", store_uri]) == 2
        assert f"{flag} is for two-player games" in capsys.readouterr().err
    game = run_of(REPO / "agents" / "configs" / "selfplay_tictactoe.yaml", "tictactoe")
    for flag, top in (("--search-depth", 4), ("--opening-plies", 8)):
        assert main(["eval", game, flag, str(top + 1), "--tracking-uri", store_uri]) == 2
        assert f"{flag} must be between 0 and {top}" in capsys.readouterr().err
    # the job's own fields stop where the flags stop
    for field, top in (("agent.play_search_depth", 4), ("evaluation.opening_plies", 8)):
        with pytest.raises(SpecError, match=f"{field}: input should be less than or equal "
                           f"to {top}"):
            load_spec(REPO / "agents" / "configs" / "selfplay_tictactoe.yaml",
                      [f"{field}={top + 1}"])

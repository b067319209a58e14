"""`trainyard eval RUN_ID` on runs it cannot play (the stop on an evaluation target and the
replay of a trained checkpoint: tests/agents/test_dqn_cartpole.py)."""

from __future__ import annotations

from conftest import DIGITS
from trainyard import tracking
from trainyard.cli import main
from trainyard.loader import dump_spec, load_spec


def test_eval_of_unknown_run_or_supervised_run_exits_2(workdir, store_uri, capsys):
    assert main(["eval", "0123456789abcdef", "--tracking-uri", store_uri]) == 2
    assert "cannot read run '0123456789abcdef'" in capsys.readouterr().err
    spec = load_spec(DIGITS).spec
    ref = tracking.open_run(store_uri, "digits", "cnn", {"trainyard.kind": "supervised"}, {},
                            dump_spec(spec))
    assert main(["eval", ref.run_id, "--tracking-uri", store_uri]) == 2
    assert "trainyard eval plays RL agents" in capsys.readouterr().err
    assert main(["eval", ref.run_id, "--episodes", "0", "--tracking-uri", store_uri]) == 2



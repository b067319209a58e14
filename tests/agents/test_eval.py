"""Evaluation of RL runs: periodic greedy episodes in MLflow, and `trainyard eval RUN_ID`."""

from __future__ import annotations

import pytest

from conftest import CARTPOLE, DIGITS, runs_of
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


@pytest.mark.slow
def test_run_stops_when_an_evaluation_reaches_the_target_and_replays(workdir, store_uri,
                                                                      capsys):
    assert main(["run", str(CARTPOLE), "-o", "stop.env_steps=6000",
                 "-o", "stop.eval_return_target=5", "-o", "evaluation.every_iterations=2",
                 "-o", "evaluation.episodes=2", "-o", "evaluation.video_every=1",
                 "-o", "tracking.system_metrics=false"]) == 0
    client, runs = runs_of(store_uri, "cartpole")
    run = runs[0]
    # any CartPole episode lasts more than 5 steps: the first evaluation ends the run
    evals = client.get_metric_history(run.info.run_id, "eval/return_mean")
    assert [m.step for m in evals] == [2000] and evals[0].value > 5
    assert run.data.tags["trainyard.stop_reason"] == "eval/return_mean reached 5"
    assert run.info.status == "FINISHED"
    gifs = [a.path for a in client.list_artifacts(run.info.run_id, "videos")]
    assert gifs == ["videos/eval_0000002000_steps.gif"]
    # `trainyard eval` replays the run's checkpoint, with a video of its own
    capsys.readouterr()
    video = workdir / "replay.gif"
    assert main(["eval", run.info.run_id, "--episodes", "3", "--epsilon", "0",
                 "--video", str(video)]) == 0
    out = capsys.readouterr().out
    assert "CartPole-v1, checkpoint at 2,000 env steps: 3 episodes, epsilon 0: return" in out
    assert video.read_bytes()[:6] == b"GIF89a"

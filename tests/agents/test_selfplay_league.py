"""Self-play through the CLI (slow): a snapshot is a frozen copy of main, and one short
run of the shipped tic-tac-toe league checked several ways."""

from __future__ import annotations

import numpy as np
import pytest

TTT_JOB = "agents/configs/selfplay_tictactoe.yaml"
TTT_STEPS = 20_000


def _ttt_spec(*overrides):
    from conftest import REPO
    from trainyard.loader import load_spec

    return load_spec(REPO / TTT_JOB, list(overrides)).spec


@pytest.mark.slow
def test_a_snapshot_is_a_frozen_deep_copy_of_main():
    """RLlib hands module state around by reference where it can: a snapshot must keep the
    weights main had when it was frozen, in the learner and in the env runner, while main
    trains on."""
    import ray
    from ray.tune.registry import register_env

    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.rl_config import build_config
    from trainyard.agents.runner import _league
    from trainyard.agents.selfplay import MAIN

    # a few updates per iteration are enough to move main (the shipped 500 took ~50 s)
    spec = _ttt_spec("agent.learning_starts=200", "selfplay.elo_games=2",
                     "agent.training_intensity=1")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        register_env(spec.agent.env, make_env_creator(spec.agent))
        algo = build_config(spec, 0).build_algo()
        league = _league(spec, 0)
        for _ in range(2):
            algo.train()
        metrics = league.snapshot(algo, 2000)
        frozen = {k: v.copy() for k, v in
                  algo.learner_group.get_weights(["snapshot_0"])["snapshot_0"].items()}
        main_then = {k: v.copy() for k, v in
                     algo.learner_group.get_weights([MAIN])[MAIN].items()}
        assert all(np.array_equal(frozen[k], main_then[k]) for k in frozen)
        # the env runners play (and the league rates) the snapshot with these weights at once
        playing = algo.get_module("snapshot_0").get_state()
        assert all(np.array_equal(frozen[k], np.asarray(playing[k])) for k in playing)
        for _ in range(3):
            algo.train()
        learner = algo.learner_group.get_weights(["snapshot_0", MAIN])
        changed = [k for k in frozen if not np.array_equal(frozen[k], learner["snapshot_0"][k])]
        assert not changed  # its target network included
        assert any(not np.array_equal(main_then[k], learner[MAIN][k]) for k in main_then)
        runner = algo.env_runner.module["snapshot_0"].get_state()
        assert all(np.array_equal(frozen[k], np.asarray(runner[k])) for k in runner)
        # the new snapshot was rated against both references, random anchoring the scale
        assert metrics["elo/random"] == 0 and np.isfinite(metrics["elo/latest_snapshot"])
        assert {r[1] for r in league.state.results if r[0] == "snapshot_0"} == {
            "random", "alphabeta2"}
        algo.stop()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_tictactoe_league_learns_resumes_rates_and_plays(workdir, store_uri, capsys,
                                                         monkeypatch):
    """One run of the shipped tic-tac-toe league, cut to TTT_STEPS moves, checked several
    ways: killed (its whole process group) once a checkpoint holds the league, `trainyard
    resume` brings the league back and finishes the run in the same MLflow run; against
    opponents it never trained with, its results improve and it loses at most half its games
    to a small MCTS; the Elo of its successive
    snapshots rises (the last one rated well above the first); snapshots, Elo metrics and
    table, and periodic evaluations are recorded; then `trainyard eval --opponent` and
    `trainyard play` work on it."""
    import io
    import json

    from mlflow.tracking import MlflowClient

    from conftest import REPO, checkpointed_run, kill_group, metric_steps, start_run, wait_for
    from trainyard.cli import main

    # the shipped config checkpoints every 20 iterations (~20k moves): here every 3, so the
    # kill comes a few thousand moves in. Judged only against opponents it never trained
    # against (its pool: random, alphabeta:2), from the seeded 2-ply openings
    proc = start_run(REPO / TTT_JOB, [f"stop.env_steps={TTT_STEPS}", "evaluation.episodes=100",
                                      'evaluation.opponents=["alphabeta:1", "mcts:10"]',
                                      "tracking.system_metrics=false",
                                      "checkpoint.every_iterations=3"], workdir)
    client = MlflowClient(store_uri)

    def snapshots_saved(run):
        folder = workdir / "trainyard-runs" / "checkpoints" / run.info.run_id
        leagues = sorted(folder.glob("checkpoint_*/league.json"))
        return len(json.loads(leagues[-1].read_text())["snapshots"]) if leagues else 0

    def league_saved():
        run = checkpointed_run(client, "selfplay", workdir)
        return run if run is not None and snapshots_saved(run) else None

    try:
        run = wait_for(league_saved, proc, timeout_s=420)
    finally:
        kill_group(proc)  # early: the replay lost is a few thousand moves; none left behind
    rid = run.info.run_id
    before = snapshots_saved(run)  # in the latest checkpoint, the one resume starts from
    assert before >= 1
    assert main(["resume", rid, "--tracking-uri", store_uri]) == 0
    run = client.get_run(rid)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the same run went on
    snapshots = [m.value for m in sorted(client.get_metric_history(rid, "league/snapshots"),
                                         key=lambda m: (m.step, m.timestamp))]
    assert snapshots == sorted(snapshots) and snapshots[-1] > before  # none lost, more added
    steps = metric_steps(client, rid, "train/iteration")
    assert steps == sorted(set(steps)) and steps[-1] >= TTT_STEPS

    metrics = run.data.metrics
    # held out, from the openings (seed 0, 4 December, before negamax targets): the mean result
    # (win 1, draw 0, loss -1) over 200 games went from -0.72 at 5k moves to -0.31 at 20k;
    # losses to mcts:10 from 69% to 35%
    returns = [m.value for m in sorted(client.get_metric_history(rid, "eval/return_mean"),
                                       key=lambda m: m.step)]
    assert returns[-1] >= returns[0] + 0.2, returns
    assert metrics["eval/heldout/loss_rate_vs_mcts10"] <= 0.5, metrics
    assert not any(k.startswith("eval/training_pool/") for k in metrics)
    ratings = client.get_metric_history(rid, "elo/latest_snapshot")
    assert len(ratings) >= 2, ratings
    first, last = ratings[0].value, max(r.value for r in ratings[1:])
    assert last >= first + 200, [r.value for r in ratings]

    history = client.get_metric_history(rid, "eval/heldout/win_rate_vs_alphabeta1")
    assert len(history) >= 2 and max(m.step for m in history) >= TTT_STEPS  # periodic, end
    assert all(0 <= m.value <= 1 for m in history)
    assert metrics["league/snapshots"] >= 2 and metrics["elo/random"] == 0
    table = client.download_artifacts(rid, "league/elo_ratings.csv", str(workdir))
    rows = open(table).read().splitlines()
    assert rows[0] == "player,kind,env_steps,elo,games"
    assert {r.split(",")[0] for r in rows[1:]} >= {"random", "alphabeta2", "snapshot_0",
                                                   "snapshot_1"}
    assert "league/elo.png" in [a.path for a in client.list_artifacts(rid, "league")]
    capsys.readouterr()

    assert main(["eval", rid, "--opponent", "random", "--episodes", "10"]) == 0
    out = capsys.readouterr().out
    assert "against random: 10 games (first move alternating): won" in out
    assert "from 5 openings of 2 moves" in out
    assert main(["eval", rid, "--opponent", "random", "--episodes", "4",
                 "--opening-plies", "0"]) == 0
    assert "4 games (first move alternating)" in (out := capsys.readouterr().out)
    assert "from the empty board" in out, out
    assert main(["eval", rid, "--opponent", "minimax:3"]) == 2
    assert "--opponent: unknown opponent 'minimax:3'" in capsys.readouterr().err

    # a person plays x: an occupied cell and a word are refused, then every cell in turn
    monkeypatch.setattr("sys.stdin", io.StringIO("4\n4\nmiddle\n" + "".join(
        f"{c}\n" for c in (0, 1, 2, 3, 5, 6, 7, 8) * 2)))
    assert main(["play", rid]) == 0
    out = capsys.readouterr().out
    assert "You play x and move first" in out
    assert "'4' is not a legal move" in out and "'middle' is not a legal move" in out
    assert out.rstrip().splitlines()[-1] in ("you won", "a draw", "the agent won")

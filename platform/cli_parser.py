"""The `trainyard` command line's arguments: each command, its options and their help (the
commands themselves are in `trainyard.cli`)."""

from __future__ import annotations

import argparse
import os


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainyard", description="Train the job a YAML file describes, on Ray, into MLflow.")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's, Ray Train's and RLlib's worker output live (a run "
                        "keeps it as its artifact logs/ray/) and print the whole traceback "
                        "when training fails")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("job", help="job YAML, e.g. supervised/configs/cnn_digits.yaml")
        p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                       help="set a spec field by dotted path, e.g. -o train.lr=3e-4 (repeatable)")

    p = sub.add_parser("validate", help="check a job file; print the resolved spec or the errors")
    job_args(p)
    p.add_argument("--check-env", action="store_true",
                   help="also import your own env (agent.env: module:EnvId) or model "
                   "(model.arch: module:factory) and check it, as run does: Gymnasium's env "
                   "checker, the factory's output shape")

    p = sub.add_parser("run", help="train a job on local Ray (or a cluster with --address)")
    job_args(p)
    p.add_argument("--seed", type=int, action="append",
                   help="run only this seed (repeatable); default: the spec's seeds")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join (default $RAY_ADDRESS; none: start one here)")
    p.add_argument("--dashboard-port", type=int, default=None,
                   help="port of the embedded Ray's dashboard (on 127.0.0.1; default 8265)")
    p.add_argument("--allow-local-storage", action="store_true",
                   help="with --address: accept a node-local tracking store or checkpoint "
                   "folder (only where every node shares one filesystem)")

    p = sub.add_parser("sweep", help="tune the job's `sweep:` space with Ray Tune; one MLflow "
                       "parent run, one child run per trial")
    job_args(p)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join (default $RAY_ADDRESS; none: start one here)")
    p.add_argument("--dashboard-port", type=int, default=None)
    p.add_argument("--allow-local-storage", action="store_true",
                   help="with --address: accept a node-local tracking store or checkpoint "
                   "folder (only where every node shares one filesystem)")

    p = sub.add_parser("resume", help="continue a stopped or killed run (or sweep) from its "
                       "checkpoint")
    p.add_argument("run_id", help="MLflow run id (printed when the run started)")
    p.add_argument("--tracking-uri", default=None, help="store holding the run (default: "
                   "$MLFLOW_TRACKING_URI, else ./trainyard-runs/mlflow.db)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    p.add_argument("--allow-local-storage", action="store_true",
                   help="with --address: accept a node-local tracking store or checkpoint "
                   "folder (only where every node shares one filesystem)")
    p.add_argument("--trust-sweep-state", action="store_true",
                   help="resume a sweep whose Tune state carries no valid seal of yours (Tune "
                   "unpickles it: only for folders no one else can write; README, Threat model)")

    p = sub.add_parser("submit", help="run a job on a Ray cluster through the Ray Jobs API")
    job_args(p)
    p.add_argument("--allow-local-storage", action="store_true",
                   help="with --address: accept a node-local tracking store or checkpoint "
                   "folder (only where every node shares one filesystem)")
    p.add_argument("--address", default=None,
                   help="the cluster's Jobs API, e.g. http://127.0.0.1:8265 (default "
                   "$RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument("--code", action="append", default=[], metavar="PATH",
                   help="a file or folder of your code the job imports, shipped beside its "
                   "job.yaml (repeatable; a module:EnvId env's module is shipped by itself)")

    p = sub.add_parser("jobs", help="list the jobs on a Ray cluster")
    p.add_argument("--address", default=None)

    p = sub.add_parser("logs", help="print (or follow) a cluster job's logs")
    p.add_argument("job_id")
    p.add_argument("--address", default=None)
    p.add_argument("--follow", action="store_true", help="stream until the job ends")

    p = sub.add_parser("stop", help="stop a cluster job")
    p.add_argument("job_id")
    p.add_argument("--address", default=None)

    p = sub.add_parser("eval", help="play a finished or running RL run's latest checkpoint")
    p.add_argument("run_id")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes to play (default: the job's evaluation.episodes)")
    p.add_argument("--epsilon", type=float, default=None,
                   help="chance of a random action (default: the job's evaluation.epsilon)")
    p.add_argument("--video", nargs="?", const="", default=None, metavar="GIF",
                   help="record the first episode (default file: eval-<run id>.gif)")
    p.add_argument("--opponent", default=None, metavar="NAME",
                   help="two-player games: random, alphabeta:<depth> or mcts:<simulations> "
                   "(default: the job's last selfplay.opponents)")
    p.add_argument("--search-depth", type=int, default=None, metavar="N",
                   help="two-player games: the agent looks N plies ahead, its network scoring "
                   "the leaves (default: the job's agent.play_search_depth; 0: the raw "
                   "network)")
    p.add_argument("--opening-plies", type=int, default=None, metavar="N",
                   help="two-player games: start each game after N seeded random moves "
                   "(default: the job's evaluation.opening_plies; 0: the empty board)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))

    p = sub.add_parser("play", help="play a two-player game against a self-play run's agent "
                       "in the terminal")
    p.add_argument("run_id")
    p.add_argument("--second", action="store_true", help="let the agent move first")
    p.add_argument("--tracking-uri", default=None)

    p = sub.add_parser("translate", help="a sequence-to-sequence run's output for a text")
    p.add_argument("run_id")
    p.add_argument("text")
    p.add_argument("--beam", type=int, default=None,
                   help="beam search width (default: the job's model.beam_size; 1: greedy)")
    p.add_argument("--tracking-uri", default=None)

    p = sub.add_parser("sample", help="new images from a generative run's best generator or "
                       "decoder, as one PNG grid")
    p.add_argument("run_id")
    p.add_argument("--n", type=int, default=64, help="images to draw (default 64)")
    p.add_argument("--out", default=None, help="PNG to write (default: samples-<run>.png)")
    p.add_argument("--seed", type=int, default=0, help="the noise's seed")
    p.add_argument("--tracking-uri", default=None)

    p = sub.add_parser("ui", help="open the MLflow UI on this store (127.0.0.1)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind; 0.0.0.0 exposes the UI to the network")
    p.add_argument("--port", type=int, default=5000)

    p = sub.add_parser("compare", help="runs side by side: differing params, headline metrics, "
                       "and a PNG of one metric's curves")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow run ids to compare")
    p.add_argument("--experiment", default=None, help="compare every run of this experiment")
    p.add_argument("--metric", default=None, help="metric to summarise and plot (default: the "
                   "workloads' headline metrics, e.g. val/accuracy, train/return_mean)")
    p.add_argument("--mode", choices=["max", "min"], default=None, help="which value is best "
                   "(default: min for losses, errors and durations, max for the rest)")
    p.add_argument("--out", default="compare.png", help="where the plot goes (PNG)")
    p.add_argument("--tracking-uri", default=None, help="store holding the runs (default: "
                   "$MLFLOW_TRACKING_URI, else ./trainyard-runs/mlflow.db)")
    return parser

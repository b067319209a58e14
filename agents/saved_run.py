"""What `trainyard eval` and `trainyard play` do with a finished RL run: load its latest
checkpoint (vetted first: msgpack state only) and play it, against the env, a reference
opponent or a person in the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trainyard import checkpoints
from trainyard.agents.rl_config import build_config, quiet_rllib

if TYPE_CHECKING:
    from trainyard.agents.spec import RLJob


def _latest_checkpoint(storage: Path) -> tuple[Path, dict]:
    """The run's latest valid checkpoint and its progress; a clear error when it has none."""
    from trainyard.spec import UserInputError

    found = checkpoints.latest_valid(storage)
    if found is None:
        raise UserInputError(f"no checkpoint under {storage}: the run saved none yet (it saves "
                             "every checkpoint.every_iterations and at the end)")
    return found


def evaluate_run(spec: "RLJob", storage: Path, seed: int, episodes: int, epsilon: float,
                 video: Path | None) -> dict[str, float]:
    """`trainyard eval`: play a run's latest checkpoint; print the returns, maybe a GIF."""
    from ray.tune.registry import register_env

    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.evaluate import play
    from trainyard.media import write_gif

    folder, progress = _latest_checkpoint(storage)
    checkpoints.vet_rllib_checkpoint(folder)  # before anything of it is decoded
    quiet_rllib()
    register_env(spec.agent.env, make_env_creator(spec.agent))
    local = spec.model_copy(update={"resources": spec.resources.model_copy(
        update={"env_runners": 0, "learners": 0})})  # playing needs no remote actors
    algo = build_config(local, seed).build_algo()
    try:
        algo.restore_from_path(str(folder))
        result = play(algo.get_module(), spec.agent, episodes, epsilon,
                      spec.evaluation.max_steps, seed=seed, record=video is not None)
    finally:
        algo.stop()
    metrics = result.metrics()
    print(f"{spec.agent.env}, checkpoint at {progress.get('env_steps', 0):,} env steps: "
          f"{episodes} episodes, epsilon {epsilon:g}: return {metrics['eval/return_mean']:.2f} "
          f"+- {metrics['eval/return_std']:.2f} (min {min(result.returns):g}, max "
          f"{max(result.returns):g}), length {metrics['eval/episode_len_mean']:.0f}")
    if video is not None and result.frames:
        print(f"video of the first episode: {write_gif(result.frames, video)}")
    return metrics


def load_main(spec: "RLJob", storage: Path):
    """The learned `main` Q-module of a self-play run's latest checkpoint (msgpack state only),
    and the env steps it had trained for."""
    from trainyard.agents.games import game_info
    from trainyard.agents.selfplay import MAIN, main_spec

    quiet_rllib()
    folder, progress = _latest_checkpoint(storage)
    path = Path(folder) / "learner_group" / "learner" / "rl_module" / MAIN
    checkpoints.vet_rllib_checkpoint(path)  # before anything of it is decoded
    # the model config as the algorithm completes it (DQN adds dueling, double_q, ...)
    module = main_spec(game_info(spec.agent.env), build_config(spec, 0).model_config).build()
    module.restore_from_path(str(path))
    module.eval()
    return module, int(progress.get("env_steps", 0))


def evaluate_selfplay(spec: "RLJob", storage: Path, seed: int, games: int,
                      opponent: str) -> dict[str, float]:
    """`trainyard eval RUN_ID --opponent NAME`: win/draw/loss of the run's agent over `games`
    games from the job's seeded openings (`evaluation.opening_plies`), each with both
    colours."""
    from trainyard.agents.games import evaluation_player, game_info, head_to_head, openings
    from trainyard.agents.selfplay import QPlayer
    from trainyard.spec import UserInputError

    info = game_info(spec.agent.env)
    try:  # the name first, before anything loads
        other = evaluation_player(opponent, info, seed)
    except ValueError as err:
        raise UserInputError(f"--opponent: {err}") from None
    module, steps = load_main(spec, storage)
    plies = spec.evaluation.opening_plies
    plies = info.opening_plies if plies is None else plies
    starts = openings(info, plies, max(1, games // 2)) if plies else None
    depth = spec.agent.play_search_depth
    agent = QPlayer(module, search_depth=depth, info=info, seed=seed)
    w, d, l_ = head_to_head(info, agent, other, games, starts)
    where = f"{len(starts)} openings of {plies} moves" if starts else "the empty board"
    searching = f" (searching {depth} plies)" if depth else ""
    print(f"{spec.agent.env}, agent at {steps:,} env steps{searching}, against {opponent}: "
          f"{games} games "
          f"(first move alternating): won {w}, drew {d}, lost {l_}; win rate {w / games:.1%}, "
          f"loss rate {l_ / games:.1%}; from {where}")
    return {"eval/win_rate": w / games, "eval/draw_rate": d / games,
            "eval/loss_rate": l_ / games}


def play_human(spec: "RLJob", storage: Path, human_first: bool, read=input, write=print) -> int:
    """`trainyard play RUN_ID`: a person against the run's agent, in the terminal. Returns the
    person's result: 1 won, 0 draw, -1 lost."""
    from trainyard.agents.games import Match, game_info
    from trainyard.agents.selfplay import QPlayer

    info = game_info(spec.agent.env)
    module, steps = load_main(spec, storage)
    agent = QPlayer(module, search_depth=spec.agent.play_search_depth, info=info)
    match = Match(info)
    human = 0 if human_first else 1
    mark = info.marks[human]
    what = "a column" if info.gravity else "a cell number"
    write(f"{info.name} against the agent ({steps:,} env steps of training). You play "
          f"{mark} and move {'first' if human_first else 'second'}; type {what}, q to quit.")
    while not match.over:
        if match.to_move == human:
            write(match.draw())
            answer = read(f"your move ({mark}): ").strip().lower()
            if answer in ("q", "quit", "exit"):
                write("game abandoned")
                return -1
            if not answer.isdigit() or int(answer) not in match.legal():
                write(f"{answer!r} is not a legal move; legal: "
                      f"{', '.join(str(a) for a in match.legal())}")
                continue
            match.apply(int(answer))
        else:
            action = agent.act(match.observation(match.to_move), match.mask())
            write(f"agent plays {action}")
            match.apply(action)
    write(match.draw())
    result = int(match.returns()[human])
    write({1: "you won", 0: "a draw", -1: "the agent won"}[result])
    return result

"""The lean DQN step for self-play (trainyard.agents.lean_selfplay): what goes into the replay
from real tic-tac-toe games, and the update against RLlib's own DQN learner. No Ray needed:
the env runner and the learner are built in this process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

TTT_JOB = "agents/configs/selfplay_tictactoe.yaml"


@pytest.fixture(scope="module")
def played():
    """The shipped tic-tac-toe league's config (3-step returns, targets from main's side: the
    ones RLlib's learner computes) and a replay filled from ~250 games its env runner played
    (epsilon 1: random moves, every opponent of the pool)."""
    from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
    from ray.tune.registry import register_env

    from conftest import REPO
    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.frame_replay import FrameReplay
    from trainyard.agents.lean_selfplay import FinishedGames, learner_sides
    from trainyard.agents.rl_config import build_config
    from trainyard.loader import load_spec

    spec = load_spec(REPO / TTT_JOB, ["agent.n_step=3", "selfplay.targets=opponent"]).spec
    register_env(spec.agent.env, make_env_creator(spec.agent))
    config = build_config(spec, 0)
    assert config.algo_class.__name__ == "LeanSelfPlay"
    runner = MultiAgentEnvRunner(config=config)
    replay = FrameReplay(**config.learner_config_dict["lean_replay"], seed=0)
    games, chunks, finished = FinishedGames(), [], []
    for _ in range(50):
        chunk = runner.sample()
        chunks += chunk
        ended = games(chunk)
        finished += ended
        replay.add(learner_sides(ended))
    runner.stop()
    return config, replay, chunks, games, finished


def _all_transitions(replay) -> dict[str, torch.Tensor]:
    low, high = replay._window()
    start = np.arange(low[0], high[0])
    lane = np.zeros_like(start)
    complete = replay._complete(lane, start)
    return replay._gather(lane[complete], start[complete]), int(complete.sum())


def test_the_replay_holds_every_move_main_made_as_main_saw_it(played):
    """Each stored transition is `main`'s board, a legal move of its own, and its next board
    after the opponent's reply (or the final board); every move of a finished game starts a
    3-step transition (RLlib's multi-agent replay skipped a game's last n-1), and each
    finished side of `main` has exactly one last move."""
    config, replay, chunks, games, _ = played
    batch, count = _all_transitions(replay)
    ended = {chunk.id_: chunk for chunk in chunks if chunk.is_done}  # (joined ones too)
    mains = sum(1 for game in ended.values()
                for agent in game.agent_episodes if game.module_for(agent) == "main")
    assert count == replay.added > 500 and mains > 100
    obs, nxt = batch["obs"].reshape(count, 9, 3), batch["next_obs"].reshape(count, 9, 3)
    actions, steps = batch["actions"], batch["n_step"]
    assert bool((obs[torch.arange(count), actions, 2] == 1).all())  # a legal move
    own, other = obs[..., 0].sum(1), obs[..., 1].sum(1)
    assert bool(((other - own >= 0) & (other - own <= 1)).all())  # main's turn, either side
    played_there = nxt[torch.arange(count), actions, 0] == 1
    assert bool(played_there.all())  # main's stone is on the next board
    terminal = batch["discounts"] == 0
    assert int((terminal & (steps == 1)).sum()) == mains  # each side's last move, once
    open_ = ~terminal
    assert bool((nxt[open_, :, 0].sum(1) == own[open_] + steps[open_]).all())  # n moves on
    assert bool((nxt[open_, :, 1].sum(1) == other[open_] + steps[open_]).all())
    outcome = batch["rewards"][terminal] / config.gamma ** (steps[terminal] - 1)
    assert set(outcome.round(decimals=4).tolist()) == {-1.0, 0.0, 1.0}  # the game's, discounted
    assert bool((batch["rewards"][open_] == 0).all()) and int((steps < 3).sum()) > 100
    assert not games.running or all(not g.is_done for g in games.running.values())


@pytest.mark.parametrize("value_bound", [1.0, None])
def test_the_lean_update_on_masked_boards_gives_rllibs_loss_and_gradients(played, value_bound):
    """A batch of replayed moves, finished boards (every Q -inf) included: the lean update's
    loss and gradients against RLlib's DQN learner on the masked, dueling, double-Q module,
    with and without the value bound (fp32)."""
    from ray.rllib.core.columns import Columns

    from trainyard.agents.lean_dqn import LeanUpdate
    from trainyard.agents.selfplay import GameEnv

    config, replay, _, _, _ = played
    config = config.copy(copy_frozen=False)
    config.learner_config_dict["value_bound"] = value_bound
    torch.manual_seed(0)
    learner = config.build_learner(env=GameEnv({"game": "tic_tac_toe"}))
    module = learner.module["main"].unwrapped()
    with torch.no_grad():  # a target net that differs from the online one, and values
        for _, target in module.get_target_network_pairs():  # past the bound
            for p in target.parameters():
                p.add_(0.5 * torch.randn_like(p))
    ours = replay.sample(256)
    terminal = ours["discounts"] == 0
    assert 0 < int(terminal.sum()) < 256
    theirs = {Columns.OBS: ours["obs"], Columns.NEXT_OBS: ours["next_obs"],
              Columns.ACTIONS: ours["actions"], Columns.REWARDS: ours["rewards"],
              Columns.TERMINATEDS: terminal, "n_step": ours["n_step"],
              "weights": torch.ones(256)}

    def grads(loss):
        module.zero_grad()
        loss.backward()
        return {name: p.grad.clone() for name, p in module.named_parameters()
                if p.grad is not None}

    lean_loss = LeanUpdate(learner, config, "main").losses(ours)[0]
    lean_grads = grads(lean_loss)
    rllib_loss = learner.compute_loss_for_module(
        module_id="main", config=config.get_config_for_module("main"), batch=theirs,
        fwd_out=module.forward_train(theirs))
    rllib_grads = grads(rllib_loss)
    assert torch.isfinite(lean_loss) and lean_loss.item() == pytest.approx(rllib_loss.item(),
                                                                             rel=1e-5)
    assert lean_grads.keys() == rllib_grads.keys() and len(lean_grads) >= 4
    for name, grad in lean_grads.items():
        assert torch.allclose(grad, rllib_grads[name], rtol=1e-4, atol=1e-6), name


def test_negamax_targets_replay_every_ply_of_both_sides_from_the_mover(played):
    """`selfplay.targets: negamax`: the same games stored as every ply, each board from the
    side to move, its next board the opponent's (the mover's stone on the opponent's plane),
    and n-step returns whose sign alternates with the mover: a game's last move is worth its
    mover's result (1 or 0, never a loss), and -gamma for the move before it."""
    from conftest import REPO
    from trainyard.agents.frame_replay import FrameReplay
    from trainyard.agents.lean_selfplay import both_sides
    from trainyard.agents.rl_config import build_config
    from trainyard.loader import load_spec

    _, _, _, _, finished = played
    spec = load_spec(REPO / TTT_JOB, ["agent.n_step=3", "selfplay.targets=negamax"]).spec
    config = build_config(spec, 0)
    settings = config.learner_config_dict
    assert settings["negamax"] and settings["lean_replay"]["gamma"] == -spec.agent.gamma
    replay = FrameReplay(**settings["lean_replay"], seed=0)
    replay.add([both_sides(game) for game in finished])
    plies = sum(len(side.get_actions()) for game in finished
                for side in game.agent_episodes.values())
    batch, count = _all_transitions(replay)
    assert count == replay.added == plies > 1000
    obs, nxt = batch["obs"].reshape(count, 9, 3), batch["next_obs"].reshape(count, 9, 3)
    actions, steps, rows = batch["actions"], batch["n_step"], torch.arange(count)
    assert bool((obs[rows, actions, 2] == 1).all())  # a legal move
    own, other = obs[..., 0].sum(1), obs[..., 1].sum(1)
    assert bool(((other - own >= 0) & (other - own <= 1)).all())  # the mover's side
    terminal = batch["discounts"] == 0
    open_ = ~terminal & (steps == 3)  # 3 plies on: the opponent's board, 2 of its stones on
    assert int(open_.sum()) > 500
    assert torch.equal(nxt[open_, :, 0].sum(1), other[open_] + 1)
    assert torch.equal(nxt[open_, :, 1].sum(1), own[open_] + 2)
    one_step = FrameReplay(**{**settings["lean_replay"], "n_step": 1}, seed=0)
    one_step.add([both_sides(game) for game in finished])
    single, n = _all_transitions(one_step)
    obs, nxt = single["obs"].reshape(n, 9, 3), single["next_obs"].reshape(n, 9, 3)
    moved = obs[..., 0].clone()  # the next board: the opponent's side, the move on it
    moved[torch.arange(n), single["actions"]] = 1
    assert n == plies and torch.equal(nxt[..., 1], moved) and torch.equal(nxt[..., 0],
                                                                          obs[..., 1])
    assert bool((batch["discounts"][~terminal] == (-spec.agent.gamma) ** steps[~terminal]).all())
    assert int((terminal & (steps == 1)).sum()) == len(finished)  # each game's last move
    outcome = batch["rewards"][terminal] / (-spec.agent.gamma) ** (steps[terminal] - 1)
    assert set(outcome.round(decimals=4).tolist()) == {0.0, 1.0}
    assert float(batch["rewards"][terminal & (steps == 2)].max()) == pytest.approx(0.0)
    assert float(batch["rewards"][terminal & (steps == 2)].min()) == pytest.approx(
        -spec.agent.gamma)


def test_negamax_targets_need_the_lean_step():
    from conftest import REPO
    from trainyard.loader import SpecError, load_spec

    with pytest.raises(SpecError, match="selfplay.targets: negamax"):
        load_spec(REPO / TTT_JOB, ["selfplay.targets=negamax", "agent.lean_step=false"])


def test_an_empty_replay_says_so_when_sampled():
    """A resumed run starts with an empty replay (it is not checkpointed); self-play fills it
    only when a game ends, so the first updates must wait instead of sampling nothing."""
    from trainyard.agents.frame_replay import FrameReplay

    with pytest.raises(ValueError, match="no complete transition stored yet"):
        FrameReplay(1000, num_frames=1).sample(32)


def test_training_games_start_from_random_openings_when_asked():
    """`selfplay.opening_plies: 4`: each training game starts after 0 to 4 random moves, each
    side first sees the board on its turn, and the env runner's games differ."""
    from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
    from ray.tune.registry import register_env

    from conftest import REPO
    from trainyard.agents.env_factory import make_env_creator
    from trainyard.agents.rl_config import build_config
    from trainyard.loader import load_spec

    spec = load_spec(REPO / "agents/configs/selfplay_connect4.yaml",
                     ["selfplay.opening_plies=4"]).spec
    register_env(spec.agent.env, make_env_creator(spec.agent))
    config = build_config(spec, 0)
    assert config.env_config["opening_plies"] == 4
    runner = MultiAgentEnvRunner(config=config)
    firsts = []  # each side's first board in a game: the opening and the replies to it
    for _ in range(6):
        for chunk in runner.sample():
            for episode in chunk.agent_episodes.values():
                if episode.t_started == 0:
                    board = episode.get_observations(0)
                    own, other = int(board[..., 0].sum()), int(board[..., 1].sum())
                    assert own in (other, other - 1)  # it is this side's turn
                    firsts.append((own + other, board.tobytes()))
    runner.stop()
    assert len(firsts) >= 32 and len({b for _, b in firsts}) >= len(firsts) // 2
    assert {n for n, _ in firsts} >= {0, 1, 2, 3, 4, 5}  # 0-4 random moves, then a reply

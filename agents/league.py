"""The league, the driver's side of self-play (see `trainyard.agents.selfplay` for the env,
modules and who plays whom): after each training iteration, main's win rate per opponent,
frozen snapshots of main (deep copies) when it beats the pool, the opponent weights, Elo
ratings from evaluation games; saved with each checkpoint and restored on resume."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from trainyard.agents.elo import MAIN, LeagueState, Rated, fit_elo, fit_one, opponent_weights
from trainyard.agents.games import (
    Player,
    evaluation_player,
    game_info,
    head_to_head,
    openings,
    reference_player,
)
from trainyard.agents.selfplay import LeagueMapping, QPlayer, main_spec, module_id
from trainyard.agents.yardsticks import fixed_ratings


def _numpy_copy(state):
    """A deep copy of a module state as numpy arrays: nothing shared with the live module."""
    if isinstance(state, dict):
        return {k: _numpy_copy(v) for k, v in state.items()}
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().numpy().copy()
    if isinstance(state, np.ndarray):
        return state.copy()
    return state


def _set_on_env_runners(algo, module_id: str, weights: dict) -> None:
    """Put a module's weights on every env runner (the local one included) now. (RLlib's
    `sync_weights` skips an env runner whose weights carry the learner's current sequence
    number: weights set on the learner between two updates would not arrive.)"""

    def put(runner, _module_id=module_id, _weights=weights):
        module = runner.module[_module_id]
        own = module.get_state()
        module.set_state({k: v for k, v in _weights.items() if k in own})

    algo.env_runner_group.foreach_env_runner(put, local_env_runner=True)


class League:
    """The league around `main`, run by the driver after every training iteration."""

    def __init__(self, agent, league, seed: int, heldout: list[str] | None = None,
                 opening_plies: int | None = None):
        self.config, self.seed = league, seed
        self.info = game_info(agent.env)
        # who main is judged against (evaluation.opponents), from which openings
        self.heldout = heldout if heldout is not None else ["alphabeta:3", "mcts:100"]
        self.opening_plies = (opening_plies if opening_plies is not None
                              else self.info.opening_plies)
        self.references = [module_id(o) for o in league.opponents]
        self.state = LeagueState()
        for name in self.references:
            self.state.players[name] = Rated(name, "reference")
        self._reference_players = {module_id(o): o for o in league.opponents}

    # --- who plays whom

    def pool(self) -> list[str]:
        return [*self.references, *self.state.snapshots[-self.config.pool_size:]]

    def pool_win_rate(self) -> float:
        """Main's recent score against its frozen selves: the mean over the snapshots in the
        pool of the decayed win rate (a draw counts half; one not met yet counts 0.5). The
        references stay out of it: a search main cannot beat yet must not stop the league
        from growing."""
        snapshots = self.state.snapshots[-self.config.pool_size:]
        return float(np.mean([self.state.win_rate.get(o, 0.5) for o in snapshots]))

    def mapping(self) -> LeagueMapping:
        names, weights = opponent_weights(self.pool(), self.state.win_rate,
                                          self.config.sampling, self.config.self_play_share,
                                          tuple(self.references),
                                          self.config.reference_min_share)
        return LeagueMapping(names, weights, self.seed + len(self.state.snapshots))

    def _push_mapping(self, algo) -> None:
        mapping = self.mapping()

        def set_mapping(runner, _mapping=mapping):
            runner.config.multi_agent(policy_mapping_fn=_mapping)

        algo.env_runner_group.foreach_env_runner(set_mapping)

    # --- after each iteration

    def after_iteration(self, algo, result: dict, env_steps: int) -> dict[str, float]:
        counts = (result.get("env_runners") or {}).get("league") or {}
        decay = self.config.win_rate_decay
        for opponent, c in counts.items():
            games, score = float(c.get("games", 0)), float(c.get("score", 0))
            if not games > 0:  # none this iteration (RLlib reports an empty sum as nan)
                continue
            old = self.state.win_rate.get(opponent)
            rate = score / games
            self.state.win_rate[opponent] = rate if old is None else (
                decay ** games * old + (1 - decay ** games) * rate)
            self.state.games_since_snapshot += int(games)
        metrics = {f"league/win_rate/{o}": r for o, r in self.state.win_rate.items()}
        if not self.state.snapshots:  # the league starts with main as it starts out
            metrics.update(self.snapshot(algo, env_steps))
        pool_rate = self.pool_win_rate()
        metrics["league/win_rate_vs_pool"] = pool_rate
        if (self.state.games_since_snapshot >= self.config.snapshot_min_games
                and pool_rate >= self.config.snapshot_win_rate):
            metrics.update(self.snapshot(algo, env_steps))
        metrics["league/snapshots"] = float(len(self.state.snapshots))
        self._push_mapping(algo)
        return metrics

    def snapshot(self, algo, env_steps: int) -> dict[str, float]:
        """Freeze a deep copy of `main` into the pool, and rate it."""
        sid = f"snapshot_{len(self.state.snapshots)}"
        weights = _numpy_copy(algo.learner_group.get_weights(module_ids=[MAIN])[MAIN])
        self._add_module(algo, sid)
        algo.learner_group.set_weights({sid: weights})
        _set_on_env_runners(algo, sid, weights)
        self.state.snapshots.append(sid)
        self.state.players[sid] = Rated(sid, "snapshot", env_steps)
        self.state.win_rate[sid] = 0.5
        self.state.games_since_snapshot = 0
        return self.rate(algo, sid)

    def _add_module(self, algo, sid: str) -> None:
        # the model config as the algorithm completed it (DQN adds dueling, double_q, ...)
        algo.add_module(sid, main_spec(self.info, algo.config.model_config),
                        new_agent_to_module_mapping_fn=self.mapping(),
                        new_should_module_be_updated=[MAIN])

    # --- Elo

    def player(self, algo, name: str, salt: int = 0) -> Player:
        if name in self._reference_players:
            return reference_player(self._reference_players[name], self.info,
                                    seed=zlib.crc32(f"{self.seed}/{name}/{salt}".encode()))
        return QPlayer(algo.get_module(name), name)

    def rate(self, algo, sid: str) -> dict[str, float]:
        """Games of the new snapshot against the references and the last few snapshots;
        then every rating again from all games so far."""
        games = self.config.elo_games
        if not self.state.results:  # the references among themselves, once
            for i, a in enumerate(self.references):
                for b in self.references[i + 1:]:
                    w, d, l_ = head_to_head(self.info, self.player(algo, a),
                                            self.player(algo, b), games)
                    self.state.results.append((a, b, w, d, l_))
        others = [*self.references, *self.state.snapshots[:-1][-self.config.elo_opponents:]]
        new = self.player(algo, sid)
        for other in others:
            opponent = self.player(algo, other, len(self.state.snapshots))
            w, d, l_ = head_to_head(self.info, new, opponent, games)
            self.state.results.append((sid, other, w, d, l_))
        ratings = fit_elo(self.state.results, anchor="random" if "random" in self.references
                          else self.references[0], fixed=fixed_ratings(self.info.name))
        for name, rating in ratings.items():
            self.state.players[name].rating = rating
        return {"elo/latest_snapshot": ratings[sid],
                **{f"elo/{name}": r for name, r in ratings.items()}}

    def evaluate(self, algo, games: int, search_depth: int = 0) -> dict[str, float]:
        """`main` (greedy) against each evaluation opponent, from the seeded openings, each
        opening with both colours. Opponents outside the training pool are `eval/heldout/`
        and make the headline (`eval/return_mean`: win 1, draw 0, loss -1); one also in the
        pool is `eval/training_pool/` (a win rate that measures memory, not strength).
        With `search_depth`, main looks that many plies ahead and every metric is under
        `eval/search<depth>/` instead (the headline stays the raw network's)."""
        main = QPlayer(algo.get_module(MAIN), search_depth=search_depth, info=self.info,
                       seed=self.seed)
        starts = openings(self.info, self.opening_plies, max(1, games // 2)) \
            if self.opening_plies else None
        metrics, returns, results = {}, [], []
        # main's rating from its games against players of known rating: the yardsticks'
        # fixed ones, and the league's once a snapshot has been rated
        rated = fixed_ratings(self.info.name)
        if self.state.snapshots:
            rated = {**{n: p.rating for n, p in self.state.players.items()}, **rated}
        for name in self.heldout:
            group = "training_pool" if name in self.config.opponents else "heldout"
            opponent = evaluation_player(name, self.info,
                                         seed=zlib.crc32(f"{self.seed}/eval/{name}".encode()))
            w, d, l_ = head_to_head(self.info, main, opponent, games, starts)
            key = name.replace(":", "")
            metrics[f"eval/{group}/win_rate_vs_{key}"] = w / games
            metrics[f"eval/{group}/loss_rate_vs_{key}"] = l_ / games
            if group == "heldout":
                returns.extend([1.0] * w + [0.0] * d + [-1.0] * l_)
            if module_id(name) in rated:
                results.append((MAIN, module_id(name), w, d, l_))
        if returns:
            metrics["eval/return_mean"] = float(np.mean(returns))
        if search_depth:
            return {k.replace("eval/", f"eval/search{search_depth}/", 1): v
                    for k, v in metrics.items()}
        if results:
            metrics["eval/elo"] = fit_one(results, MAIN, rated)
        return metrics

    def ratings_table(self) -> str:
        rows = ["player,kind,env_steps,elo,games"]
        played = {}
        for a, b, w, d, l_ in self.state.results:
            played[a] = played.get(a, 0) + w + d + l_
            played[b] = played.get(b, 0) + w + d + l_
        for p in sorted(self.state.players.values(), key=lambda p: (p.kind, p.env_steps)):
            rows.append(f"{p.name},{p.kind},{p.env_steps},{p.rating:.1f},{played.get(p.name, 0)}")
        return "\n".join(rows) + "\n"

    def plot(self, path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        snaps = [self.state.players[s] for s in self.state.snapshots]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([p.env_steps for p in snaps], [p.rating for p in snaps], "o-",
                label="snapshots of main")
        for name in self.references:
            ax.axhline(self.state.players[name].rating, linestyle="--", color="grey")
            ax.annotate(name, (0, self.state.players[name].rating), fontsize=8)
        ax.set_xlabel("env steps (moves) when frozen")
        ax.set_ylabel("Elo (random = 0)")
        ax.set_title(f"{self.info.name}: league ratings")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    # --- checkpoints

    def to_json(self) -> dict:
        s = self.state
        return {"snapshots": s.snapshots, "win_rate": s.win_rate,
                "games_since_snapshot": s.games_since_snapshot,
                "results": [list(r) for r in s.results],
                "players": [vars(p) for p in s.players.values()]}

    def load_json(self, data: dict) -> None:
        self.state = LeagueState(
            snapshots=list(data["snapshots"]), win_rate=dict(data["win_rate"]),
            games_since_snapshot=int(data["games_since_snapshot"]),
            results=[tuple(r) for r in data["results"]],
            players={p["name"]: Rated(**p) for p in data["players"]})

    def restore_modules(self, algo) -> None:
        """Before restoring a checkpoint: add the snapshot modules it holds (their weights
        come with the checkpoint, into the learner)."""
        for sid in self.state.snapshots:
            self._add_module(algo, sid)

    def restored(self, algo) -> None:
        """After restoring: the snapshots' weights from the learner to the env runners."""
        if self.state.snapshots:
            weights = algo.learner_group.get_weights(module_ids=self.state.snapshots)
            for sid in self.state.snapshots:
                _set_on_env_runners(algo, sid, _numpy_copy(weights[sid]))

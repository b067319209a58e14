"""DQN's loss in one function, and the lean training step that feeds it.

`dqn_loss` is the whole of DQN's learning rule, top to bottom, as a single-file DQN writes
it. `LeanDQN` is RLlib's DQN algorithm with its own `training_step`: the env runner samples
as before (RLlib's episodes, connectors and exploration), the observations go into a
preallocated replay (`trainyard.agents.frame_replay`; Atari frames once each, as uint8), and
each update goes replay -> tensors -> `dqn_loss` -> the learner's gradient step, without
RLlib's per-update episode-to-batch learner connectors and metrics (`Learner.update`). The
gradient step itself is still the learner's (`compute_gradients`, gradient clipping by
global norm, the optimizer, the target-network sync by env steps), so the math is RLlib's
DQN: tests/agents/test_lean_dqn.py checks loss and gradients against RLlib's own learner on
one batch.

Updates are granted per sampled env step (`training_intensity` transitions replayed per
step sampled), and the acting module gets the learner's weights every `sync_every` updates
(1: acting always uses the latest weights, as in a single-file loop).

With `async_sampling` (remote env runners), each runner always has a sample request in
flight: it plays the next chunk while the learner updates on the last ones. Updates are still
granted per sampled step, never by the clock, so the replay ratio over a run is the
configured one; a learner that falls behind stops new requests until it has caught up
(`max_owed`), so sampling cannot run away from learning. Weights go to the runners without
waiting (RLlib's fire-and-forget `sync_weights`), so a runner acts with weights at most one
chunk older than in the synchronous loop.

With the runner in the driver (`env_runners: 0`), its metrics are reduced and merged into the
algorithm's every ~256 env steps and when the iteration's step count may be reached, not
after every chunk: on CartPole, reducing a runner's ~30 metrics cost as much as sampling its
4-step chunk (a third of a training step, by cProfile). Updates count env steps themselves,
so learning starts, the target period and the replay ratio are exact either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ray.rllib.algorithms.dqn.dqn import DQN
from ray.rllib.algorithms.dqn.dqn_learner import (
    QF_LOSS_KEY,
    QF_MEAN_KEY,
    QF_PREDS,
    TD_ERROR_MEAN_KEY,
)
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    REPLAY_BUFFER_ADD_DATA_TIMER,
    REPLAY_BUFFER_SAMPLE_TIMER,
    TIMERS,
)

from trainyard.agents import rllib_private
from trainyard.agents.lean_runner import TIME_EVERY, UNTIMED
from trainyard.agents.learner import bf16_autocast

# env steps the driver's runner may sample between two merges of its metrics (see above)
MERGE_EVERY_STEPS = 256


def dqn_loss(q: torch.Tensor, next_q_target: torch.Tensor, next_q_online: torch.Tensor | None,
             actions: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor,
             value_bound: float | None = None):
    """DQN's loss on a batch of B transitions.

    q              [B, A] online Q-values of the observations (with autograd)
    next_q_target  [B, A] target network's Q-values of the n-th next observations
    next_q_online  [B, A] online Q-values of those (double Q picks the action with them),
                   or None: plain Q-learning takes the target network's own max
    rewards        [B] n-step discounted rewards; discounts [B]: gamma^n, 0 after a terminal
    value_bound    bootstrapped values are clipped to [-value_bound, value_bound] (games)

    Returns the loss (Huber, mean over the batch), |TD error| per transition and Q(s, a).
    """
    chosen = q.gather(1, actions[:, None]).squeeze(1)
    with torch.no_grad():
        picker = next_q_target if next_q_online is None else next_q_online
        best = picker.argmax(1, keepdim=True)
        # -inf where moves are masked (self-play): a finished board has no legal move left
        # (its discount is 0), and RLlib's targets read -inf as 0 too
        next_value = next_q_target.gather(1, best).squeeze(1).nan_to_num(neginf=0.0)
        if value_bound:  # (the bound of the max is the max of the bounded values)
            next_value = next_value.clamp(-value_bound, value_bound)
        target = rewards + discounts * next_value
    loss = F.huber_loss(chosen, target)
    return loss, (chosen - target).abs().detach(), chosen.detach()


class LeanUpdate:
    """One gradient update of the learner's Q-module from a replayed batch of tensors."""

    def __init__(self, learner, config, module_id=DEFAULT_MODULE_ID):
        self.learner, self.config, self.module_id = learner, config, module_id
        self.module = learner.module[module_id].unwrapped()
        self.value_bound = config.learner_config_dict.get("value_bound")
        self.device = next(self.module.parameters()).device

    def losses(self, batch: dict[str, torch.Tensor]):
        """Forward passes and `dqn_loss`, no gradient step (tests compare this to RLlib)."""
        module = self.module
        # bf16 where the learner resolved `agent.precision` (auto included) to it
        with bf16_autocast(module):
            q = module.compute_q_values({Columns.OBS: batch["obs"]})[QF_PREDS]
            with torch.no_grad():
                next_obs = {Columns.OBS: batch["next_obs"]}
                next_target = module.forward_target(next_obs)[QF_PREDS]
                next_online = (module.compute_q_values(next_obs)[QF_PREDS]
                               if self.config.double_q else None)
        return dqn_loss(q.float(), next_target.float(),
                        None if next_online is None else next_online.float(),
                        batch["actions"], batch["rewards"], batch["discounts"],
                        self.value_bound)

    def __call__(self, batch: dict[str, torch.Tensor], env_steps: int):
        if self.device.type != "cpu":
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        loss, td, chosen = self.losses(batch)
        learner = self.learner
        gradients = learner.compute_gradients({self.module_id: loss})
        learner.apply_gradients(learner.postprocess_gradients(gradients))
        learner.after_gradient_based_update(
            timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: env_steps})  # target net, by env steps
        return loss.detach(), td, chosen


class LeanDQN(DQN):
    """RLlib's DQN with trainyard's lean training step (see the module's docstring).

    Reads from `config.learner_config_dict`: `lean_replay` (FrameReplay's arguments),
    `sync_every` (updates between weight copies to the acting module), `async_sampling`."""

    def setup(self, config) -> None:
        super().setup(config)
        from trainyard.agents.frame_replay import FrameReplay

        settings = config.learner_config_dict
        self.local_replay_buffer = FrameReplay(**settings["lean_replay"], seed=config.seed)
        self._sync_every = int(settings.get("sync_every", 1))
        runners = max(config.num_env_runners, 0)
        fragment = config.get_rollout_fragment_length() * config.num_envs_per_env_runner
        intensity = config.training_intensity or (  # RLlib's default: one batch per sample
            config.total_train_batch_size / (fragment * max(runners, 1)))
        self._updates_per_step = intensity / config.total_train_batch_size
        self._owed = 0.0
        self._updates = self._unsynced = 0
        self._learning_steps = 0  # env steps sampled since learning started
        self._lean: LeanUpdate | None = None
        self._weights: rllib_private.WeightCopier | None = None
        self._shared = False
        self._async = bool(settings.get("async_sampling")) and runners > 0
        # the most updates a learner may owe before runners wait: two chunks of every runner
        self._max_owed = max(2.0 * fragment * max(runners, 1) * self._updates_per_step, 1.0)
        # the driver's runner: steps sampled since its metrics were last merged, and where the
        # iteration began (RLlib ends it once the merged count has grown by
        # min_sample_timesteps_per_iteration)
        self._unmerged_steps = 0
        self._iteration_seen, self._iteration_began = -1, 0
        self._module_id = DEFAULT_MODULE_ID  # the module that learns
        self._steps_taken = 0  # training_step calls
        self._last = None  # the latest update's (loss, td errors, chosen Q), not yet logged

    def _sample(self):
        """Episodes sampled since the last call, and the runners' metrics: synchronously (all
        runners, one chunk each), or, with async sampling, whatever chunks are ready, after
        asking each idle runner for its next one."""
        config = self.config
        if config.num_env_runners == 0:
            return self._sample_in_driver()
        if not self._async:
            return synchronous_parallel_sample(
                worker_set=self.env_runner_group, concat=True,
                sample_timeout_s=config.sample_timeout_s, _uses_new_env_runners=True,
                _return_metrics=True)
        group = self.env_runner_group
        if self._owed < self._max_owed:  # else: let the learner catch up first
            group.foreach_env_runner_async(_sample_with_metrics, tag="sample")
        # nothing owed: wait for a chunk rather than spin; else take only what is ready
        ready = group.fetch_ready_async_reqs(
            tags="sample", timeout_seconds=0.0 if self._owed >= 1.0 else config.sample_timeout_s)
        episodes = [e for _, (chunk, _) in ready for e in chunk]
        return episodes, [metrics for _, (_, metrics) in ready]

    def _merged_steps(self) -> int:
        return self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME),
                                 default=0)

    def _sample_in_driver(self):
        """One chunk from the driver's runner; its metrics when they are due (see the
        module's docstring), else none."""
        if self.iteration != self._iteration_seen:  # the first step of an iteration
            self._iteration_seen, self._iteration_began = self.iteration, self._merged_steps()
        runner = self.env_runner
        episodes = runner.sample()
        self._unmerged_steps += sum(len(e) for e in episodes)
        steps = self._merged_steps() + self._unmerged_steps
        due = self.config.min_sample_timesteps_per_iteration or 0
        if self._unmerged_steps < MERGE_EVERY_STEPS and steps - self._iteration_began < due:
            return episodes, []
        self._unmerged_steps = 0
        return episodes, [runner.get_metrics()]

    def training_step(self) -> None:
        config = self.config
        self._steps_taken += 1
        timed = self._steps_taken % TIME_EVERY == 1  # timers are means: one step in 16 times
        # them (four EMA pushes a step were ~3% of a CartPole step)

        def timer(key):
            return self.metrics.log_time((TIMERS, key)) if timed else UNTIMED

        with timer(ENV_RUNNER_SAMPLING_TIMER):
            episodes, results = self._sample()
        if results:
            self.metrics.aggregate(results, key=ENV_RUNNER_RESULTS)
        sampled = sum(len(e) for e in episodes)
        with timer(REPLAY_BUFFER_ADD_DATA_TIMER):
            self.local_replay_buffer.add(self._replayed(episodes))
        lifetime = self._merged_steps() + self._unmerged_steps
        if lifetime < config.num_steps_sampled_before_learning_starts:
            return
        if not len(self.local_replay_buffer):  # resumed (the replay is not checkpointed) and
            return  # no game has ended since: self-play stores games when they end
        self._learning_steps += sampled
        self._owed += sampled * self._updates_per_step
        if self._lean is None:
            self._lean = LeanUpdate(rllib_private.local_learner(self), config, self._module_id)
        while self._owed >= 1.0:
            with timer(REPLAY_BUFFER_SAMPLE_TIMER):
                batch = self._augmented(
                    self.local_replay_buffer.sample(config.total_train_batch_size))
            with timer(LEARNER_UPDATE_TIMER):
                self._last = self._lean(batch, lifetime)
            self._owed -= 1.0
            self._updates += 1
            self._unsynced += 1
            if self._unsynced >= self._sync_every:
                self._sync_weights()
        if self._last is not None and results:  # with the runners' metrics (so at the end
            # of every iteration), the latest update's figures, read once (a device sync)
            self._log_learner_results(*self._last)
            self._last = None

    def _log_learner_results(self, loss, td, chosen) -> None:
        for key, value in ((QF_LOSS_KEY, loss.item()), (QF_MEAN_KEY, chosen.mean().item()),
                           (TD_ERROR_MEAN_KEY, td.mean().item())):
            self.metrics.log_value((LEARNER_RESULTS, self._module_id, key), value, window=1)
        self.metrics.log_value((LEARNER_RESULTS, self._module_id, "num_updates"),
                               self._updates, window=1)
        # transitions replayed per env step sampled since learning began: the configured
        # training_intensity, up to the updates still owed
        self.metrics.log_value(
            (LEARNER_RESULTS, self._module_id, "replay_ratio"),
            self._updates * self.config.total_train_batch_size / max(self._learning_steps, 1),
            window=1)

    # -- what a subclass for other episodes (self-play) changes ------------------------------
    def _replayed(self, episodes) -> list:
        """The sampled episodes (chunks) as the replay takes them."""
        return episodes

    def _augmented(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A replayed batch as the update sees it."""
        return batch

    def _acting_module(self):
        """The driver's runner's acting copy of the module that learns."""
        return self.env_runner.module

    def _sync_weights(self) -> None:
        self._unsynced = 0
        if self.config.num_env_runners == 0:  # the acting module is in this process
            if self._weights is None:
                self._weights = rllib_private.WeightCopier(self._lean.module,
                                                           self._acting_module())
                # syncing after every update: share the tensors instead (no copy at all)
                self._shared = self._sync_every == 1 and self._weights.share()
            if not self._shared:
                self._weights.copy()
        else:  # fire-and-forget (RLlib's default timeout 0): runners pick them up between
            # chunks
            self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group,
                                               inference_only=True)


def _sample_with_metrics(runner):
    """Run on a remote env runner: one chunk of episodes and the runner's metrics."""
    return runner.sample(), runner.get_metrics()

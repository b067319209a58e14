"""Recurrent DQN (R2D2-style) on RLlib's DQN: prioritized sequence replay and n-step targets
inside replayed sequences.

RLlib's DQN already runs an LSTM Q-network on replayed sequences: it stores each step's
recurrent state with the episode, starts a replayed sequence from the state stored before it,
and masks a burn-in out of the loss. What it lacks, added here through its extension points:

- `SequenceReplayBuffer` (a `PrioritizedEpisodeReplayBuffer`, so RLlib's DQN hands it the
  learner's TD errors): sequences start on a fixed grid of each episode (every
  `seq_len - overlap` steps, R2D2's overlapping sequences), drawn in proportion to a
  per-sequence priority (alpha 0: uniform); importance weights as in prioritized replay.
- `sequence_loss` (called by trainyard's DQN learner for stateful modules): n-step double-DQN
  targets computed along each sequence (RLlib's sequence path allows only 1-step), the Huber
  loss over the steps after the burn-in, and each sequence's new priority
  `eta * max|TD| + (1 - eta) * mean|TD|` over those steps (R2D2, Kapturowski et al. 2019).
- `RecurrentQModule`: RLlib's DQN module, uint8 screens scaled on the way in, and an
  epsilon-greedy step that works for stateful modules on vectorised envs.
"""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import (
    PrioritizedEpisodeReplayBuffer,
)


class SequenceReplayBuffer(PrioritizedEpisodeReplayBuffer):
    def __init__(self, capacity: int = 10000, *, seq_len: int = 20, overlap: int = 10,
                 alpha: float = 0.6, **kwargs):
        super().__init__(capacity, alpha=alpha, **kwargs)
        self.seq_len, self.stride = seq_len, seq_len - overlap
        self._fresh: list[int] = []

    def _get_free_node_and_assign(self, sample_index, weight: float = 1.0) -> int:
        idx = super()._get_free_node_and_assign(sample_index, weight)
        self._fresh.append(idx)
        return idx

    def add(self, episodes, weight: float | None = None) -> None:
        self._fresh = []
        super().add(episodes, weight)
        # only grid steps start a sequence: the others get no probability mass
        for idx in self._fresh:
            where = self._tree_idx_to_sample_idx.get(idx)
            if where is not None and self._indices[where][1] % self.stride:
                self._sum_segment[idx] = 0.0
                self._min_segment[idx] = float("inf")
        self._fresh = []

    def num_sequences(self) -> int:
        return sum(1 for _, ts, _ in self._indices if ts % self.stride == 0)

    def sample(self, num_items: int | None = None, *, batch_size_B: int | None = None,
               batch_length_T: int | None = None, beta: float | None = None,
               lookback: int = 1, min_batch_length_T: int = 0, **kwargs):
        """`num_items` time steps as whole sequences of `seq_len` (RLlib's DQN asks for
        batch size x max_seq_len steps)."""
        length = batch_length_T or self.seq_len
        count = batch_size_B or max(1, round((num_items or length) / length))
        beta = beta or 0.0
        total = self._sum_segment.sum()
        n = max(1, self.num_sequences())
        max_weight = (self._min_segment.min() / total * n) ** -beta
        self._last_sampled_indices = []
        out, lengths, tries = [], [], 0
        while len(out) < count:
            tries += 1
            idx = self._sum_segment.find_prefixsum_idx(self.rng.random() * total)
            where = self._tree_idx_to_sample_idx.get(idx)
            if where is None or self._sum_segment[idx] <= 0:
                continue
            episode_idx, ts, _ = self._indices[where]
            episode = self.episodes[episode_idx - self._num_episodes_evicted]
            end = min(ts + length, len(episode))
            # a start with nothing after the burn-in trains nothing (an episode still
            # being played has few steps yet): draw again, unless nothing else is there
            if end - ts <= min_batch_length_T and tries < 20 * count:
                continue
            sequence = episode.slice(slice(ts, end), len_lookback_buffer=lookback)
            weight = (self._sum_segment[idx] / total * n) ** -beta / max_weight
            steps = len(sequence) + lookback
            sequence.extra_model_outputs["weights"] = InfiniteLookbackBuffer(
                np.full((steps,), weight, np.float32), lookback=lookback)
            sequence.extra_model_outputs["n_step"] = InfiniteLookbackBuffer(
                np.ones((steps,), np.int64), lookback=lookback)
            out.append(sequence)
            lengths.append(end - ts)
            self._last_sampled_indices.append(idx)
        self.sampled_timesteps += sum(lengths)
        return out

    def update_priorities(self, priorities, module_id=None) -> None:
        super().update_priorities(np.asarray(priorities, np.float64).reshape(-1), module_id)


def sequence_loss(learner, module_id, config, batch, fwd_out, *, n_step: int, eta: float,
                  value_bound: float | None):
    """The loss of a batch of [B, T] sequences (see the module docstring). Returns the loss,
    the per-sequence priorities [B] and a dict of statistics."""
    from ray.rllib.algorithms.dqn.dqn_learner import (
        QF_NEXT_PREDS,
        QF_PREDS,
        QF_TARGET_NEXT_PREDS,
    )

    actions = batch[Columns.ACTIONS].long()
    q = torch.nan_to_num(fwd_out[QF_PREDS].gather(-1, actions.unsqueeze(-1)).squeeze(-1),
                         neginf=0.0)
    target_next = fwd_out[QF_TARGET_NEXT_PREDS]
    if value_bound:
        target_next = torch.where(torch.isfinite(target_next),
                                  target_next.clamp(-value_bound, value_bound), target_next)
    chooser = fwd_out[QF_NEXT_PREDS] if config.double_q else target_next
    best = chooser.argmax(-1, keepdim=True)
    q_next = torch.nan_to_num(target_next.gather(-1, best).squeeze(-1), neginf=0.0)
    q_next = q_next * (1.0 - batch[Columns.TERMINATEDS].float())

    valid = batch[Columns.LOSS_MASK].bool() if Columns.LOSS_MASK in batch else \
        torch.ones_like(q, dtype=torch.bool)
    rewards = batch[Columns.REWARDS].float() * valid
    B, T = q.shape
    length = valid.sum(dim=1, keepdim=True)                        # steps in each sequence
    t = torch.arange(T, device=q.device).expand(B, T)
    # m-step returns, m = min(n, steps left in the sequence): the last steps bootstrap earlier
    steps = torch.clamp(length - t, min=1, max=n_step)
    ret = torch.zeros_like(q)
    for k in range(n_step):
        shifted = torch.zeros_like(rewards)
        shifted[:, : T - k] = rewards[:, k:]
        ret = ret + (k < steps).float() * (config.gamma ** k) * shifted
    boot_at = torch.clamp(t + steps - 1, max=T - 1)
    target = ret + (config.gamma ** steps.float()) * q_next.gather(1, boot_at)
    target = target.detach()

    mask = valid.clone()
    mask[:, : config.burn_in_len] = False
    weights = batch["weights"].float() if "weights" in batch else torch.ones_like(q)
    loss_fn = torch.nn.functional.huber_loss if config.td_error_loss_fn == "huber" else \
        torch.nn.functional.mse_loss
    per_step = loss_fn(q, target, reduction="none")
    maskf = mask.float()
    loss = (weights * per_step * maskf).sum() / maskf.sum().clamp(min=1)

    td = (q - target).abs().detach() * maskf
    per_seq_max = td.max(dim=1).values
    per_seq_mean = td.sum(dim=1) / maskf.sum(dim=1).clamp(min=1)
    priorities = eta * per_seq_max + (1 - eta) * per_seq_mean
    valid_q = q.detach()[mask]
    stats = {"qf_loss": loss, "qf_mean": valid_q.mean() if valid_q.numel() else loss * 0,
             "td_error_mean": td.sum() / maskf.sum().clamp(min=1),
             "seq_trained_steps_mean": maskf.sum(dim=1).mean(),
             "seq_priority_mean": priorities.mean()}
    return loss, priorities, stats


class RecurrentQModule(DefaultDQNTorchRLModule):
    """RLlib's DQN Q-network with an LSTM core (`use_lstm` in its model config), taking
    uint8 screens (scaled to [0, 1] on the way in) or float vectors.

    Its epsilon-greedy step is rewritten: RLlib 2.60's draws random actions without the
    time rank a stateful module's batch has ([B] against [B, 1]) and `torch.where`
    broadcasts them to [B, B], which fails as soon as an env runner steps more than one env.
    """

    def _qf_forward_helper(self, batch, encoder, head):
        obs = batch[Columns.OBS]
        if obs.dtype == torch.uint8:
            batch = {**batch, Columns.OBS: obs.float() / 255.0}
        return super()._qf_forward_helper(batch, encoder, head)

    def _forward_exploration(self, batch, t: int):
        from ray.rllib.algorithms.dqn.dqn_learner import QF_PREDS

        out = self.compute_q_values(batch)
        q = out[QF_PREDS]                                       # [B, T, A]
        greedy = q.argmax(dim=-1)
        self.epsilon_schedule.update(t)
        epsilon = self.epsilon_schedule.get_current_value()
        allowed = torch.isfinite(q).reshape(-1, q.shape[-1]).float()
        random = torch.multinomial(allowed, num_samples=1).reshape(greedy.shape)
        explore = torch.rand(greedy.shape, device=q.device) < epsilon
        result = {Columns.ACTIONS: torch.where(explore, random, greedy)}
        if Columns.STATE_OUT in out:
            result[Columns.STATE_OUT] = out[Columns.STATE_OUT]
        return result
